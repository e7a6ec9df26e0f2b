package test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/pullgate/pullgate/test/harness"
)

const chart = "../charts/pullgate"

func helmBinary(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("PULLGATE_HELM")
	if fi, err := os.Stat(bin); bin == "" || err != nil || fi.IsDir() {
		harness.Missing(t, "helm not found: `make e2e` builds it into bin/ and sets PULLGATE_HELM")
	}
	return bin
}

func helm(t *testing.T, bin string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+t.TempDir(), "HELM_CONFIG_HOME="+t.TempDir(), "HELM_DATA_HOME="+t.TempDir())
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// charts/pullgate lints, renders what the kustomize manifests hold, refuses an installer not
// pinned by digest, and installs, upgrades to uninstall mode and uninstalls on a real control
// plane, whose DaemonSet controller schedules the installer onto the selected node.
func TestHelmChart(t *testing.T) {
	bin := helmBinary(t)
	const digest = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	key := harness.NewKey(t)
	keyFile := filepath.Join(t.TempDir(), "release.pub")
	if err := os.WriteFile(keyFile, key.PublicPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	set := []string{"--set", "image.digest=" + digest, "--set-file", `keys.release\.pub=` + keyFile}
	if out, err := helm(t, bin, append([]string{"lint", chart, "--strict"}, set...)...); err != nil {
		t.Fatalf("helm lint: %v\n%s", err, out)
	}
	if out, err := helm(t, bin, "template", "pullgate", chart); err == nil || !strings.Contains(out, "image.digest must be the sha256:... digest") {
		t.Errorf("helm template without a digest: %v\n%s", err, out)
	}
	out, err := helm(t, bin, append([]string{"template", "pullgate", chart, "-n", "pullgate-system"}, set...)...)
	if err != nil {
		t.Fatalf("helm template: %v\n%s", err, out)
	}
	var ds *appsv1.DaemonSet
	for _, doc := range strings.Split(out, "\n---\n") {
		var d appsv1.DaemonSet
		if yaml.Unmarshal([]byte(doc), &d) == nil && d.Kind == "DaemonSet" {
			ds = &d
		}
	}
	if ds == nil {
		t.Fatalf("helm template rendered no DaemonSet:\n%s", out)
	}
	if got := ds.Spec.Template.Spec.InitContainers[0].Image; got != "ghcr.io/pullgate/pullgate@"+digest {
		t.Errorf("installer image %s, want it by digest", got)
	}
	if !strings.Contains(out, "kind: ValidatingAdmissionPolicy") || !strings.Contains(out, "name: pullgate:node") {
		t.Errorf("helm template lacks the node-report admission policy or the node RBAC")
	}
	if strings.Contains(out, "kind: PrometheusRule") {
		t.Errorf("a PrometheusRule rendered without the Prometheus Operator's CRD")
	}
	if out, err := helm(t, bin, append([]string{"template", "pullgate", chart, "--set", "prometheusRule.enabled=true"}, set...)...); err != nil || !strings.Contains(out, "alert: PullgateDown") {
		t.Errorf("prometheusRule.enabled=true: %v; want the alerting rules", err)
	}

	c := harness.StartCluster(t, harness.ControlPlaneBinaries(t))
	if _, err := c.Client.CoreV1().Nodes().Create(t.Context(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-h", Labels: map[string]string{"pullgate.io/install": "true"}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	kube := []string{"--kubeconfig", c.AdminKubeconfig, "-n", "pullgate-system"}
	if out, err := helm(t, bin, append(append([]string{"install", "pullgate", chart, "--create-namespace", "--wait=false"}, kube...), set...)...); err != nil {
		t.Fatalf("helm install: %v\n%s", err, out)
	}
	daemonSet := func() *appsv1.DaemonSet {
		d, err := c.Client.AppsV1().DaemonSets("pullgate-system").Get(t.Context(), "pullgate-installer", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	c.Wait("the DaemonSet controller to schedule the installer onto node-h", time.Minute, func() (bool, error) {
		return daemonSet().Status.DesiredNumberScheduled == 1, nil
	})
	if _, err := c.Client.RbacV1().ClusterRoles().Get(t.Context(), "pullgate:node", metav1.GetOptions{}); err != nil {
		t.Errorf("ClusterRole pullgate:node: %v", err)
	}
	if _, err := c.Client.AdmissionregistrationV1().ValidatingAdmissionPolicies().Get(t.Context(), "pullgate-node-reports", metav1.GetOptions{}); err != nil {
		t.Errorf("the node-report admission policy: %v", err)
	}

	if out, err := helm(t, bin, append(append([]string{"upgrade", "pullgate", chart, "--set", "mode=uninstall"}, kube...), set...)...); err != nil {
		t.Fatalf("helm upgrade to uninstall mode: %v\n%s", err, out)
	}
	if cmd := daemonSet().Spec.Template.Spec.InitContainers[0].Command; len(cmd) < 2 || cmd[1] != "uninstall" {
		t.Errorf("after the upgrade to uninstall mode the installer runs %v", cmd)
	}
	if out, err := helm(t, bin, append([]string{"uninstall", "pullgate", "--wait"}, kube...)...); err != nil {
		t.Fatalf("helm uninstall: %v\n%s", err, out)
	}
	if _, err := c.Client.AppsV1().DaemonSets("pullgate-system").Get(t.Context(), "pullgate-installer", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("the DaemonSet after helm uninstall: %v", err)
	}
	if _, err := c.Client.RbacV1().ClusterRoles().Get(t.Context(), "pullgate:node", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("ClusterRole pullgate:node after helm uninstall: %v", err)
	}
}
