package test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"go.opentelemetry.io/otel/trace/noop"
	internalapi "k8s.io/cri-api/pkg/apis"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	remoteclient "k8s.io/cri-client/pkg"

	"github.com/pullgate/pullgate/systemd/image"
	"github.com/pullgate/pullgate/test/harness"
)

// podTimeout bounds how long kubelet may take to do what a case waits for: start a pod (its
// first pull included), refuse one, or stop one.
const podTimeout = 2 * time.Minute

// node is a real kubelet in standalone mode in front of pullgate and containerd 2.x, running
// static pods.
type node struct {
	ctrd *harness.Containerd
	// reg is a basic-auth registry whose credentials are pullgate's node credentials only.
	reg *harness.Registry
	// priv is a token-auth registry whose credentials only kubelet has, in its root directory.
	priv    *harness.Registry
	key     *harness.Key
	gate    *harness.Pullgate
	kubelet *harness.Kubelet
	runtime internalapi.RuntimeService      // straight to containerd, to watch what kubelet did
	images  internalapi.ImageManagerService // through pullgate, as kubelet's
	direct  internalapi.ImageManagerService // straight to containerd
	run     string                          // makes this run's namespaces unique
}

// through says which of kubelet's CRI services go through pullgate.
type through int

const (
	viaImage through = iota // imageServiceEndpoint, as most nodes have it
	viaBoth                 // containerRuntimeEndpoint too
	// viaRuntime is containerRuntimeEndpoint alone: kubelet's image service is containerd's,
	// so only CreateContainer stands between kubelet and an image pullgate never saw.
	viaRuntime
)

