package test

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"

	"github.com/pullgate/pullgate/test/harness"
	"github.com/pullgate/pullgate/verify/cluster"
)

// kubelet renews its client certificate (kubelet-client-current.pem) before it expires, and
// pullgate watches with kubelet's kubeconfig: once the first certificate has expired, the
// watch, cut off, reconnects with the renewed one and applies what changed meanwhile. With the
// certificate read once at start, it would never reconnect.
func TestClientCertificateRotation(t *testing.T) {
	t.Parallel()
	c := harness.StartCluster(t, harness.ControlPlaneBinaries(t))
	dyn, err := dynamic.NewForConfig(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	harness.CreateManifests(t, dyn, "../systemd/cluster/nodeimagepolicies.yaml", "../systemd/cluster/rbac.yaml")
	c.Wait("the NodeImagePolicy CRD to be served", time.Minute, func() (bool, error) {
		_, err := dyn.Resource(policyGVR).List(t.Context(), metav1.ListOptions{})
		return err == nil, nil
	})
	const nodeName = "node-r"
	if _, err := c.Client.CoreV1().Nodes().Create(t.Context(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	certFile := filepath.Join(dir, "kubelet-client-current.pem")
	expires := c.WriteNodeCertificate(nodeName, certFile, 20*time.Second)
	kubeconfig := filepath.Join(dir, "kubelet.conf")
	api := startRelay(t, strings.TrimPrefix(c.URL, "https://"))
	c.FileKubeconfig(kubeconfig, "https://"+api.addr, certFile)
	nodeDyn, nodeCore, err := cluster.Clients(kubeconfig, "pullgate-test")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu      sync.Mutex
		applied []string
	)
	w := cluster.NewWatcher(nodeDyn, nodeCore, nodeName, nil, func(*cluster.NodeImagePolicy) error { return nil }, func(as []cluster.Applied) error {
		mu.Lock()
		defer mu.Unlock()
		applied = applied[:0]
		for _, a := range as {
			applied = append(applied, a.Name)
		}
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	wantApplied := func(name string) {
		t.Helper()
		if _, err := dyn.Resource(policyGVR).Create(t.Context(), nodePolicy(name, map[string]any{
			"rules": []any{map[string]any{"name": "base", "images": []any{"registry.example.com/**"}, "mode": "skip"}},
		}), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		c.Wait("NodeImagePolicy "+name+" applied by the node's watcher", time.Minute, func() (bool, error) {
			mu.Lock()
			defer mu.Unlock()
			return slices.Contains(applied, name), nil
		})
	}
	wantApplied("before-rotation")

	c.WriteNodeCertificate(nodeName, certFile, time.Hour) // kubelet's renewal
	c.Wait("the first certificate to expire", time.Minute, func() (bool, error) { return time.Now().After(expires), nil })
	// Connections made with the old certificate could outlive it: cut them all.
	api.cut()
	api.restore()
	wantApplied("after-rotation")
}
