package test

import (
	"crypto/tls"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pullgate/pullgate/test/harness"
)

// clusterNode is a real control plane with one node: kubelet registered as a Node, its image
// service pullgate, in front of containerd 2.x.
type clusterNode struct {
	cluster *harness.Cluster
	reg     *harness.Registry
	key     *harness.Key
	kubelet *harness.Kubelet
	node    *corev1.Node
}

func startClusterNode(t *testing.T) *clusterNode {
	bins := harness.ControlPlaneBinaries(t)
	kubeletBin := harness.KubeletBinary(t)
	ctrdBin := harness.Containerd2Binary(t)
	start := time.Now()
	n := &clusterNode{
		reg: harness.StartRegistry(t, harness.WithUser("node", "node-secret-Qc4")),
		key: harness.NewKey(t),
	}
	n.cluster = harness.StartCluster(t, bins)
	pause := n.reg.Host + "/pause:1"
	n.reg.PushShellImage(t, "pause", "1", "exec sleep 2147483647")
	ctrd := harness.StartContainerd(t, ctrdBin, harness.WithPods(pause), harness.WithNetworkReady())
	ctrd.HostsTOML(n.reg.Host, n.reg.URL, "")
	ctrd.Pull(pause, n.reg.Username, n.reg.Password)

	dir := t.TempDir()
	keyFile := filepath.Join(dir, "release.pub")
	if err := os.WriteFile(keyFile, n.key.PublicPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	gate := harness.StartPullgate(t, harness.PullgateBinary(t), fmt.Sprintf(`apiVersion: pullgate.io/v1alpha1
kind: PullgateConfig
runtimeEndpoint: %[1]s
registryConfigPath: %[2]s
metricsAddress: 127.0.0.1:0
auth:
  files: [%[3]s]
defaultAction: deny
policies:
- name: apps
  images: ["%[4]s/apps/**"]
  mode: enforce
  authorities:
  - {name: release, key: {file: %[5]s}, ignoreTransparencyLog: true}
`, ctrd.Endpoint, ctrd.CertsDir, n.reg.DockerConfig(t, dir), n.reg.Host, keyFile))

	n.kubelet = harness.StartKubelet(t, kubeletBin, harness.KubeletEndpoints{Runtime: ctrd.Endpoint, Image: gate.Endpoint}, nil,
		harness.WithCluster(n.cluster))
	n.node = n.cluster.WaitNodeReady(n.kubelet.NodeName, time.Minute)
	t.Logf("cluster with node %s Ready after %v", n.node.Name, time.Since(start).Round(100*time.Millisecond))
	return n
}

func TestCluster(t *testing.T) {
	t.Parallel()
	n := startClusterNode(t)
	t.Run("NodeRegistered", n.testNodeRegistered)
	t.Run("ScheduledPodRuns", n.testScheduledPodRuns)
	t.Run("NodeCannotReadSecrets", n.testNodeCannotReadSecrets)
}

// testNodeRegistered: kubelet registered itself with its own identity, and says what it runs.
func (n *clusterNode) testNodeRegistered(t *testing.T) {
	info := n.node.Status.NodeInfo
	if !strings.HasPrefix(info.KubeletVersion, "v1.") || !strings.HasPrefix(info.ContainerRuntimeVersion, "containerd://2.") {
		t.Errorf("node %s runs kubelet %q on %q, want kubelet v1.x on containerd 2.x", n.node.Name, info.KubeletVersion, info.ContainerRuntimeVersion)
	}
	var internal []string
	for _, a := range n.node.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			internal = append(internal, a.Address)
		}
	}
	if len(internal) != 1 || internal[0] != "127.0.0.1" {
		t.Errorf("node %s InternalIP %v, want [127.0.0.1]", n.node.Name, internal)
	}
	// kubelet's API takes clients of the cluster's CA that the API server authorizes, and no
	// one else.
	if _, err := n.kubelet.Get("/pods"); err != nil {
		t.Errorf("kubelet's API with the API server's kubelet-client certificate: %v", err)
	}
	insecure := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	if resp, err := insecure.Get(n.kubelet.URL + "/pods"); err != nil {
		t.Error(err)
	} else if resp.Body.Close(); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("kubelet's API without a certificate: %s, want 401 Unauthorized", resp.Status)
	}
	// The API server's version, as kube-apiserver derives its own from the build's stamp.
	v, err := n.cluster.Client.Discovery().ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	if v.GitVersion != info.KubeletVersion || v.Major != "1" {
		t.Errorf("kube-apiserver %s (major %q), kubelet %s: want one version, stamped", v.GitVersion, v.Major, info.KubeletVersion)
	}
}

