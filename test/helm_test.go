package test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	"sigs.k8s.io/yaml"

	"github.com/pullgate/pullgate/test/harness"
)

const chart = "../charts/pullgate"

func helmBinary(t *testing.T) string { return toolBinary(t, "PULLGATE_HELM", "helm") }

// toolBinary is the tool the environment variable env names, as `make e2e` builds and sets it.
func toolBinary(t *testing.T, env, name string) string {
	t.Helper()
	bin := os.Getenv(env)
	if fi, err := os.Stat(bin); bin == "" || err != nil || fi.IsDir() {
		harness.Missing(t, fmt.Sprintf("%s not found: `make e2e` builds it into bin/ and sets %s", name, env))
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

// charts/pullgate lints, renders what the kustomize manifests hold and refuses an installer not
// pinned by digest. TestInstallerDaemonSet installs it on a real node.
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
}
