// Command demo shows pullgate at work: a temporary containerd and a registry that requires a
// password, pullgate in front of containerd, and kubelet's own CRI client pulling through it.
// Run it as root with `make demo`.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"syscall"
	"time"

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
	v1img := reg.PushRandomImage(t, "shop/web", "v1")
	d1, _ := v1img.Digest()
	fmt.Printf("  containerd %s on %s\n  registry %s with %s/shop/web:v1 -> %s\n", ctrd.Version, ctrd.Socket, reg.URL, reg.Host, d1)

	dir, err := os.MkdirTemp("", "pullgate-demo-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	creds := reg.DockerConfig(t, dir)
	config := func(action string) string {
		return fmt.Sprintf("apiVersion: pullgate.io/v1alpha1\nkind: PullgateConfig\nruntimeEndpoint: %s\nregistryConfigPath: %s\nstateDir: %s\nmetricsAddress: 127.0.0.1:0\nauth:\n  files: [%s]\ndefaultAction: %s\n",
			ctrd.Endpoint, ctrd.CertsDir, dir, creds, action)
	}
	step("Starting pullgate in front of containerd, with the node's registry credentials in %s", creds)
	gate := harness.StartPullgate(t, harness.PullgateBinary(t), config("allow"))
	fmt.Printf("  kubelet would use imageServiceEndpoint: %s\n  config:\n%s", gate.Endpoint, indent(config("allow")))

	images, err := remoteclient.NewRemoteImageService(ctx, gate.Endpoint, time.Minute, noop.NewTracerProvider(), false)
	if err != nil {
		t.Fatal(err)
	}
	ref := reg.Host + "/shop/web:v1"
	sandbox := &runtimeapi.PodSandboxConfig{Metadata: &runtimeapi.PodSandboxMetadata{Name: "web-0", Namespace: "shop", Uid: "demo"}}

	step("kubelet pulls %s through pullgate (no pull secret: the node's credentials apply)", ref)
	reg.Reset()
	id, err := images.PullImage(ctx, &runtimeapi.ImageSpec{Image: ref}, nil, sandbox)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("  image_ref %s\n", id)
	fmt.Printf("  pullgate's decision: %s\n", decision(gate, "pull allowed", d1.String()))
	r := reg.Requests()
	fmt.Printf("  manifest requests the registry saw: HEAD %v, GET %v\n  (one HEAD by tag from pullgate; containerd fetched only the digest pullgate resolved)\n", r.ManifestHEAD, r.ManifestGET)
	st, err := images.ImageStatus(ctx, &runtimeapi.ImageSpec{Image: ref}, false)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("  ImageStatus(%s): id %s tags %v\n", ref, st.GetImage().GetId(), st.GetImage().GetRepoTags())

	step("The tag moves in the registry; the next pull pins the new digest and the tag follows")
	v2img := reg.PushRandomImage(t, "shop/web", "v1")
	d2, _ := v2img.Digest()
	if _, err := images.PullImage(ctx, &runtimeapi.ImageSpec{Image: ref}, nil, sandbox); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("  pullgate's decision: %s\n", decision(gate, "pull allowed", d2.String()))

	step("The node administrator switches to defaultAction: deny and sends SIGHUP")
	if err := os.WriteFile(gate.ConfigPath, []byte(config("deny")), 0o600); err != nil {
		t.Fatal(err)
	}
	gate.Signal(syscall.SIGHUP)
	gate.WaitLog("configuration reloaded", func(l map[string]any) bool { return l["defaultAction"] == "deny" })
	_, err = images.PullImage(ctx, &runtimeapi.ImageSpec{Image: ref}, nil, sandbox)
	fmt.Printf("  kubelet sees: %v\n", err)

	step("A bad reference is refused before it reaches containerd")
	_, err = images.PullImage(ctx, &runtimeapi.ImageSpec{Image: reg.Host + "/Shop/Web:v1"}, nil, sandbox)
	fmt.Printf("  kubelet sees: %v\n", err)

	step("Metrics at %s/metrics", gate.MetricsURL)
	resp, err := http.Get(gate.MetricsURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, l := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(l, "pullgate_pull_decisions_total") || strings.HasPrefix(l, "pullgate_upstream_up") || strings.HasPrefix(l, `pullgate_cri_requests_total{code="OK",method="PullImage"}`) {
			fmt.Println("  " + l)
		}
	}
	step("Done: everything started here is stopped and removed")
}

func step(format string, args ...any) { fmt.Printf("\n==> "+format+"\n", args...) }

// decision waits for pullgate's log line about digest and formats it.
func decision(g *harness.Pullgate, msg, digest string) string {
	l := g.WaitLog(msg, func(l map[string]any) bool { return l["digest"] == digest })
	return fmt.Sprintf("verdict=%v rule=%v image=%v digest=%v namespace=%v pod=%v", l["verdict"], l["rule"], l["image"], l["digest"], l["namespace"], l["pod"])
}

func indent(s string) string {
	return "    " + strings.ReplaceAll(strings.TrimSpace(s), "\n", "\n    ") + "\n"
}