// testScheduledPodRuns: a pod created through the API server, with no node named, is bound by
// the scheduler to the node and runs there; a pod of an unsigned image is refused, and the API
// server shows pullgate's reason.
func (n *clusterNode) testScheduledPodRuns(t *testing.T) {
	ns := wantEnforced(t, n.cluster, n.reg, n.key, n.node.Name, "apps", n.kubelet.Exited)
	// The scheduler, not the test, bound it.
	events, err := n.cluster.Client.CoreV1().Events(ns).List(t.Context(), metav1.ListOptions{FieldSelector: "involvedObject.name=hello-signed,reason=Scheduled"})
	if err != nil {
		t.Fatal(err)
	}
	if len(events.Items) == 0 || events.Items[0].Source.Component != "default-scheduler" && events.Items[0].ReportingController != "default-scheduler" {
		t.Errorf("no Scheduled event from default-scheduler for hello-signed: %+v", events.Items)
	}
	// Its log, as `kubectl logs` reads it: through the API server from kubelet, whose API
	// authenticates the API server by its certificate and asks the API server whether it may.
	n.wait(t, "hello-signed's log through the API server", func() (bool, error) {
		b, err := n.cluster.Client.CoreV1().Pods(ns).GetLogs("hello-signed", &corev1.PodLogOptions{Container: "app"}).DoRaw(t.Context())
		return strings.Contains(string(b), "started signed-in-cluster"), err
	})
}

