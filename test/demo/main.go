// Command demo shows pullgate at work: a temporary containerd and a registry that requires a
// password, pullgate in front of containerd with a signature policy, and kubelet's own CRI
// client pulling through it. Run it as root with `make demo`.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"go.opentelemetry.io/otel/trace/noop"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	remoteclient "k8s.io/cri-client/pkg"
	"k8s.io/klog/v2"

	"github.com/pullgate/pullgate/test/harness"
)

func main() {
	// kubelet's client logs refused pulls through klog; the demo prints what kubelet sees itself.
	flags := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(flags)
	flags.Set("logtostderr", "false")
	flags.Set("stderrthreshold", "FATAL")
	klog.SetOutput(io.Discard)
	t := &harness.Program{}
	defer t.Close()
	ctx := context.Background()

	bin := os.Getenv("PULLGATE_CONTAINERD")
	if bin == "" {
		bin = "/usr/bin/containerd"
	}
	step("Starting a temporary containerd (%s) and a registry on loopback that requires a password", bin)
	ctrd := harness.StartContainerd(t, bin)
	reg := harness.StartRegistry(t, harness.WithUser("demo", "s3cret-demo"))
	ctrd.HostsTOML(reg.Host, reg.URL, "")
	fmt.Printf("  containerd %s on %s\n  registry %s\n", ctrd.Version, ctrd.Socket, reg.URL)

	dir, err := os.MkdirTemp("", "pullgate-demo-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	key := harness.NewKey(t)
	keyFile := filepath.Join(dir, "release.pub")
	if err := os.WriteFile(keyFile, key.PublicPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	step("Pushing two images; the release key (%s) signs only the first, as `cosign sign --key` would", keyFile)
	web := reg.PushRandomImage(t, "shop/web", "v1")
	reg.Sign(t, key, "shop/web", digest(t, web))
	tool := reg.PushRandomImage(t, "shop/tool", "v1")
	fmt.Printf("  %s/shop/web:v1  -> %s (signed)\n  %s/shop/tool:v1 -> %s (not signed)\n", reg.Host, digest(t, web), reg.Host, digest(t, tool))

	creds := reg.DockerConfig(t, dir)
	config := fmt.Sprintf(`apiVersion: pullgate.io/v1alpha1
kind: PullgateConfig
runtimeEndpoint: %s
registryConfigPath: %s
stateDir: %s
metricsAddress: 127.0.0.1:0
auth:
  files: [%s]
defaultAction: deny
policies:
- name: shop-signed
  images: ["%s/shop/**"]
  mode: enforce
  authorities:
  - name: release-key
    key: {file: %s}
    ignoreTransparencyLog: true
`, ctrd.Endpoint, ctrd.CertsDir, dir, creds, reg.Host, keyFile)
	step("Starting pullgate in front of containerd with this configuration (node credentials in %s)", creds)
	gate := harness.StartPullgate(t, harness.PullgateBinary(t), config)
	fmt.Printf("  kubelet would use imageServiceEndpoint: %s\n%s", gate.Endpoint, indent(config))

	images, err := remoteclient.NewRemoteImageService(ctx, gate.Endpoint, time.Minute, noop.NewTracerProvider(), false)
	if err != nil {
		t.Fatal(err)
	}
	sandbox := &runtimeapi.PodSandboxConfig{Metadata: &runtimeapi.PodSandboxMetadata{Name: "web-0", Namespace: "shop", Uid: "demo"}}
	pull := func(ref string) (string, error) {
		return images.PullImage(ctx, &runtimeapi.ImageSpec{Image: ref}, nil, sandbox)
	}

	webRef := reg.Host + "/shop/web:v1"
	step("kubelet pulls the signed %s through pullgate", webRef)
	reg.Reset()
	id, err := pull(webRef)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("  image_ref %s\n  pullgate's decision: %s\n", id, decision(gate, "pull allowed", digest(t, web).String()))
	r := reg.Requests()
	fmt.Printf("  manifest requests the registry saw: HEAD %v, GET %v\n  (pullgate resolved the tag once and read the signature; containerd fetched only the digest pullgate verified)\n", r.ManifestHEAD, r.ManifestGET)
	st, err := images.ImageStatus(ctx, &runtimeapi.ImageSpec{Image: webRef}, false)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("  ImageStatus(%s): id %s tags %v\n", webRef, st.GetImage().GetId(), st.GetImage().GetRepoTags())

	toolRef := reg.Host + "/shop/tool:v1"
	step("kubelet pulls the unsigned %s", toolRef)
	_, err = pull(toolRef)
	fmt.Printf("  kubelet sees: %v\n", err)
	st, _ = images.ImageStatus(ctx, &runtimeapi.ImageSpec{Image: reg.Host + "/shop/tool@" + digest(t, tool).String()}, false)
	fmt.Printf("  containerd has it: %v\n", st.GetImage() != nil)

	step("Someone moves shop/web:v1 to an unsigned build; the next pull is denied and the node keeps the signed one")
	moved := reg.PushRandomImage(t, "shop/web", "v1")
	_, err = pull(webRef)
	fmt.Printf("  registry now says %s\n  kubelet sees: %v\n", digest(t, moved), err)
	st, _ = images.ImageStatus(ctx, &runtimeapi.ImageSpec{Image: webRef}, false)
	fmt.Printf("  ImageStatus(%s) still: id %s\n", webRef, st.GetImage().GetId())

	step("A security engineer checks images against the policy without a node: pullgate verify")
	for _, ref := range []string{reg.Host + "/shop/web@" + digest(t, web).String(), toolRef} {
		fmt.Printf("  $ pullgate verify --config config.yaml %s\n", ref)
		cmd := exec.Command(harness.PullgateBinary(t), "verify", "--config", gate.ConfigPath, ref)
		out, err := cmd.CombinedOutput()
		fmt.Print(indent(string(out)))
		fmt.Printf("    (exit code %d)\n", cmd.ProcessState.ExitCode())
		if err != nil && cmd.ProcessState.ExitCode() != 1 {
			t.Fatal(err)
		}
	}

	step("An unsigned image put into containerd without pullgate is absent for kubelet, so it must come through pullgate")
	imported := reg.PushRandomImage(t, "shop/imported", "v1")
	importedRef := reg.Host + "/shop/imported:v1"
	direct, err := remoteclient.NewRemoteImageService(ctx, ctrd.Endpoint, time.Minute, noop.NewTracerProvider(), false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := direct.PullImage(ctx, &runtimeapi.ImageSpec{Image: importedRef}, &runtimeapi.AuthConfig{Username: reg.Username, Password: reg.Password}, nil); err != nil {
		t.Fatal(err)
	}
	st, _ = direct.ImageStatus(ctx, &runtimeapi.ImageSpec{Image: importedRef}, false)
	fmt.Printf("  pulled straight from containerd: %s (%s)\n  containerd's ImageStatus: id %s\n", importedRef, digest(t, imported), st.GetImage().GetId())
	st, _ = images.ImageStatus(ctx, &runtimeapi.ImageSpec{Image: importedRef}, false)
	fmt.Printf("  pullgate's ImageStatus: present=%v (kubelet now calls PullImage, which pullgate checks)\n", st.GetImage() != nil)
	_, err = pull(importedRef)
	fmt.Printf("  kubelet sees: %v\n", err)

	step("Before switching a rule to enforce, an administrator lists the node's images: pullgate audit")
	fmt.Println("  $ pullgate audit")
	cmd := exec.Command(harness.PullgateBinary(t), "audit", "--config", gate.ConfigPath, "--state-dir", gate.StateDir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("pullgate audit: %v\n%s", err, out)
	}
	fmt.Print(indent(string(out)))

	step("A bad reference is refused before it reaches containerd")
	_, err = pull(reg.Host + "/Shop/Web:v1")
	fmt.Printf("  kubelet sees: %v\n", err)

	step("Metrics at %s/metrics", gate.MetricsURL)
	resp, err := http.Get(gate.MetricsURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, l := range strings.Split(string(body), "\n") {
		for _, p := range []string{"pullgate_pull_decisions_total", "pullgate_verification_duration_seconds_count", "pullgate_upstream_up"} {
			if strings.HasPrefix(l, p) {
				fmt.Println("  " + l)
			}
		}
	}
	step("Done: everything started here is stopped and removed")
}

func step(format string, args ...any) { fmt.Printf("\n==> "+format+"\n", args...) }

func digest(t *harness.Program, img v1.Image) v1.Hash {
	h, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// decision waits for pullgate's log line about digest and formats it.
func decision(g *harness.Pullgate, msg, digest string) string {
	l := g.WaitLog(msg, func(l map[string]any) bool { return l["digest"] == digest })
	return fmt.Sprintf("verdict=%v rule=%v image=%v digest=%v namespace=%v pod=%v", l["verdict"], l["rule"], l["image"], l["digest"], l["namespace"], l["pod"])
}

func indent(s string) string {
	return "    " + strings.ReplaceAll(strings.TrimSpace(s), "\n", "\n    ") + "\n"
}
