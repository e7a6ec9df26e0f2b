// Command cluster runs a single-node Kubernetes cluster with pullgate on its node: etcd,
// kube-apiserver, kube-controller-manager and kube-scheduler on loopback, and the node of
// `make node` (containerd 2.x, pullgate as kubelet's image service, a registry that requires a
// password) with kubelet registered as a Node. It starts a signed and an unsigned pod through
// the API server, shows what becomes of them, and keeps the cluster running for you to try
// kubectl until Ctrl-C (or, with -exit, stops at once). Run it as root with `make cluster`;
// docs/cluster.md tells more.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"

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

	bins := harness.ControlPlaneBinaries(t)
	ctrdBin := harness.Containerd2Binary(t)
	kubeletBin := harness.KubeletBinary(t)

	step("Starting etcd, kube-apiserver, kube-controller-manager and kube-scheduler on loopback")
	start := time.Now()
	cluster := harness.StartCluster(t, bins)
	fmt.Printf("  kube-apiserver %s, ready after %v\n  logs: %s/*.log\n", cluster.URL, time.Since(start).Round(100*time.Millisecond), cluster.Dir)
	step("Installing the NodeImagePolicy CRD and the RBAC that lets nodes read it (systemd/cluster)")
	dyn, err := dynamic.NewForConfig(cluster.Config)
	if err != nil {
		t.Fatal(err)
	}
	harness.CreateManifests(t, dyn, "systemd/cluster/nodeimagepolicies.yaml", "systemd/cluster/rbac.yaml")
	nodeName := cluster.NextNodeName()

	step("Starting a registry on loopback that requires a password, and containerd %s", ctrdBin)
	reg := harness.StartRegistry(t, harness.WithUser("node", "s3cret-node"))
	pause := reg.Host + "/pause:1"
	reg.PushShellImage(t, "pause", "1", "exec sleep 2147483647")
	ctrd := harness.StartContainerd(t, ctrdBin, harness.WithPods(pause), harness.WithNetworkReady())
	ctrd.HostsTOML(reg.Host, reg.URL, "")
	ctrd.Pull(pause, reg.Username, reg.Password)
	fmt.Printf("  registry %s (user %s, password %s)\n  containerd %s on %s, pause image %s\n",
		reg.URL, reg.Username, reg.Password, ctrd.Version, ctrd.Endpoint, pause)

	dir, err := os.MkdirTemp("", "pullgate-cluster-")
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
# NodeImagePolicy objects add their rules after these, watched with the node's own identity.
cluster: {kubeconfig: %s, nodeName: %s}
`, ctrd.Endpoint, ctrd.CertsDir, reg.DockerConfig(t, dir), reg.Host, keyFile, cluster.NodeKubeconfig(nodeName), nodeName)
	step("Starting pullgate in front of containerd, with the node's credentials for the registry")
	gate := harness.StartPullgate(t, harness.PullgateBinary(t), config)
	fmt.Print(indent(config))

	endpoints := harness.KubeletEndpoints{Runtime: ctrd.Endpoint, Image: gate.Endpoint}
	if *runtimeToo {
		endpoints.Runtime = gate.Endpoint
	}
	step("Starting kubelet %s as a Node, with imageServiceEndpoint %s and containerRuntimeEndpoint %s", kubeletBin, endpoints.Image, endpoints.Runtime)
	k := harness.StartKubelet(t, kubeletBin, endpoints, nil, harness.WithCluster(cluster))
	node := cluster.WaitNodeReady(k.NodeName, 2*time.Minute)
	fmt.Printf("  node %s Ready (kubelet %s, %s)\n  kubelet's log: %s\n", node.Name, node.Status.NodeInfo.KubeletVersion, node.Status.NodeInfo.ContainerRuntimeVersion, k.LogPath)

	ctx := context.Background()
	cluster.Namespace("demo")
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
		step("Creating pod demo/hello-%s through the API server; the scheduler binds it to %s", tag, node.Name)
		fmt.Print(indent(manifest))
		var pod corev1.Pod
		if err := yaml.UnmarshalStrict([]byte(manifest), &pod); err != nil {
			t.Fatal(err)
		}
		if _, err := cluster.Client.CoreV1().Pods("demo").Create(ctx, &pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	step("What becomes of them")
	cluster.Wait("pod demo/hello-signed Running", 2*time.Minute, func() (bool, error) {
		p, err := cluster.Client.CoreV1().Pods("demo").Get(ctx, "hello-signed", metav1.GetOptions{})
		return err == nil && p.Status.Phase == corev1.PodRunning, err
	})
	var logs []byte
	cluster.Wait("hello-signed's log", time.Minute, func() (bool, error) {
		logs, err = cluster.Client.CoreV1().Pods("demo").GetLogs("hello-signed", &corev1.PodLogOptions{}).DoRaw(ctx)
		return err == nil && len(logs) > 0, err
	})
	fmt.Printf("  hello-signed runs on %s; kubectl logs shows:\n%s", node.Name, indent(string(logs)))
	var waiting *corev1.ContainerStateWaiting
	cluster.Wait("hello-unsigned refused", 2*time.Minute, func() (bool, error) {
		p, err := cluster.Client.CoreV1().Pods("demo").Get(ctx, "hello-unsigned", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, cs := range p.Status.ContainerStatuses {
			if w := cs.State.Waiting; w != nil && strings.Contains(w.Message, "SignatureValidationFailed") {
				waiting = w
				return true, nil
			}
		}
		return false, nil
	})
	fmt.Printf("  hello-unsigned is refused; kubectl get pod shows %s:\n%s", waiting.Reason, indent(waiting.Message))
	for _, msg := range []string{"pull allowed", "pull denied"} {
		for _, l := range gate.LogLines(msg) {
			fmt.Printf("  pullgate: %s %v@%v for pod %v/%v, rule %v\n", msg, l["image"], l["digest"], l["namespace"], l["pod"], l["rule"])
		}
	}
	if *exit {
		step("Done: everything started here is stopped and removed")
		return
	}

	kubectl := os.Getenv("PULLGATE_KUBECTL")
	if _, err := os.Stat(kubectl); kubectl == "" || err != nil {
		kubectl = "kubectl"
	}
	step("The cluster keeps running; Ctrl-C stops it and removes everything. Try it with kubectl (images under %s/apps/ must be signed):", reg.Host)
	fmt.Printf(`  export KUBECONFIG=%s
  %[2]s get nodes -o wide
  %[2]s get pods -A
  %[2]s -n demo describe pod hello-unsigned
  %[2]s -n demo logs hello-signed
  %[2]s -n demo run shell --image=%[3]s/apps/hello:signed --overrides='{"spec":{"hostNetwork":true}}'
  # a policy for every node, written once: pullgate on the node applies it within moments
  %[2]s apply -f docs/examples/nodeimagepolicy.yaml
  %[2]s get nodeimagepolicies
  curl -s %[4]s/metrics | grep pullgate_cluster_policy
`, cluster.AdminKubeconfig, kubectl, reg.Host, gate.MetricsURL)
	select {}
}

func step(format string, args ...any) { fmt.Printf("\n==> "+format+"\n", args...) }

func indent(s string) string {
	return "    " + strings.ReplaceAll(strings.TrimSpace(s), "\n", "\n    ") + "\n"
}
