package test

import (
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/jsonpath"

	"github.com/pullgate/pullgate/test/harness"
)

var policyGVR = schema.GroupVersionResource{Group: "pullgate.io", Version: "v1alpha1", Resource: "nodeimagepolicies"}

// nodePolicy is a NodeImagePolicy object.
func nodePolicy(name string, spec map[string]any) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "pullgate.io/v1alpha1", "kind": "NodeImagePolicy",
		"metadata": map[string]any{"name": name}, "spec": spec,
	}}
}

func keyRule(images string, key []byte) map[string]any {
	return map[string]any{"name": "apps", "images": []any{images}, "mode": "enforce",
		"authorities": []any{map[string]any{"name": "release", "key": map[string]any{"data": string(key)}, "ignoreTransparencyLog": true}}}
}

// Policy written once in the cluster's API is enforced by the node's pullgate, watching with the
// node's own identity: a new object, a revoked key (images already on the node included), a
// refused version, a node selector, an API server that is gone at the next start.
func TestClusterPolicy(t *testing.T) {
	bins := harness.ControlPlaneBinaries(t)
	ctrdBin := harness.Containerd2Binary(t)
	c := harness.StartCluster(t, bins)
	dyn, err := dynamic.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	harness.CreateManifests(t, dyn, "../systemd/cluster/nodeimagepolicies.yaml", "../systemd/cluster/rbac.yaml",
		"../systemd/cluster/node-reports.yaml", "../systemd/cluster/openreports/openreports.io_clusterreports.yaml")
	c.Wait("the NodeImagePolicy CRD to be served", time.Minute, func() (bool, error) {
		_, err := dyn.Resource(policyGVR).List(t.Context(), metav1.ListOptions{})
		return err == nil, nil
	})
	const nodeName = "node-a"
	node, err := c.Client.CoreV1().Nodes().Create(t.Context(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName, Labels: map[string]string{"pool": "apps"}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	reg := harness.StartRegistry(t, harness.WithUser("node", "node-secret-Kw2"))
	ctrd := harness.StartContainerd(t, ctrdBin)
	ctrd.HostsTOML(reg.Host, reg.URL, "")
	release, rotated := harness.NewKey(t), harness.NewKey(t)
	signed := reg.PushRandomImage(t, "apps/signed", "v1")
	reg.Sign(t, release, "apps/signed", manifestDigest(t, signed))
	reg.PushRandomImage(t, "apps/unsigned", "v1")
	signedRef, unsignedRef := reg.Host+"/apps/signed:v1", reg.Host+"/apps/unsigned:v1"

	dir := t.TempDir()
	stateDir := filepath.Join(dir, "state")
	nodeKubeconfig := c.NodeKubeconfig(nodeName)
	// pullgate reaches the API server through a relay that the test cuts for an outage.
	api := startRelay(t, strings.TrimPrefix(c.URL, "https://"))
	viaRelay := filepath.Join(dir, "relay.kubeconfig")
	kc, err := clientcmd.LoadFromFile(nodeKubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	for _, cl := range kc.Clusters {
		cl.Server = "https://" + api.addr
	}
	if err := clientcmd.WriteToFile(*kc, viaRelay); err != nil {
		t.Fatal(err)
	}
	config := func(kubeconfig string) string {
		return fmt.Sprintf(`apiVersion: pullgate.io/v1alpha1
kind: PullgateConfig
runtimeEndpoint: %s
registryConfigPath: %s
metricsAddress: 127.0.0.1:0
auth:
  files: [%s]
defaultAction: allow
cluster: {kubeconfig: %s, nodeName: %s}
`, ctrd.Endpoint, ctrd.CertsDir, reg.DockerConfig(t, dir), kubeconfig, nodeName)
	}
	gate := harness.StartPullgate(t, harness.PullgateBinary(t), config(viaRelay), "--state-dir", stateDir)
	e := &env{ctrd: ctrd, node: reg, gate: gate, images: imageService(t, gate.Endpoint), direct: imageService(t, ctrd.Endpoint)}

	// applied waits until the node applies generation gen of object, and says how long it took.
	applied := func(object string, gen int64) time.Duration {
		t.Helper()
		start := time.Now()
		series := fmt.Sprintf(`pullgate_cluster_policy_generation{object=%q}`, object)
		c.Wait(fmt.Sprintf("%s generation %d applied on the node", object, gen), 30*time.Second, func() (bool, error) {
			return metrics(t, e).value(t, series) == float64(gen), nil
		})
		return time.Since(start)
	}
	policies := dyn.Resource(policyGVR)
	write := func(obj *unstructured.Unstructured) int64 {
		t.Helper()
		cur, err := policies.Get(t.Context(), obj.GetName(), metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			cur, err = policies.Create(t.Context(), obj, metav1.CreateOptions{})
		} else if err == nil {
			obj.SetResourceVersion(cur.GetResourceVersion())
			cur, err = policies.Update(t.Context(), obj, metav1.UpdateOptions{})
		}
		if err != nil {
			t.Fatalf("write NodeImagePolicy %s: %v", obj.GetName(), err)
		}
		return cur.GetGeneration()
	}

	// Before any object, the file's defaultAction: allow lets the unsigned image through.
	if _, err := e.pull(t, unsignedRef, nil, "default"); err != nil {
		t.Fatalf("pull before any NodeImagePolicy: %v", err)
	}
	gen := write(nodePolicy("apps", map[string]any{"order": 10, "rules": []any{keyRule(reg.Host+"/apps/**", release.PublicPEM)}}))
	t.Logf("a new NodeImagePolicy applied on the node %v after the write", applied("apps", gen))
	_, err = e.pull(t, unsignedRef, nil, "default")
	wantCode(t, err, codes.Unknown, "SignatureValidationFailed: pullgate: ")
	if !strings.Contains(err.Error(), `denied by policy "apps/apps"`) {
		t.Errorf("denial %v does not name the object's rule apps/apps", err)
	}
	if _, err := e.pull(t, signedRef, nil, "default"); err != nil {
		t.Fatalf("signed image under the cluster's policy: %v", err)
	}
	e.waitKept(t, signedRef)

	// The key is revoked: the node's images signed by it are reported absent at once.
	gen = write(nodePolicy("apps", map[string]any{"order": 10, "rules": []any{keyRule(reg.Host+"/apps/**", rotated.PublicPEM)}}))
	t.Logf("a revoked key applied on the node %v after the write", applied("apps", gen))
	if img := e.status(t, e.images, signedRef); img != nil {
		t.Errorf("ImageStatus(%s) after its key was revoked = %v; want absent", signedRef, img)
	}
	_, err = e.pull(t, signedRef, nil, "default")
	wantCode(t, err, codes.Unknown, "SignatureValidationFailed: pullgate: ")

	// A version only the node can judge bad is refused; the one before stays in effect.
	write(nodePolicy("apps", map[string]any{"order": 10, "rules": []any{keyRule(reg.Host+"/apps/**", []byte("not a key"))}}))
	c.Wait("the node to refuse the object", 30*time.Second, func() (bool, error) {
		return metrics(t, e).value(t, `pullgate_cluster_policy_refused{object="apps"}`) == 1, nil
	})
	c.Wait("an Event on the Node for the refused object", 30*time.Second, func() (bool, error) {
		evs, err := c.Client.CoreV1().Events("default").List(t.Context(), metav1.ListOptions{FieldSelector: "involvedObject.kind=Node,involvedObject.name=" + nodeName + ",reason=NodeImagePolicyRefused"})
		if err != nil {
			return false, err
		}
		for _, ev := range evs.Items {
			if ev.Type == corev1.EventTypeWarning && ev.Source.Component == "pullgate" && strings.Contains(ev.Message, "NodeImagePolicy apps generation 3 refused") &&
				strings.Contains(ev.Message, "not a PEM public key") {
				return true, nil
			}
		}
		return false, nil
	})
	if got := metrics(t, e).value(t, `pullgate_cluster_policy_generation{object="apps"}`); got != float64(gen) {
		t.Errorf("applied generation %v after a refused version, want %d kept", got, gen)
	}
	_, err = e.pull(t, signedRef, nil, "default")
	wantCode(t, err, codes.Unknown, "SignatureValidationFailed: pullgate: ")

	// What the API server itself refuses never reaches a node.
	for name, spec := range map[string]map[string]any{
		"bad-mode":  {"rules": []any{map[string]any{"name": "x", "images": []any{"x.io/**"}, "mode": "sometimes"}}},
		"no-signer": {"rules": []any{map[string]any{"name": "x", "images": []any{"x.io/**"}, "mode": "enforce"}}},
		"no-warner": {"rules": []any{map[string]any{"name": "x", "images": []any{"x.io/**"}, "mode": "warn"}}},
		"tagged":    {"rules": []any{map[string]any{"name": "x", "images": []any{"x.io/app:v1"}, "mode": "skip"}}},
	} {
		if _, err := policies.Create(t.Context(), nodePolicy(name, spec), metav1.CreateOptions{}); !apierrors.IsInvalid(err) {
			t.Errorf("NodeImagePolicy %s: create = %v, want refused as invalid", name, err)
		}
	}

	// An object for another pool applies once the node joins it.
	gen = write(nodePolicy("gpu", map[string]any{"order": -1, "nodeSelector": map[string]any{"matchLabels": map[string]any{"pool": "gpu"}},
		"rules": []any{map[string]any{"name": "unsigned-ok", "images": []any{reg.Host + "/apps/unsigned"}, "mode": "skip"}}}))
	if _, err := e.pull(t, unsignedRef, nil, "default"); err == nil {
		t.Error("an object selecting other nodes applied here")
	}
	node.Labels["pool"] = "gpu"
	if _, err := c.Client.CoreV1().Nodes().Update(t.Context(), node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	applied("gpu", gen)
	if _, err := e.pull(t, unsignedRef, nil, "default"); err != nil {
		t.Errorf("the node joined the object's pool, but its rule does not apply: %v", err)
	}

	// The shipped alerting rules, tested on this pullgate's own series.
	checkAlertRules(t, httpBody(t, gate.MetricsURL+"/metrics"))

	// The node's report in the cluster: what `pullgate audit` prints, the revoked image failing.
	clusterReports := dyn.Resource(schema.GroupVersionResource{Group: "openreports.io", Version: "v1alpha1", Resource: "clusterreports"})
	c.Wait("node-a's ClusterReport to show the revoked image failing", time.Minute, func() (bool, error) {
		r, err := clusterReports.Get(t.Context(), "pullgate-"+nodeName, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, nil
		} else if err != nil {
			return false, err
		}
		if scope, _, _ := unstructured.NestedString(r.Object, "scope", "name"); scope != nodeName {
			return false, fmt.Errorf("report scoped to %q", scope)
		}
		if owners := r.GetOwnerReferences(); len(owners) != 1 || owners[0].Kind != "Node" || owners[0].Name != nodeName {
			return false, fmt.Errorf("report owned by %v, want the Node", owners)
		}
		results, _, _ := unstructured.NestedSlice(r.Object, "results")
		for _, res := range results {
			m, _ := res.(map[string]any)
			image, _, _ := unstructured.NestedString(m, "properties", "image")
			if strings.HasPrefix(image, reg.Host+"/apps/signed@") && m["result"] == "fail" && m["policy"] == "apps/apps" {
				fail, _, _ := unstructured.NestedInt64(r.Object, "summary", "fail")
				return fail >= 1, nil
			}
		}
		return false, nil
	})
	// The README's command for every node running an image enforce would refuse, here for the
	// images refused already (kubectl's jsonpath is client-go's).
	list, err := clusterReports.List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	jp := jsonpath.New("refused")
	if err := jp.Parse(`{range .items[*].results[?(@.result=="fail")]}{.properties.node}{"\t"}{.properties.image}{"\t"}{.policy}{"\n"}{end}`); err != nil {
		t.Fatal(err)
	}
	var refusedOut strings.Builder
	if err := jp.Execute(&refusedOut, list.UnstructuredContent()); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(refusedOut.String(), nodeName+"\t"+reg.Host+"/apps/signed@") {
		t.Errorf("the README's jsonpath over the reports printed %q, want node-a with the revoked image", refusedOut.String())
	}
	other := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "openreports.io/v1alpha1", "kind": "ClusterReport",
		"metadata": map[string]any{"name": "pullgate-node-b"}, "source": "pullgate", "scope": map[string]any{"apiVersion": "v1", "kind": "Node", "name": "node-b"}}}
	_, err = dynamicFor(t, nodeKubeconfig).Resource(schema.GroupVersionResource{Group: "openreports.io", Version: "v1alpha1", Resource: "clusterreports"}).Create(t.Context(), other, metav1.CreateOptions{})
	if err == nil || !strings.Contains(err.Error(), "a node may write only its own report") {
		t.Errorf("node-a wrote node-b's report: %v; want the admission policy's refusal", err)
	}

	// The node's identity reads policies, and writes none.
	nodeDyn := dynamicFor(t, nodeKubeconfig)
	if _, err := nodeDyn.Resource(policyGVR).Create(t.Context(), nodePolicy("mine", map[string]any{"rules": []any{map[string]any{"name": "x", "images": []any{"x.io/**"}, "mode": "skip"}}}), metav1.CreateOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("a node created a NodeImagePolicy: %v; want forbidden", err)
	}

	// The docs' example is one the API server accepts (and the node: it applies it).
	harness.CreateManifests(t, dyn, "../docs/examples/nodeimagepolicy.yaml")
	applied("payments", 1)

	// The API server stops answering: the node keeps what it applied, and catches up once it
	// answers again.
	api.cut()
	c.Wait("pullgate to find the API server gone", 30*time.Second, func() (bool, error) { return api.refused() > 0, nil })
	gen = write(nodePolicy("gpu", map[string]any{"order": -1, "nodeSelector": map[string]any{"matchLabels": map[string]any{"pool": "gpu"}},
		"rules": []any{map[string]any{"name": "unsigned-still-ok", "images": []any{reg.Host + "/apps/unsigned"}, "mode": "skip"}}}))
	if _, err := e.pull(t, unsignedRef, nil, "default"); err != nil {
		t.Errorf("during an API outage the node dropped an object it had applied: %v", err)
	}
	if img := e.status(t, e.images, signedRef); img != nil {
		t.Errorf("ImageStatus(%s) during an API outage = %v; want absent (its key stays revoked)", signedRef, img)
	}
	api.restore()
	applied("gpu", gen)

	// At the next start the API server cannot be reached: the node enforces what it applied.
	gate.Signal(syscall.SIGTERM)
	if err := gate.Wait(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	api.cut()
	gate = harness.StartPullgate(t, harness.PullgateBinary(t), config(viaRelay), "--state-dir", stateDir)
	e.gate, e.images = gate, imageService(t, gate.Endpoint)
	if img := e.status(t, e.images, signedRef); img != nil {
		t.Errorf("ImageStatus(%s) after a restart without the API server = %v; want absent (its key stays revoked)", signedRef, img)
	}
	if _, err := e.pull(t, unsignedRef, nil, "default"); err != nil {
		t.Errorf("after a restart without the API server, the gpu object's rule does not apply: %v", err)
	}

	// The report goes with its Node.
	if err := c.Client.CoreV1().Nodes().Delete(t.Context(), nodeName, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	c.Wait("the deleted Node's report to go", time.Minute, func() (bool, error) {
		_, err := clusterReports.Get(t.Context(), "pullgate-"+nodeName, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
}

// relay forwards TCP connections to target until cut, which closes them all and then closes
// every new one at once, as an API server that is gone; restore forwards again.
type relay struct {
	target string
	addr   string

	mu    sync.Mutex
	down  bool
	tries int // connections closed at once while down
	conns map[net.Conn]bool
}

func startRelay(t *testing.T, target string) *relay {
	r := &relay{target: target, conns: map[net.Conn]bool{}}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close(); r.cut() })
	r.addr = l.Addr().String()
	go func() {
		for {
			in, err := l.Accept()
			if err != nil {
				return
			}
			r.mu.Lock()
			down := r.down
			if down {
				r.tries++
			}
			r.mu.Unlock()
			if down {
				in.Close()
				continue
			}
			out, err := net.Dial("tcp", r.target)
			if err != nil {
				in.Close()
				continue
			}
			r.mu.Lock()
			r.conns[in], r.conns[out] = true, true
			r.mu.Unlock()
			go func() { io.Copy(out, in); out.Close() }()
			go func() { io.Copy(in, out); in.Close() }()
		}
	}()
	return r
}

func (r *relay) cut() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.down, r.tries = true, 0
	for c := range r.conns {
		c.Close()
	}
	clear(r.conns)
}

// refused is how many connections the relay closed at once since it was cut.
func (r *relay) refused() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.tries
}

func (r *relay) restore() {
	r.mu.Lock()
	r.down = false
	r.mu.Unlock()
}

func dynamicFor(t *testing.T, kubeconfig string) dynamic.Interface {
	t.Helper()
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	d, err := dynamic.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	return d
}