// wantEnforced creates, in a new namespace, pods hello-signed and hello-unsigned of images
// under reg's apps/, the first signed by key, and waits until the first runs on node and the
// second is refused by pullgate's rule, with pullgate's reason in the pod's status and kubelet's
// event, as `kubectl describe pod` and `kubectl get events` show them. gone, while waiting, says
// the node is gone. It returns the namespace.
func wantEnforced(t *testing.T, c *harness.Cluster, reg *harness.Registry, key *harness.Key, node, rule string, gone func() error) string {
	t.Helper()
	wait := func(what string, done func() (bool, error)) {
		t.Helper()
		c.Wait(what, podTimeout, func() (bool, error) {
			if err := gone(); err != nil {
				t.Fatal(err)
			}
			return done()
		})
	}
	ns := "apps-" + suffix()
	c.Namespace(ns)
	signed := reg.PushShellImage(t, "apps/hello", "signed", script("signed-in-cluster"))
	reg.Sign(t, key, "apps/hello", manifestDigest(t, signed))
	unsigned := reg.PushShellImage(t, "apps/hello", "unsigned", script("unsigned-in-cluster"))
	pods := c.Client.CoreV1().Pods(ns)
	for _, tag := range []string{"signed", "unsigned"} {
		_, err := pods.Create(t.Context(), &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "hello-" + tag},
			Spec: corev1.PodSpec{
				HostNetwork:                   true, // the node has no pod network
				TerminationGracePeriodSeconds: new(int64(2)),
				Containers:                    []corev1.Container{{Name: "app", Image: reg.Host + "/apps/hello:" + tag}},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
	}

	var pod *corev1.Pod
	wait("pod hello-signed Running and Ready", func() (bool, error) {
		var err error
		pod, err = pods.Get(t.Context(), "hello-signed", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return pod.Status.Phase == corev1.PodRunning && podReady(pod), nil
	})
	if pod.Spec.NodeName != node {
		t.Errorf("pod hello-signed on node %q, want %q", pod.Spec.NodeName, node)
	}

	digest := manifestDigest(t, unsigned)
	reason := fmt.Sprintf("pullgate: %s/apps/hello@%s denied by policy %q", reg.Host, digest, rule)
	wait("pod hello-unsigned refused by pullgate", func() (bool, error) {
		p, err := pods.Get(t.Context(), "hello-unsigned", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, cs := range p.Status.ContainerStatuses {
			if cs.State.Running != nil || cs.State.Terminated != nil {
				t.Fatalf("hello-unsigned's container started: %+v", cs.State)
			}
			if w := cs.State.Waiting; w != nil && (w.Reason == "SignatureValidationFailed" || w.Reason == "ImagePullBackOff") &&
				strings.Contains(w.Message, reason) {
				return true, nil
			}
		}
		return false, nil
	})
	want := "SignatureValidationFailed: " + reason
	wait("an event of hello-unsigned with pullgate's denial", func() (bool, error) {
		events, err := c.Client.CoreV1().Events(ns).List(t.Context(), metav1.ListOptions{FieldSelector: "involvedObject.name=hello-unsigned,reason=Failed"})
		if err != nil {
			return false, err
		}
		for _, e := range events.Items {
			if strings.Contains(e.Message, want) {
				return true, nil
			}
		}
		return false, nil
	})
	return ns
}

// testNodeCannotReadSecrets: the Node authorizer and RBAC decide what a node's credential may
// do, and NodeRestriction what it may change: it reads its own Node, but no Secret of a pod not
// bound to it, no list of Secrets, and it cannot register another node.
func (n *clusterNode) testNodeCannotReadSecrets(t *testing.T) {
	ns := "secrets-" + suffix()
	n.cluster.Namespace(ns)
	_, err := n.cluster.Client.CoreV1().Secrets(ns).Create(t.Context(), &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "db"},
		StringData: map[string]string{"password": "not-for-nodes"},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	node := n.cluster.ClientFor(n.cluster.NodeKubeconfig(n.node.Name))
	if _, err := node.CoreV1().Nodes().Get(t.Context(), n.node.Name, metav1.GetOptions{}); err != nil {
		t.Fatalf("the node's credential cannot read its own Node: %v", err)
	}
	if s, err := node.CoreV1().Secrets(ns).Get(t.Context(), "db", metav1.GetOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("node reads secret %s/db: %v, %v; want Forbidden", ns, s.GetName(), err)
	}
	if l, err := node.CoreV1().Secrets(ns).List(t.Context(), metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("node lists secrets in %s: %v; want Forbidden", ns, err)
	} else if l != nil && len(l.Items) > 0 {
		t.Errorf("node listed %d secrets", len(l.Items))
	}
	if _, err := node.CoreV1().Secrets("").List(t.Context(), metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("node lists secrets in every namespace: %v; want Forbidden", err)
	}
	other := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "other-" + n.node.Name}}
	if _, err := node.CoreV1().Nodes().Create(t.Context(), other, metav1.CreateOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("node %s registers node %s: %v; want Forbidden (NodeRestriction)", n.node.Name, other.Name, err)
	}
}

// wait polls done for up to podTimeout, failing at once if kubelet or the control plane exited.
func (n *clusterNode) wait(t *testing.T, what string, done func() (bool, error)) {
	t.Helper()
	n.cluster.Wait(what, podTimeout, func() (bool, error) {
		if err := n.kubelet.Exited(); err != nil {
			t.Fatal(err)
		}
		return done()
	})
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// suffix makes a namespace unique to this run.
func suffix() string { return fmt.Sprintf("%x", time.Now().UnixNano()&0xffffff) }
