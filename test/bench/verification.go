package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"
	internalapi "k8s.io/cri-api/pkg/apis"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/pullgate/pullgate/proxy/config"
	"github.com/pullgate/pullgate/test/harness"
	"github.com/pullgate/pullgate/verify"
	"github.com/pullgate/pullgate/verify/auth"
	"github.com/pullgate/pullgate/verify/hosts"
)

// benchVerification measures pullgate's verifier on a digest it has not seen (cold: nothing
// cached, the registry connection warm, as in the running daemon) and on a cached one, and the
// cosign CLI checking the same signature, in one run.
func benchVerification(t *harness.Program, reg *harness.Registry, configFile string, key *harness.Key, bundleKey *harness.BundleKey, keyFile, creds string, n, cliN int) {
	cfg, err := config.Load(configFile)
	if err != nil {
		t.Fatal(err)
	}
	policy, err := cfg.Policy()
	if err != nil {
		t.Fatal(err)
	}
	resolver := verify.NewResolver(hosts.New(cfg.RegistryConfigPath))
	cred := auth.Credential{Username: "bench", Password: "bench-secret"}

	sigImg := reg.PushRandomImage(t, "signed/app", "v1")
	reg.Sign(t, key, "signed/app", hash(t, sigImg))
	bundleImg := reg.PushRandomImage(t, "bundled/app", "v1")
	reg.SignBundle(t, bundleKey, "bundled/app", hash(t, bundleImg))
	request := func(repo string, img v1.Image) verify.Request {
		d := digest.Digest(hash(t, img).String())
		return verify.Request{Image: verify.Image{Registry: reg.Host, Repository: repo, Digest: d}, Digest: d, Credential: cred}
	}
	check := func(v *verify.Verifier, req verify.Request) error {
		d, err := v.Verify(context.Background(), req)
		if err == nil && !d.Allowed {
			err = fmt.Errorf("%s denied: %s", req.Image, d.Reason)
		}
		return err
	}
	cold := func(req verify.Request) samples {
		return run(t, n, func() error { return check(verify.NewVerifier(policy, resolver), req) })
	}
	coldKey := cold(request("signed/app", sigImg))
	coldBundle := cold(request("bundled/app", bundleImg))
	warm := verify.NewVerifier(policy, resolver)
	cachedReq := request("signed/app", sigImg)
	cached := run(t, n*10, func() error { return check(warm, cachedReq) })

	cli := cosignCLI(t, reg, keyFile, creds, reg.Host+"/signed/app@"+hash(t, sigImg).String(), cliN)

	fmt.Printf("\nverification of one image against its rule (key authority, signature on a loopback registry):\n\n")
	fmt.Printf("| check | runs | p50 | p99 |\n|---|---|---|---|\n")
	fmt.Printf("| pullgate, cold, cosign .sig signature | %d | %s | %s |\n", n, ms(coldKey.p(50)), ms(coldKey.p(99)))
	fmt.Printf("| pullgate, cold, sigstore bundle (referrers) | %d | %s | %s |\n", n, ms(coldBundle.p(50)), ms(coldBundle.p(99)))
	fmt.Printf("| pullgate, cached decision | %d | %s | %s |\n", n*10, us(cached.p(50)), us(cached.p(99)))
	if cli != nil {
		fmt.Printf("| `cosign verify --key` (CLI v2.6.5, a process per check) | %d | %s | %s |\n", cliN, ms(cli.p(50)), ms(cli.p(99)))
		fmt.Printf("\ncold .sig check: pullgate is %.0fx faster than the cosign CLI at p50\n", float64(cli.p(50))/float64(coldKey.p(50)))
	}
}

// cosignCLI times the cosign CLI (bin/cosign, or $COSIGN) verifying ref, or returns nil when
// it is not built.
func cosignCLI(t *harness.Program, reg *harness.Registry, keyFile, creds, ref string, n int) samples {
	bin := cosignBinary()
	if bin == "" {
		return nil
	}
	dockerDir, err := os.MkdirTemp("", "bench-docker-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dockerDir) })
	b, err := os.ReadFile(creds)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dockerDir, "config.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	return run(t, n, func() error { return cosignVerify(bin, dockerDir, keyFile, ref) })
}

// cosignOnce runs the cosign CLI verifying ref once, with the docker config creds.
func cosignOnce(t *harness.Program, keyFile, creds, ref string) {
	dockerDir := filepath.Dir(creds)
	if err := cosignVerify(cosignBinary(), dockerDir, keyFile, ref); err != nil {
		t.Fatal(err)
	}
}

// cosignBinary is bin/cosign-VERSION/cosign, or $COSIGN, or "" when it is not built.
func cosignBinary() string {
	bin := envOr("COSIGN", "bin/cosign-v2.6.5/cosign")
	if _, err := os.Stat(bin); err != nil {
		fmt.Fprintf(os.Stderr, "skipping the cosign CLI comparison: %s not found (make bench builds it)\n", bin)
		return ""
	}
	return bin
}

func cosignVerify(bin, dockerDir, keyFile, ref string) error {
	cmd := exec.Command(bin, "verify", "--key", keyFile, "--insecure-ignore-tlog", "--allow-http-registry", "--output", "json", ref)
	cmd.Env = append(os.Environ(), "DOCKER_CONFIG="+dockerDir, "TUF_ROOT="+dockerDir, "SIGSTORE_NO_CACHE=true")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("cosign verify: %v\n%s", err, out)
	}
	return nil
}

// benchConcurrentPulls sends 100 pulls of one new signed image through pullgate at once and
// counts the verifications they caused.
func benchConcurrentPulls(t *harness.Program, ctx context.Context, reg *harness.Registry, gate *harness.Pullgate, s internalapi.ImageManagerService, authCfg *runtimeapi.AuthConfig, key *harness.Key) {
	img := reg.PushRandomImage(t, "signed/concurrent", "v1")
	reg.Sign(t, key, "signed/concurrent", hash(t, img))
	before := metric(t, gate, "pullgate_verification_duration_seconds_count")
	const pulls = 100
	var wg sync.WaitGroup
	errs := make(chan error, pulls)
	for range pulls {
		wg.Go(func() {
			_, err := s.PullImage(ctx, &runtimeapi.ImageSpec{Image: reg.Host + "/signed/concurrent:v1"}, authCfg, nil)
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	after := metric(t, gate, "pullgate_verification_duration_seconds_count")
	fmt.Printf("\n%d concurrent pulls of one new signed image through pullgate: %.0f verification(s)\n", pulls, after-before)
}

func metric(t *harness.Program, gate *harness.Pullgate, name string) float64 {
	resp, err := http.Get(gate.MetricsURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	return 0
}

func hash(t *harness.Program, img v1.Image) v1.Hash {
	h, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return h
}