// startNode starts a node whose kubelet reaches pullgate for the services via says.
func startNode(t *testing.T, via through) *node {
	kubeletBin := harness.KubeletBinary(t)
	ctrdBin := harness.Containerd2Binary(t)
	n := &node{
		reg:  harness.StartRegistry(t, harness.WithUser("node", "node-secret-Kb3")),
		priv: harness.StartRegistry(t, harness.WithUser("kubelet", "kubelet-secret-Vw8"), harness.WithTokenAuth()),
		key:  harness.NewKey(t),
		run:  fmt.Sprintf("%x", time.Now().UnixNano()&0xffffff),
	}
	// containerd pulls the pause image by itself, so it is on the node before kubelet starts.
	pause := n.reg.Host + "/pause:1"
	n.reg.PushShellImage(t, "pause", "1", "exec sleep 2147483647")
	n.ctrd = harness.StartContainerd(t, ctrdBin, harness.WithPods(pause))
	for _, r := range []*harness.Registry{n.reg, n.priv} {
		n.ctrd.HostsTOML(r.Host, r.URL, "")
	}
	n.ctrd.Pull(pause, n.reg.Username, n.reg.Password)

	dir := t.TempDir()
	keyFile := filepath.Join(dir, "release.pub")
	if err := os.WriteFile(keyFile, n.key.PublicPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	n.gate = harness.StartPullgate(t, harness.PullgateBinary(t), fmt.Sprintf(`apiVersion: pullgate.io/v1alpha1
kind: PullgateConfig
runtimeEndpoint: %[1]s
registryConfigPath: %[2]s
stateDir: %[3]s
metricsAddress: 127.0.0.1:0
auth:
  files: [%[4]s]
defaultAction: deny
policies:
- name: apps
  images: ["%[5]s/apps/**", "%[7]s/apps/**"]
  mode: enforce
  authorities:
  - {name: release, key: {file: %[6]s}, ignoreTransparencyLog: true}
- name: scoped
  images: ["%[5]s/scoped/**"]
  namespaces: ["scoped-*"]
  mode: enforce
  authorities:
  - {name: release, key: {file: %[6]s}, ignoreTransparencyLog: true}
`, n.ctrd.Endpoint, n.ctrd.CertsDir, dir, n.reg.DockerConfig(t, dir), n.reg.Host, keyFile, n.priv.Host))

	kubeletDir := t.TempDir()
	creds, err := os.ReadFile(n.priv.DockerConfig(t, kubeletDir))
	if err != nil {
		t.Fatal(err)
	}
	endpoints := map[through]harness.KubeletEndpoints{
		viaImage:   {Runtime: n.ctrd.Endpoint, Image: n.gate.Endpoint},
		viaBoth:    {Runtime: n.gate.Endpoint, Image: n.gate.Endpoint},
		viaRuntime: {Runtime: n.gate.Endpoint, Image: n.ctrd.Endpoint},
	}[via]
	n.kubelet = harness.StartKubelet(t, kubeletBin, endpoints, creds)

	n.runtime, err = remoteclient.NewRemoteRuntimeService(t.Context(), n.ctrd.Endpoint, callTimeout, noop.NewTracerProvider(), false)
	if err != nil {
		t.Fatal(err)
	}
	n.images = imageService(t, n.gate.Endpoint)
	n.direct = imageService(t, n.ctrd.Endpoint)
	return n
}

// pod is a static pod with one container, "app", on the host's network.
type pod struct {
	name       string // of the manifest and the pod, before kubelet appends the node's name
	namespace  string
	image      string
	pullPolicy string
	probe      bool // an exec readiness probe, which writes "probed" to the container's output
}

func (p pod) manifest() string {
	var probe string
	if p.probe {
		probe = `
    readinessProbe:
      exec: {command: [sh, -c, "echo probed > /proc/1/fd/1"]}
      periodSeconds: 1`
	}
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: %s, namespace: %s}
spec:
  hostNetwork: true
  terminationGracePeriodSeconds: 10
  containers:
  - name: app
    image: %s
    imagePullPolicy: %s%s
`, p.name, p.namespace, p.image, p.pullPolicy, probe)
}

// script is what an image made by push runs: it says it started and, on SIGTERM, that it stops.
func script(marker string) string {
	return fmt.Sprintf(`trap 'echo stopping %[1]s; exit 0' TERM; echo started %[1]s; sleep 3600 & wait`, marker)
}

// push pushes repo:tag to r, an image that prints marker, signed by the node's key if signed.
func (n *node) push(t *testing.T, r *harness.Registry, repo, tag, marker string, signed bool) (string, v1.Image) {
	t.Helper()
	img := r.PushShellImage(t, repo, tag, script(marker))
	if signed {
		r.Sign(t, n.key, repo, manifestDigest(t, img))
	}
	return r.Host + "/" + repo + ":" + tag, img
}

// namespace returns a namespace for one case, unique to this run.
func (n *node) namespace(name string) string { return name + "-" + n.run }

// start writes p's manifest and removes the pod when the test ends.
func (n *node) start(t *testing.T, p pod) {
	t.Helper()
	n.kubelet.WritePod(p.name+"-"+p.namespace, p.manifest())
	t.Cleanup(func() { n.remove(t, p) })
}

// remove deletes p's manifest, waits until kubelet has stopped the pod, and removes its
// sandbox, so that the next case starts on a clean node. Removing a removed pod does nothing.
func (n *node) remove(t *testing.T, p pod) {
	t.Helper()
	n.kubelet.DeletePod(p.name + "-" + p.namespace)
	// Not t.Context(): remove runs in cleanups too, where it is done.
	ctx := context.Background()
	sandboxes := n.waitSandboxes(t, p.namespace, func(s []*runtimeapi.PodSandbox) bool {
		for _, sb := range s {
			if sb.State == runtimeapi.PodSandboxState_SANDBOX_READY {
				return false
			}
		}
		return true
	})
	for _, sb := range sandboxes {
		if err := n.runtime.RemovePodSandbox(ctx, sb.Id); err != nil {
			t.Errorf("remove sandbox %s: %v", sb.Id, err)
		}
	}
}

func (n *node) waitSandboxes(t *testing.T, namespace string, done func([]*runtimeapi.PodSandbox) bool) []*runtimeapi.PodSandbox {
	t.Helper()
	deadline := time.Now().Add(podTimeout)
	for {
		s, err := n.runtime.ListPodSandbox(context.Background(), &runtimeapi.PodSandboxFilter{
			LabelSelector: map[string]string{"io.kubernetes.pod.namespace": namespace},
		})
		if err != nil {
			t.Fatal(err)
		}
		if done(s) {
			return s
		}
		if err := n.kubelet.Exited(); err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod sandboxes in %s after %v: %v", namespace, podTimeout, s)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// containers lists the containers of namespace's pods.
func (n *node) containers(t *testing.T, namespace string) []*runtimeapi.Container {
	t.Helper()
	cs, err := n.runtime.ListContainers(t.Context(), &runtimeapi.ContainerFilter{
		LabelSelector: map[string]string{"io.kubernetes.pod.namespace": namespace},
	})
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// waitContainer waits until namespace has a container in state, and returns its status.
func (n *node) waitContainer(t *testing.T, namespace string, state runtimeapi.ContainerState) *runtimeapi.ContainerStatus {
	t.Helper()
	deadline := time.Now().Add(podTimeout)
	for {
		for _, c := range n.containers(t, namespace) {
			if c.State == state {
				resp, err := n.runtime.ContainerStatus(t.Context(), c.Id, false)
				if err != nil {
					t.Fatal(err)
				}
				return resp.Status
			}
		}
		if err := n.kubelet.Exited(); err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no container %s in namespace %s after %v", state, namespace, podTimeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitOutput waits until the container's log, as kubelet keeps it, holds want.
func waitOutput(t *testing.T, c *runtimeapi.ContainerStatus, want string) {
	t.Helper()
	deadline := time.Now().Add(podTimeout)
	for {
		b, err := os.ReadFile(c.LogPath)
		if err == nil && strings.Contains(string(b), want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("container %s log %s lacks %q after %v: %s (%v)", c.Metadata.Name, c.LogPath, want, podTimeout, b, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitRefused waits until kubelet logs a line about namespace's pod that holds all of want, and
// fails at once if the pod gets a container instead.
func (n *node) waitRefused(t *testing.T, namespace string, want ...string) {
	t.Helper()
	match := func(line string) bool {
		if !strings.Contains(line, namespace+"/") {
			return false
		}
		for _, w := range want {
			if !strings.Contains(line, w) {
				return false
			}
		}
		return true
	}
	deadline := time.Now().Add(podTimeout)
	for {
		if _, ok := n.kubelet.LogLine(match); ok {
			break
		}
		if cs := n.containers(t, namespace); len(cs) > 0 {
			t.Fatalf("the pod in %s got a container, want it refused with %q: %v", namespace, want, cs)
		}
		if err := n.kubelet.Exited(); err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("kubelet never logged %q for %s after %v", want, namespace, podTimeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if cs := n.containers(t, namespace); len(cs) > 0 {
		t.Fatalf("the pod in %s has containers although kubelet reported %q: %v", namespace, want, cs)
	}
}

// denial is what kubelet reports for an image pullgate refused: kubelet's reason, then
// pullgate's, naming the digest that was checked.
func denial(t *testing.T, r *harness.Registry, repo string, img v1.Image) string {
	return fmt.Sprintf("SignatureValidationFailed: pullgate: %s/%s@%s denied by policy", r.Host, repo, manifestDigest(t, img))
}

func TestKubelet(t *testing.T) {
	t.Parallel()
	n := startNode(t, viaImage)
	// First and alone: it takes the registry down.
	t.Run("VerifiedStartsWithRegistryDownAfterRestart", n.testRegistryDown)
	t.Run("ScopedContainerRestartsWithRegistryDown", n.testScopedRestartRegistryDown)
	t.Run("SignedStartsWithNodeCredentials", n.testSignedNodeCredentials)
	t.Run("SignedStartsWithKubeletCredentials", n.testSignedKubeletCredentials)
	t.Run("UnsignedRefused", n.testUnsignedRefused)
	t.Run("AlwaysPullsAndPinsTheVerifiedDigest", n.testAlwaysPins)
	t.Run("IfNotPresentVerifiedOnNode", n.testIfNotPresentVerified)
	t.Run("NeverVerifiedOnNode", n.testNeverVerified)
	t.Run("InstallerImageRuns", n.testInstallerImage)
	// These need pullgate's ImageStatus gate (issue 4): an image on the node without a valid
	// decision is reported absent.
	t.Run("IfNotPresentUnverifiedOnNode", n.testIfNotPresentUnverified)
	t.Run("NeverUnverifiedOnNode", n.testNeverUnverified)
}

// A pod whose image the policy's key signed starts, pulled with pullgate's node credentials
// (kubelet has none for that registry), and its container runs.
func (n *node) testSignedNodeCredentials(t *testing.T) {
	t.Parallel()
	ref, img := n.push(t, n.reg, "apps/signed", "v1", "signed-node-creds", true)
	p := pod{name: "web", namespace: n.namespace("signed"), image: ref, pullPolicy: "IfNotPresent"}
	n.start(t, p)
	c := n.waitContainer(t, p.namespace, runtimeapi.ContainerState_CONTAINER_RUNNING)
	waitOutput(t, c, "started signed-node-creds")
	if want := ref[:strings.LastIndex(ref, ":")] + "@" + manifestDigest(t, img).String(); c.ImageRef != want {
		t.Errorf("container runs image %s, want %s", c.ImageRef, want)
	}
}

// A pod whose image is on a registry whose credentials only kubelet has (in its root directory's
// config.json) starts: pullgate used the credentials kubelet sent.
func (n *node) testSignedKubeletCredentials(t *testing.T) {
	t.Parallel()
	ref, _ := n.push(t, n.priv, "apps/private", "v1", "signed-kubelet-creds", true)
	p := pod{name: "api", namespace: n.namespace("private"), image: ref, pullPolicy: "IfNotPresent"}
	n.start(t, p)
	c := n.waitContainer(t, p.namespace, runtimeapi.ContainerState_CONTAINER_RUNNING)
	waitOutput(t, c, "started signed-kubelet-creds")
}

// A pod whose image is unsigned never starts, and kubelet reports pullgate's reason as a
// user sees it in `kubectl describe pod`.
func (n *node) testUnsignedRefused(t *testing.T) {
	t.Parallel()
	ref, img := n.push(t, n.reg, "apps/unsigned", "v1", "unsigned", false)
	p := pod{name: "web", namespace: n.namespace("unsigned"), image: ref, pullPolicy: "IfNotPresent"}
	n.start(t, p)
	// The event kubelet records for the pod (logged, since there is no API server to send it to),
	// and the container's waiting reason.
	n.waitRefused(t, p.namespace, `reason="Failed"`, "Failed to pull image", denial(t, n.reg, "apps/unsigned", img))
	n.waitRefused(t, p.namespace, "Error syncing pod", "with SignatureValidationFailed", "because the signature validation failed: pullgate:")
	if s, err := n.direct.ImageStatus(t.Context(), &runtimeapi.ImageSpec{Image: ref}, false); err != nil || s.Image != nil {
		t.Errorf("ImageStatus(%s) on containerd = %v, %v; want the unsigned image absent", ref, s.GetImage(), err)
	}
}

// With imagePullPolicy Always kubelet pulls although an older image of the tag is on the node;
// pullgate verifies what the tag points to, and containerd pulls that digest even though the tag
// moved to an unsigned image while it was checked.
func (n *node) testAlwaysPins(t *testing.T) {
	t.Parallel()
	const repo = "apps/always"
	ref, _ := n.push(t, n.reg, repo, "v1", "always-old", true)
	n.pullThroughGate(t, ref) // verified, so ImageStatus reports it present
	_, fresh := n.push(t, n.reg, repo, "v1", "always-fresh", true)
	unsigned := n.reg.PushShellImage(t, repo, "next", script("always-unsigned"))
	freshSig := strings.Replace(manifestDigest(t, fresh).String(), ":", "-", 1) + ".sig"
	var moved atomic.Bool
	n.reg.OnServe(func(req *http.Request) {
		// The signature is read after the tag was resolved and before containerd is asked.
		if strings.HasSuffix(req.URL.Path, "/"+repo+"/manifests/"+freshSig) && moved.CompareAndSwap(false, true) {
			n.reg.Tag(handlerT{t}, repo, "v1", manifestDigest(t, unsigned))
		}
	})
	t.Cleanup(func() { n.reg.OnServe(nil) })

	p := pod{name: "web", namespace: n.namespace("always"), image: ref, pullPolicy: "Always"}
	n.start(t, p)
	c := n.waitContainer(t, p.namespace, runtimeapi.ContainerState_CONTAINER_RUNNING)
	waitOutput(t, c, "started always-fresh")
	if !moved.Load() {
		t.Fatal("the signature was never fetched, so the tag was never moved")
	}
	unsignedRef := repo + "@" + manifestDigest(t, unsigned).String()
	if reqs := n.reg.Requests(); reqs.ManifestGET[unsignedRef]+reqs.ManifestHEAD[unsignedRef] > 0 {
		t.Errorf("the unsigned image the tag moved to was fetched: %+v", reqs)
	}
}

// With IfNotPresent, an image pullgate verified before starts without another pull.
func (n *node) testIfNotPresentVerified(t *testing.T) {
	t.Parallel()
	ref, _ := n.push(t, n.reg, "apps/present", "v1", "present-verified", true)
	n.pullThroughGate(t, ref)
	tagReqs := func() int {
		r := n.reg.Requests()
		return r.ManifestHEAD["apps/present:v1"] + r.ManifestGET["apps/present:v1"]
	}
	before := tagReqs()
	p := pod{name: "web", namespace: n.namespace("present"), image: ref, pullPolicy: "IfNotPresent"}
	n.start(t, p)
	c := n.waitContainer(t, p.namespace, runtimeapi.ContainerState_CONTAINER_RUNNING)
	waitOutput(t, c, "started present-verified")
	if after := tagReqs(); after != before {
		t.Errorf("the tag was resolved again (%d times): kubelet pulled an image that was on the node", after-before)
	}
}

// A registry outage does not stop verified workloads from starting, even across a restart of
// pullgate: its decision is in pullgate's state. A new pod of a verified image starts with the
// registry down and pullgate restarted; an image never verified does not.
func (n *node) testRegistryDown(t *testing.T) {
	ref, _ := n.push(t, n.reg, "apps/outage", "v1", "outage-verified", true)
	n.pullThroughGate(t, ref)
	unverified, _ := n.push(t, n.reg, "apps/outage-sideloaded", "v1", "outage-sideloaded", true)
	n.ctrd.Pull(unverified, n.reg.Username, n.reg.Password)
	n.reg.SetDown(true)
	defer n.reg.SetDown(false)
	n.gate.Restart()

	p := pod{name: "web", namespace: n.namespace("outage"), image: ref, pullPolicy: "IfNotPresent"}
	n.start(t, p)
	c := n.waitContainer(t, p.namespace, runtimeapi.ContainerState_CONTAINER_RUNNING)
	waitOutput(t, c, "started outage-verified")
	// Signed, but never verified on this node: with the registry down it cannot be, and the
	// pull fails closed.
	q := pod{name: "web", namespace: n.namespace("outage-sideloaded"), image: unverified, pullPolicy: "IfNotPresent"}
	n.start(t, q)
	n.waitRefused(t, q.namespace, "with RegistryUnavailable", "because the registry is unavailable: pullgate: ")
}

// An image whose rule covers only some namespaces (under defaultAction: deny) is hidden at
// every ImageStatus, so kubelet pulls it before each container start. A container that
// exits, restarted with the registry down and pullgate restarted, still starts: the tag stands
// for the digest verified before, and pullgate answers from containerd's store.
func (n *node) testScopedRestartRegistryDown(t *testing.T) {
	img := n.reg.PushShellImage(t, "scoped/app", "v1", `echo started scoped; sleep 5; exit 1`)
	n.reg.Sign(t, n.key, "scoped/app", manifestDigest(t, img))
	p := pod{name: "crashing", namespace: n.namespace("scoped"), image: n.reg.Host + "/scoped/app:v1", pullPolicy: "IfNotPresent"}
	n.start(t, p)
	n.waitContainer(t, p.namespace, runtimeapi.ContainerState_CONTAINER_RUNNING)

	// While the first run sleeps, the registry goes away and pullgate restarts.
	n.reg.SetDown(true)
	defer n.reg.SetDown(false)
	n.gate.Restart()
	deadline := time.Now().Add(podTimeout)
	for {
		for _, c := range n.containers(t, p.namespace) {
			if c.Metadata.Attempt >= 1 {
				return
			}
		}
		if err := n.kubelet.Exited(); err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			var last string
			for _, l := range strings.Split(n.kubelet.Log(), "\n") {
				if strings.Contains(l, p.namespace+"/") && strings.Contains(l, "ull") {
					last = l
				}
			}
			t.Fatalf("the container was not restarted with the registry down within %v; kubelet's last word on pulling it: %s", podTimeout, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// With Never, an image pullgate verified before starts.
func (n *node) testNeverVerified(t *testing.T) {
	t.Parallel()
	ref, _ := n.push(t, n.reg, "apps/never", "v1", "never-verified", true)
	n.pullThroughGate(t, ref)
	p := pod{name: "web", namespace: n.namespace("never"), image: ref, pullPolicy: "Never"}
	n.start(t, p)
	c := n.waitContainer(t, p.namespace, runtimeapi.ContainerState_CONTAINER_RUNNING)
	waitOutput(t, c, "started never-verified")
}

// With IfNotPresent, an unsigned image put on the node behind pullgate's back is reported
// absent, so kubelet pulls it through pullgate, which refuses it.
func (n *node) testIfNotPresentUnverified(t *testing.T) {
	t.Parallel()
	ref, img := n.push(t, n.reg, "apps/sideloaded", "v1", "sideloaded", false)
	n.ctrd.Pull(ref, n.reg.Username, n.reg.Password)
	p := pod{name: "web", namespace: n.namespace("sideloaded"), image: ref, pullPolicy: "IfNotPresent"}
	n.start(t, p)
	n.waitRefused(t, p.namespace, "Failed to pull image", denial(t, n.reg, "apps/sideloaded", img))
}

// With Never, an unsigned image put on the node behind pullgate's back is reported absent, and
// kubelet does not start the pod.
func (n *node) testNeverUnverified(t *testing.T) {
	t.Parallel()
	ref, _ := n.push(t, n.reg, "apps/sideloaded-never", "v1", "sideloaded-never", false)
	n.ctrd.Pull(ref, n.reg.Username, n.reg.Password)
	p := pod{name: "web", namespace: n.namespace("sideloaded-never"), image: ref, pullPolicy: "Never"}
	n.start(t, p)
	n.waitRefused(t, p.namespace, "ErrImageNeverPull")
}

// pullThroughGate pulls ref through pullgate as kubelet does, for a pod of another namespace.
func (n *node) pullThroughGate(t *testing.T, ref string) {
	t.Helper()
	sandbox := &runtimeapi.PodSandboxConfig{Metadata: &runtimeapi.PodSandboxMetadata{Name: "puller", Namespace: n.namespace("puller"), Uid: "uid-puller"}}
	if _, err := n.images.PullImage(t.Context(), &runtimeapi.ImageSpec{Image: ref}, nil, sandbox); err != nil {
		t.Fatalf("PullImage(%s) through pullgate: %v", ref, err)
	}
}

func TestKubeletRuntimeThroughPullgate(t *testing.T) {
	t.Parallel()
	n := startNode(t, viaBoth)
	t.Run("PodLife", n.testPodLife)
	t.Run("UnsignedRefused", n.testUnsignedRefused)
}

func TestKubeletRuntimeOnlyThroughPullgate(t *testing.T) {
	t.Parallel()
	n := startNode(t, viaRuntime)
	t.Run("UnverifiedRefusedAtCreateContainer", n.testCreateContainerGate)
	t.Run("VerifiedStarts", n.testCreateContainerAllowed)
}

// A pod's whole life goes through pullgate: sandbox, container create and start, the exec
// probe, logs as kubelet serves them, and a graceful stop.
func (n *node) testPodLife(t *testing.T) {
	t.Parallel()
	ref, _ := n.push(t, n.reg, "apps/life", "v1", "life", true)
	p := pod{name: "web", namespace: n.namespace("life"), image: ref, pullPolicy: "IfNotPresent", probe: true}
	podName := p.name + "-" + n.kubelet.NodeName
	n.start(t, p)
	c := n.waitContainer(t, p.namespace, runtimeapi.ContainerState_CONTAINER_RUNNING)
	waitOutput(t, c, "started life")
	waitOutput(t, c, "probed") // kubelet ran the probe with ExecSync

	logs, err := n.kubelet.Get(fmt.Sprintf("/containerLogs/%s/%s/app", p.namespace, podName))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs, "started life") {
		t.Errorf("kubelet's containerLogs = %q, want the container's output", logs)
	}

	n.kubelet.DeletePod(p.name + "-" + p.namespace)
	exited := n.waitContainer(t, p.namespace, runtimeapi.ContainerState_CONTAINER_EXITED)
	if exited.ExitCode != 0 {
		t.Errorf("container exited with code %d after the pod was removed, want 0 (stopped with SIGTERM)", exited.ExitCode)
	}
	waitOutput(t, c, "stopping life")
	n.remove(t, p) // once kubelet has stopped the sandbox too
	// Each step went through pullgate, not around it. pullgate counts a call when it has
	// answered it, a moment after containerd acted on it.
	methods := []string{"RunPodSandbox", "CreateContainer", "StartContainer", "ExecSync", "ContainerStatus", "StopContainer", "StopPodSandbox", "PullImage"}
	deadline := time.Now().Add(10 * time.Second)
	for {
		m := metricsText(httpBody(t, n.gate.MetricsURL+"/metrics"))
		var missing []string
		for _, method := range methods {
			if m.value(t, fmt.Sprintf(`pullgate_cri_requests_total{code="OK",method=%q}`, method)) == 0 {
				missing = append(missing, method)
			}
		}
		if len(missing) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pullgate served no %v", missing)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// A container from an unsigned image already in the store is refused at CreateContainer, with
// pullgate's reason in kubelet's events; kubelet's image service (containerd's here) reported the
// image present, so there was no pull to deny.
func (n *node) testCreateContainerGate(t *testing.T) {
	t.Parallel()
	ref, _ := n.push(t, n.reg, "apps/sideloaded", "v1", "sideloaded", false)
	n.ctrd.Pull(ref, n.reg.Username, n.reg.Password)
	p := pod{name: "web", namespace: n.namespace("sideloaded"), image: ref, pullPolicy: "IfNotPresent"}
	n.start(t, p)
	n.waitRefused(t, p.namespace, `reason="Failed"`, "Error: SignatureValidationFailed: pullgate: "+n.reg.Host+"/apps/sideloaded", "denied by policy")
	n.waitRefused(t, p.namespace, "Error syncing pod", "CreateContainerError", "SignatureValidationFailed: pullgate:")
}

// A container from a signed image pullgate verified passes CreateContainer.
func (n *node) testCreateContainerAllowed(t *testing.T) {
	t.Parallel()
	ref, _ := n.push(t, n.reg, "apps/verified", "v1", "verified", true)
	n.pullThroughGate(t, ref)
	p := pod{name: "web", namespace: n.namespace("verified"), image: ref, pullPolicy: "IfNotPresent"}
	n.start(t, p)
	c := n.waitContainer(t, p.namespace, runtimeapi.ContainerState_CONTAINER_RUNNING)
	waitOutput(t, c, "started verified")
}

// installerImage is the installer image the DaemonSet runs (pullgate alone, statically
// linked), built from the binary under test.
func installerImage(t *testing.T) v1.Image {
	t.Helper()
	bin, err := os.ReadFile(harness.PullgateBinary(t))
	if err != nil {
		t.Fatal(err)
	}
	img, err := image.Installer(bin, "test")
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// The installer image, signed like any other, runs in a real pod.
func (n *node) testInstallerImage(t *testing.T) {
	t.Parallel()
	img := installerImage(t)
	n.reg.Push(t, "apps/installer", "v1", img)
	n.reg.Sign(t, n.key, "apps/installer", manifestDigest(t, img))
	p := pod{name: "installer", namespace: n.namespace("installer"), image: n.reg.Host + "/apps/installer:v1", pullPolicy: "IfNotPresent"}
	n.start(t, p)
	c := n.waitContainer(t, p.namespace, runtimeapi.ContainerState_CONTAINER_EXITED)
	waitOutput(t, c, "pullgate ")
	if c.ExitCode != 0 {
		t.Errorf("`pullgate version` in the installer image exited %d", c.ExitCode)
	}
}
