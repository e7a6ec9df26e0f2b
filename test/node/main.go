// Command node runs pullgate on one machine the way a Kubernetes node does: a real kubelet in
// standalone mode (static pods, no API server) whose image service, and with -runtime its
// runtime service too, is pullgate, in front of containerd 2.x. It starts a signed and an
// unsigned pod, shows what kubelet makes of them, and keeps the node running for you to try
// your own pods until Ctrl-C (or, with -exit, stops at once). Run it as root with `make node`;
// docs/kubelet.md tells more.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/pullgate/pullgate/test/harness"
)

func main() {
	runtimeToo := flag.Bool("runtime", false, "point kubelet's containerRuntimeEndpoint at pullgate too")
	exit := flag.Bool("exit", false, "stop after showing the two pods")
	flag.Parse()
	t := &harness.Program{}
	defer t.Close()
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-signals
		step("Stopping; everything started here is stopped and removed")
		t.Close()
		os.Exit(0)
	}()

	ctrdBin := harness.Containerd2Binary(t)
	kubeletBin := harness.KubeletBinary(t)

	step("Starting a registry on loopback that requires a password, and containerd %s", ctrdBin)
	reg := harness.StartRegistry(t, harness.WithUser("node", "s3cret-node"))
	pause := reg.Host + "/pause:1"
	reg.PushShellImage(t, "pause", "1", "exec sleep 2147483647")
	ctrd := harness.StartContainerd(t, ctrdBin, harness.WithPods(pause))
	ctrd.HostsTOML(reg.Host, reg.URL, "")
	ctrd.Pull(pause, reg.Username, reg.Password)
	fmt.Printf("  registry %s (user %s, password %s)\n  containerd %s on %s, pause image %s\n",
		reg.URL, reg.Username, reg.Password, ctrd.Version, ctrd.Endpoint, pause)

	dir, err := os.MkdirTemp("", "pullgate-node-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	key := harness.NewKey(t)
	keyFile := filepath.Join(dir, "release.pub")
	if err := os.WriteFile(keyFile, key.PublicPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	step("Pushing two images that print a line and sleep; the release key signs only the first")
	signed := reg.PushShellImage(t, "apps/hello", "signed", "echo hello from a signed image; sleep 3600 & wait")
	d, err := signed.Digest()
	if err != nil {
		t.Fatal(err)
	}
	reg.Sign(t, key, "apps/hello", d)
	reg.PushShellImage(t, "apps/hello", "unsigned", "echo hello from an unsigned image; sleep 3600 & wait")
	fmt.Printf("  %[1]s/apps/hello:signed\n  %[1]s/apps/hello:unsigned\n", reg.Host)

	config := fmt.Sprintf(`apiVersion: pullgate.io/v1alpha1
kind: PullgateConfig
runtimeEndpoint: %s
registryConfigPath: %s
metricsAddress: 127.0.0.1:0
auth:
  files: [%s]
defaultAction: deny
policies:
- name: apps
  images: ["%s/apps/**"]
  mode: enforce
  authorities:
  - name: release-key
    key: {file: %s}
    ignoreTransparencyLog: true
`, ctrd.Endpoint, ctrd.CertsDir, reg.DockerConfig(t, dir), reg.Host, keyFile)
	step("Starting pullgate in front of containerd, with the node's credentials for the registry")
	gate := harness.StartPullgate(t, harness.PullgateBinary(t), config)
	fmt.Print(indent(config))

	endpoints := harness.KubeletEndpoints{Runtime: ctrd.Endpoint, Image: gate.Endpoint}
	if *runtimeToo {
		endpoints.Runtime = gate.Endpoint
	}
	step("Starting kubelet %s with imageServiceEndpoint %s and containerRuntimeEndpoint %s", kubeletBin, endpoints.Image, endpoints.Runtime)
	k := harness.StartKubelet(t, kubeletBin, endpoints, nil)
	fmt.Printf("  node %s, static pods from %s\n  kubelet's log: %s\n  containers' logs: %s\n", k.NodeName, k.ManifestDir, k.LogPath, k.LogsDir)

	for _, tag := range []string{"signed", "unsigned"} {
		manifest := fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: hello-%s, namespace: demo}
spec:
  hostNetwork: true
  terminationGracePeriodSeconds: 2
  containers:
  - name: hello
    image: %s/apps/hello:%s
`, tag, reg.Host, tag)
		step("Writing %s/hello-%s.yaml", k.ManifestDir, tag)
		fmt.Print(indent(manifest))
		k.WritePod("hello-"+tag, manifest)
	}

	step("What kubelet makes of them")
	output := waitFile(t, filepath.Join(k.LogsDir, "demo_hello-signed-"+k.NodeName+"_*", "hello", "0.log"), "hello from a signed image")
	fmt.Printf("  hello-signed runs; its output, as kubelet keeps it:\n%s", indent(output))
	event := waitLine(t, k, "hello-unsigned-", `reason="Failed"`, "SignatureValidationFailed")
	fmt.Printf("  hello-unsigned is refused; kubelet's event (kubectl describe pod would show it):\n%s", indent(event))
	for _, msg := range []string{"pull allowed", "pull denied"} {
		for _, l := range gate.LogLines(msg) {
			fmt.Printf("  pullgate: %s %v@%v for pod %v/%v, rule %v\n", msg, l["image"], l["digest"], l["namespace"], l["pod"], l["rule"])
		}
	}
	if *exit {
		step("Done: everything started here is stopped and removed")
		return
	}
	step("The node keeps running. Try your own pods: write manifests into %s (images under %s/apps/ must be signed); Ctrl-C stops it", k.ManifestDir, reg.Host)
	select {}
}

// waitFile waits until a file matching pattern holds want, and returns it.
func waitFile(t *harness.Program, pattern, want string) string {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		paths, _ := filepath.Glob(pattern)
		for _, p := range paths {
			if b, err := os.ReadFile(p); err == nil && strings.Contains(string(b), want) {
				return string(b)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s holding %q after 2m", pattern, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitLine waits until kubelet logs a line holding all of want, and returns it.
func waitLine(t *harness.Program, k *harness.Kubelet, want ...string) string {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		line, ok := k.LogLine(func(l string) bool {
			for _, w := range want {
				if !strings.Contains(l, w) {
					return false
				}
			}
			return true
		})
		if ok {
			return line
		}
		if time.Now().After(deadline) {
			t.Fatalf("kubelet logged no line with %q after 2m", want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func step(format string, args ...any) { fmt.Printf("\n==> "+format+"\n", args...) }

func indent(s string) string {
	return "    " + strings.ReplaceAll(strings.TrimSpace(s), "\n", "\n    ") + "\n"
}
