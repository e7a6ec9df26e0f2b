// Command bench measures pullgate against direct containerd, side by side in one run, with
// kubelet's own CRI client. Run it as root with `make bench`; docs/benchmarks.md has the numbers.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"go.opentelemetry.io/otel/trace/noop"
	internalapi "k8s.io/cri-api/pkg/apis"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	remoteclient "k8s.io/cri-client/pkg"
	"k8s.io/klog/v2"

	"github.com/pullgate/pullgate/test/harness"
)

func main() {
	images := flag.Int("images", 500, "images in containerd's store")
	statusN := flag.Int("status", 2000, "ImageStatus calls per side")
	listN := flag.Int("list", 200, "ListImages calls per side")
	pullN := flag.Int("pull", 300, "warm PullImage calls per side")
	verifyN := flag.Int("verify", 300, "cold and cached verifications")
	cliN := flag.Int("cli", 20, "cosign CLI runs")
	watchers := flag.Int("watchers", 50, "NodeImagePolicy watchers against one API server (0: none)")
	changes := flag.Int("changes", 20, "NodeImagePolicy changes the watchers apply")
	bin := flag.String("containerd", envOr("PULLGATE_CONTAINERD2", "/usr/bin/containerd"), "containerd binary")
	flag.Parse()
	quietKlog()

	t := &harness.Program{}
	defer t.Close()
	ctx := context.Background()
	ctrd := harness.StartContainerd(t, *bin)
	reg := harness.StartRegistry(t, harness.WithUser("bench", "bench-secret"))
	// Registries as nodes meet them: Debian's (CNCF Distribution) checking an htpasswd bcrypt
	// hash on every request, and one with token auth.
	dreg := harness.StartDistribution(t, "bench", "bench-secret")
	treg := harness.StartRegistry(t, harness.WithUser("bench", "bench-secret"), harness.WithTokenAuth())
	for _, r := range []*harness.Registry{reg, dreg, treg} {
		ctrd.HostsTOML(r.Host, r.URL, "")
	}
	dir, err := os.MkdirTemp("", "pullgate-bench-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	creds := reg.DockerConfig(t, dir)
	key, bundleKey := harness.NewKey(t), harness.NewBundleKey(t)
	keyFile, bundleKeyFile := filepath.Join(dir, "key.pub"), filepath.Join(dir, "bundle.pub")
	for f, pem := range map[string][]byte{keyFile: key.PublicPEM, bundleKeyFile: bundleKey.PublicPEM} {
		if err := os.WriteFile(f, pem, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	policies := fmt.Sprintf(`policies:
- name: store
  images: ["%[1]s/bench/**"]
  mode: enforce
  authorities: [{name: release, key: {file: %[2]s}, ignoreTransparencyLog: true}]
- name: sig
  images: ["%[1]s/signed/**"]
  mode: enforce
  authorities: [{name: release, key: {file: %[2]s}, ignoreTransparencyLog: true}]
- name: bundle
  images: ["%[1]s/bundled/**", "%[5]s/counted/bundle"]
  mode: enforce
  authorities: [{name: release, key: {file: %[3]s}, ignoreTransparencyLog: true}]
- name: warm
  images: ["%[4]s/warm/**", "%[5]s/warm/**", "%[5]s/counted/**"]
  mode: enforce
  authorities: [{name: release, key: {file: %[2]s}, ignoreTransparencyLog: true}]
`, reg.Host, keyFile, bundleKeyFile, dreg.Host, treg.Host)
	config := fmt.Sprintf(
		"apiVersion: pullgate.io/v1alpha1\nkind: PullgateConfig\nruntimeEndpoint: %s\nregistryConfigPath: %s\nstateDir: %s\nmetricsAddress: 127.0.0.1:0\nauth:\n  files: [%s]\ndefaultAction: allow\n%s",
		ctrd.Endpoint, ctrd.CertsDir, dir, creds, policies)
	configFile := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(configFile, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	gate := harness.StartPullgate(t, harness.PullgateBinary(t), config)
	// The same node with ImageStatus and CreateContainer left unchecked, to tell the check's
	// cost from the extra hop's.
	ungated := harness.StartPullgate(t, harness.PullgateBinary(t), config+"verification: {verifyPresentImages: false}\n")

	direct := client(t, ctrd.Endpoint)
	proxied := client(t, gate.Endpoint)
	auth := &runtimeapi.AuthConfig{Username: "bench", Password: "bench-secret"}

	fmt.Fprintf(os.Stderr, "filling containerd %s with %d signed images, verified by pullgate...\n", ctrd.Version, *images)
	fill(t, ctx, reg, proxied, auth, key, *images)
	ref := reg.Host + "/bench/img-0:v1"

	var rows []row
	spec := &runtimeapi.ImageSpec{Image: ref}
	measure := func(op string, n int, f func(internalapi.ImageManagerService) error) {
		d := run(t, n, func() error { return f(direct) })
		p := run(t, n, func() error { return f(proxied) })
		rows = append(rows, row{op, n, d, p})
	}
	imageStatus := func(s internalapi.ImageManagerService) error {
		st, err := s.ImageStatus(ctx, spec, false)
		if err == nil && st.GetImage() == nil {
			err = fmt.Errorf("ImageStatus(%s): absent", ref)
		}
		return err
	}
	measure("ImageStatus, verified image", *statusN, imageStatus)
	unchecked := client(t, ungated.Endpoint)
	d, u := run(t, *statusN, func() error { return imageStatus(direct) }), run(t, *statusN, func() error { return imageStatus(unchecked) })
	rows = append(rows, row{"ImageStatus, verifyPresentImages: false", *statusN, d, u})
	measure(fmt.Sprintf("ListImages (%d images)", *images), *listN, func(s internalapi.ImageManagerService) error {
		l, err := s.ListImages(ctx, nil)
		if err == nil && len(l) < *images {
			err = fmt.Errorf("ListImages returned %d images", len(l))
		}
		return err
	})
	warmPull := func(spec *runtimeapi.ImageSpec) func(internalapi.ImageManagerService) error {
		return func(s internalapi.ImageManagerService) error {
			_, err := s.PullImage(ctx, spec, auth, nil)
			return err
		}
	}
	measure("PullImage, present, by tag (in-process registry, basic auth)", *pullN, warmPull(spec))
	// Split the warm pulls through pullgate by pullgate's own decision log: the registry's time,
	// containerd's time, and what is left, pullgate's own work.
	var resolve, runtime, own samples
	askedRuntime := 0
	lines := gate.LogLines("pull allowed")
	for _, l := range lines[len(lines)-*pullN:] {
		total, res, rt := nanos(l["duration"]), nanos(l["resolveDuration"]), nanos(l["runtimeDuration"])
		resolve, runtime, own = append(resolve, res), append(runtime, rt), append(own, total-res-rt)
		if rt > 0 {
			askedRuntime++
		}
	}
	for _, r := range []struct {
		reg  *harness.Registry
		kind string
	}{{dreg, "Debian's registry, htpasswd (bcrypt)"}, {treg, "token auth"}} {
		img := r.reg.PushRandomImage(t, "warm/app", "v1")
		r.reg.Sign(t, key, "warm/app", hash(t, img))
		spec := &runtimeapi.ImageSpec{Image: r.reg.Host + "/warm/app:v1"}
		if err := warmPull(spec)(proxied); err != nil {
			t.Fatal(err)
		}
		measure("PullImage, present, by tag ("+r.kind+")", *pullN, warmPull(spec))
	}
	for _, s := range []samples{resolve, runtime, own} {
		slices.Sort(s)
	}
	head := run(t, *pullN, headFunc(t, reg, "bench/img-0", "v1"))

	fmt.Printf("containerd %s, %d images in the store, kubelet's CRI client (k8s.io/cri-client), loopback registry\n\n", ctrd.Version, *images)
	fmt.Printf("| operation | calls | direct p50 | direct p99 | pullgate p50 | pullgate p99 | p50 ratio |\n|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		fmt.Printf("| %s | %d | %s | %s | %s | %s | %.2fx |\n", r.op, r.n, ms(r.direct.p(50)), ms(r.direct.p(99)), ms(r.proxied.p(50)), ms(r.proxied.p(99)), float64(r.proxied.p(50))/float64(r.direct.p(50)))
	}
	fmt.Printf("\nwarm PullImage through pullgate, inside pullgate (from its decision log, %d pulls):\n\n", len(own))
	fmt.Printf("| part | p50 | p99 |\n|---|---|---|\n")
	fmt.Printf("| resolve: one registry HEAD | %s | %s |\n", ms(resolve.p(50)), ms(resolve.p(99)))
	fmt.Printf("| (the same HEAD from a bare client) | %s | %s |\n", ms(head.p(50)), ms(head.p(99)))
	fmt.Printf("| containerd PullImage by digest (asked for %d of %d pulls: it holds the image unpacked) | %s | %s |\n", askedRuntime, len(runtime), ms(runtime.p(50)), ms(runtime.p(99)))
	fmt.Printf("| pullgate's own work (parse, credentials, policy, unpacked check, tag record, log) | %s | %s |\n", ms(own.p(50)), ms(own.p(99)))

	benchVerification(t, reg, configFile, key, bundleKey, keyFile, creds, *verifyN, *cliN)
	benchConcurrentPulls(t, ctx, reg, gate, proxied, auth, key)
	benchRequests(t, ctx, treg, direct, proxied, auth, key, bundleKey, keyFile)
	if *watchers > 0 {
		benchClusterWatchers(t, *watchers, *changes, key)
	}
}

type row struct {
	op              string
	n               int
	direct, proxied samples
}

type samples []time.Duration

func (s samples) p(q int) time.Duration { return s[(len(s)-1)*q/100] }

func run(t *harness.Program, n int, f func() error) samples {
	for range n / 10 { // warm up connections and caches
		if err := f(); err != nil {
			t.Fatal(err)
		}
	}
	s := make(samples, n)
	for i := range s {
		start := time.Now()
		if err := f(); err != nil {
			t.Fatal(err)
		}
		s[i] = time.Since(start)
	}
	slices.Sort(s)
	return s
}

func us(d time.Duration) string { return fmt.Sprintf("%.1f us", float64(d.Nanoseconds())/1000) }

func ms(d time.Duration) string { return fmt.Sprintf("%.3f ms", float64(d.Microseconds())/1000) }

func client(t *harness.Program, endpoint string) internalapi.ImageManagerService {
	s, err := remoteclient.NewRemoteImageService(context.Background(), endpoint, time.Minute, noop.NewTracerProvider(), false)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// fill pushes n images signed by key and pulls them through s, a few at a time.
func fill(t *harness.Program, ctx context.Context, reg *harness.Registry, s internalapi.ImageManagerService, auth *runtimeapi.AuthConfig, key *harness.Key, n int) {
	var wg sync.WaitGroup
	work := make(chan int)
	for range 4 {
		wg.Go(func() {
			for i := range work {
				repo := fmt.Sprintf("bench/img-%d", i)
				img := reg.PushRandomImage(t, repo, "v1")
				d, err := img.Digest()
				if err != nil {
					t.Fatal(err)
				}
				reg.Sign(t, key, repo, d)
				if _, err := s.PullImage(ctx, &runtimeapi.ImageSpec{Image: reg.Host + "/" + repo + ":v1"}, auth, nil); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
}

// headFunc returns one warm, authenticated manifest HEAD, as pullgate's resolver makes it.
func headFunc(t *harness.Program, reg *harness.Registry, repo, tag string) func() error {
	ref, err := name.ParseReference(reg.Host + "/" + repo + ":" + tag)
	if err != nil {
		t.Fatal(err)
	}
	p, err := remote.NewPuller(remote.WithAuth(&authn.Basic{Username: "bench", Password: "bench-secret"}))
	if err != nil {
		t.Fatal(err)
	}
	return func() error {
		_, err := p.Head(context.Background(), ref)
		return err
	}
}

// nanos reads a duration slog wrote as JSON (nanoseconds).
func nanos(v any) time.Duration {
	f, _ := v.(float64)
	return time.Duration(f)
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func quietKlog() {
	flags := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(flags)
	flags.Set("logtostderr", "false")
	flags.Set("stderrthreshold", "FATAL")
	klog.SetOutput(io.Discard)
}
