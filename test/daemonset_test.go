package test

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/yaml"

	"github.com/pullgate/pullgate/test/harness"
)

// installTimeout bounds a rollout of the installer on the node: an image pull, pullgate's
// start, kubelet's restart and its 10 s of health, the pod's readiness.
const installTimeout = 4 * time.Minute

// The installer, as an operator deploys it, on a node as kubeadm leaves one (systemd, containerd
// 2.x, kubelet registered with its own certificate): the DaemonSet controller and the scheduler
// put the installer on the labelled node, it installs pullgate through the node's systemd and
// switches kubelet, and the pod comes back ready. A signed pod then starts through pullgate and
// an unsigned one is refused, with pullgate's reason in kubelet's Event. The uninstall overlay
// puts the node back as it was. Then the Helm chart does the same, with the fleet's policy in a
// NodeImagePolicy watched with kubelet's identity, and its uninstall mode puts the node back.
func TestInstallerDaemonSet(t *testing.T) {
	t.Parallel()
	kubectl := toolBinary(t, "PULLGATE_KUBECTL", "kubectl")
	helmBin := helmBinary(t)
	c := harness.StartCluster(t, harness.ControlPlaneBinaries(t))
	reg := harness.StartRegistry(t, harness.WithUser("node", "node-secret-Ds5"))
	key := harness.NewKey(t)
	pause := reg.Host + "/pause:3.10"
	reg.PushShellImage(t, "pause", "3.10", "exec sleep 2147483647")
	installer := installerImage(t)
	reg.Push(t, "pullgate/pullgate", "test", installer)
	installerDigest := manifestDigest(t, installer)
	reg.Sign(t, key, "pullgate/pullgate", installerDigest)

	node := harness.StartNode(t, c, reg, pause)
	before, err := node.ReadFile(harness.NodeKubeletConfig)
	if err != nil {
		t.Fatal(err)
	}
	label := []byte(`{"metadata":{"labels":{"pullgate.io/install":"true"}}}`)
	if _, err := c.Client.CoreV1().Nodes().Patch(t.Context(), node.Name, types.MergePatchType, label, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	d := &installerDeployment{t: t, c: c, node: node, kubeletConfig: before}
	keyFile := filepath.Join(t.TempDir(), "release.pub")
	if err := os.WriteFile(keyFile, key.PublicPEM, 0o644); err != nil {
		t.Fatal(err)
	}

	t.Run("Kustomize", func(t *testing.T) {
		d.t, d.namespace = t, "pullgate-system"
		config := nodeConfig(reg.Host, "") + fmt.Sprintf(`- name: apps
  images: ["%s/apps/**"]
  mode: enforce
  authorities:
  - {name: release-key, key: {file: /etc/pullgate/keys/release.pub}, ignoreTransparencyLog: true}
`, reg.Host)
		install := d.overlay("../systemd/daemonset", reg.Host, installerDigest.String(), config, key.PublicPEM)
		if out, err := d.kubectl(kubectl, "apply", "-k", install); err != nil {
			t.Fatalf("kubectl apply -k: %v\n%s", err, out)
		}
		d.waitInstalled()
		wantEnforced(t, c, reg, key, node.Name, "apps", node.Exited)

		uninstall := d.overlay("../systemd/daemonset-uninstall", reg.Host, installerDigest.String(), config, key.PublicPEM)
		if out, err := d.kubectl(kubectl, "apply", "-k", uninstall); err != nil {
			t.Fatalf("kubectl apply -k (uninstall): %v\n%s", err, out)
		}
		d.waitUninstalled()
		if out, err := d.kubectl(kubectl, "delete", "-k", uninstall, "--wait=false"); err != nil {
			t.Fatalf("kubectl delete -k (uninstall): %v\n%s", err, out)
		}
	})

	t.Run("Helm", func(t *testing.T) {
		d.t, d.namespace = t, "pullgate-helm"
		dir := t.TempDir()
		configFile := filepath.Join(dir, "config.yaml")
		if err := os.WriteFile(configFile, []byte(nodeConfig(reg.Host, "/etc/kubernetes/kubelet.conf")), 0o644); err != nil {
			t.Fatal(err)
		}
		kube := []string{"--kubeconfig", c.AdminKubeconfig, "-n", d.namespace}
		set := []string{"--set", "image.repository=" + reg.Host + "/pullgate/pullgate", "--set", "image.digest=" + installerDigest.String(),
			"--set", "pauseImage=" + pause, "--set", "minReadySeconds=0", "--set-file", "config=" + configFile, "--set-file", `keys.release\.pub=` + keyFile}
		if out, err := helm(t, helmBin, append(append([]string{"install", "pullgate", chart, "--create-namespace"}, kube...), set...)...); err != nil {
			t.Fatalf("helm install: %v\n%s", err, out)
		}
		d.waitInstalled()
		if _, err := c.Client.RbacV1().ClusterRoles().Get(t.Context(), "pullgate:node", metav1.GetOptions{}); err != nil {
			t.Errorf("ClusterRole pullgate:node: %v", err)
		}
		if _, err := c.Client.AdmissionregistrationV1().ValidatingAdmissionPolicies().Get(t.Context(), "pullgate-node-reports", metav1.GetOptions{}); err != nil {
			t.Errorf("the node-report admission policy: %v", err)
		}
		// The fleet's rule, written once in the cluster's API.
		dyn := dynamicFor(t, c.AdminKubeconfig)
		if _, err := dyn.Resource(policyGVR).Create(t.Context(), nodePolicy("fleet", map[string]any{
			"rules": []any{keyRule(reg.Host+"/apps/**", key.PublicPEM)},
		}), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		c.Wait("the node's pullgate to apply NodeImagePolicy fleet", time.Minute, func() (bool, error) {
			m, err := nodeMetrics()
			return strings.Contains(m, `pullgate_cluster_policy_generation{object="fleet"} 1`), err
		})
		wantEnforced(t, c, reg, key, node.Name, "fleet/apps", node.Exited)

		if out, err := helm(t, helmBin, append(append([]string{"upgrade", "pullgate", chart, "--set", "mode=uninstall"}, kube...), set...)...); err != nil {
			t.Fatalf("helm upgrade to uninstall mode: %v\n%s", err, out)
		}
		d.waitUninstalled()
		if out, err := helm(t, helmBin, append([]string{"uninstall", "pullgate", "--wait"}, kube...)...); err != nil {
			t.Fatalf("helm uninstall: %v\n%s", err, out)
		}
		if _, err := c.Client.AppsV1().DaemonSets(d.namespace).Get(t.Context(), "pullgate-installer", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("the DaemonSet after helm uninstall: %v", err)
		}
		if _, err := c.Client.RbacV1().ClusterRoles().Get(t.Context(), "pullgate:node", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("ClusterRole pullgate:node after helm uninstall: %v", err)
		}
	})
}

// nodeConfig is the node's pullgate configuration: the installer's image checked, the pause
// image let through, and with kubeconfig the cluster's policy too. Rules for apps follow.
func nodeConfig(host, kubeconfig string) string {
	var cluster string
	if kubeconfig != "" {
		cluster = fmt.Sprintf("cluster: {kubeconfig: %s}\n", kubeconfig)
	}
	return fmt.Sprintf(`apiVersion: pullgate.io/v1alpha1
kind: PullgateConfig
log: {format: json, level: info}
defaultAction: deny
%[2]spolicies:
- name: pullgate-installer
  images: ["%[1]s/pullgate/pullgate"]
  mode: enforce
  authorities:
  - {name: release-key, key: {file: /etc/pullgate/keys/release.pub}, ignoreTransparencyLog: true}
- name: node-bootstrap
  images: ["%[1]s/pause"]
  mode: skip
`, host, cluster)
}

// nodeMetrics reads the node's pullgate's metrics, on the host's network like the node.
func nodeMetrics() (string, error) {
	resp, err := http.Get("http://127.0.0.1:9750/metrics")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// installerDeployment is the installer DaemonSet of one way of deploying it (kustomize, Helm).
type installerDeployment struct {
	t             *testing.T
	c             *harness.Cluster
	node          *harness.Node
	namespace     string
	kubeletConfig []byte // as it was before any install
}

func (d *installerDeployment) kubectl(bin string, args ...string) (string, error) {
	out, err := exec.Command(bin, append([]string{"--kubeconfig", d.c.AdminKubeconfig}, args...)...).CombinedOutput()
	return string(out), err
}

// overlay writes a kustomization over base (a path relative to this package), as an operator
// edits the shipped one: the installer's and the pause image from the test's registry, the
// node's policy and key, no minimum readiness. It returns the kustomization's directory.
func (d *installerDeployment) overlay(base, host, digest, config string, key []byte) string {
	d.t.Helper()
	dir := d.t.TempDir()
	abs, err := filepath.Abs(base)
	if err != nil {
		d.t.Fatal(err)
	}
	rel, err := filepath.Rel(dir, abs)
	if err != nil {
		d.t.Fatal(err)
	}
	patch := func(obj map[string]any) map[string]any {
		b, err := yaml.Marshal(obj)
		if err != nil {
			d.t.Fatal(err)
		}
		return map[string]any{"patch": string(b)}
	}
	meta := func(name string) map[string]any { return map[string]any{"name": name, "namespace": d.namespace} }
	k, err := yaml.Marshal(map[string]any{
		"apiVersion": "kustomize.config.k8s.io/v1beta1",
		"kind":       "Kustomization",
		"resources":  []any{rel},
		"images": []any{
			map[string]any{"name": "ghcr.io/pullgate/pullgate", "newName": host + "/pullgate/pullgate", "digest": digest},
			map[string]any{"name": "registry.k8s.io/pause", "newName": host + "/pause", "newTag": "3.10"},
		},
		"patches": []any{
			patch(map[string]any{"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta("pullgate-config"), "data": map[string]any{"config.yaml": config}}),
			patch(map[string]any{"apiVersion": "v1", "kind": "Secret", "metadata": meta("pullgate-keys"), "stringData": map[string]any{"release.pub": string(key)}}),
			patch(map[string]any{"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": meta("pullgate-installer"), "spec": map[string]any{"minReadySeconds": 0}}),
		},
	})
	if err != nil {
		d.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), k, 0o644); err != nil {
		d.t.Fatal(err)
	}
	return dir
}

// waitRollout waits until the DaemonSet's current template runs ready on the node, put there
// by the DaemonSet controller.
func (d *installerDeployment) waitRollout(what string) {
	d.t.Helper()
	d.c.Wait(what, installTimeout, func() (bool, error) {
		if err := d.node.Exited(); err != nil {
			d.t.Fatal(err)
		}
		ds, err := d.c.Client.AppsV1().DaemonSets(d.namespace).Get(d.t.Context(), "pullgate-installer", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		st := ds.Status
		return st.ObservedGeneration >= ds.Generation && st.DesiredNumberScheduled == 1 && st.UpdatedNumberScheduled == 1 && st.NumberReady == 1 && st.NumberAvailable == 1, nil
	})
	pods, err := d.c.Client.CoreV1().Pods(d.namespace).List(d.t.Context(), metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=pullgate-installer"})
	if err != nil {
		d.t.Fatal(err)
	}
	for _, p := range pods.Items {
		if p.DeletionTimestamp != nil || !podReady(&p) {
			continue
		}
		if p.Spec.NodeName != d.node.Name || len(p.OwnerReferences) == 0 || p.OwnerReferences[0].Kind != "DaemonSet" {
			d.t.Errorf("installer pod %s on node %q owned by %v; want the DaemonSet's, on %s", p.Name, p.Spec.NodeName, p.OwnerReferences, d.node.Name)
		}
	}
}

// waitInstalled waits for the install's rollout, then checks the node: pullgate active under
// systemd, kubelet's image service switched to it.
func (d *installerDeployment) waitInstalled() {
	d.t.Helper()
	d.waitRollout("the installer ready on node " + d.node.Name)
	if st := d.unitState("pullgate.service"); st != "active" {
		d.t.Errorf("pullgate.service on the node is %q, want active", st)
	}
	cfg, err := d.node.ReadFile(harness.NodeKubeletConfig)
	if err != nil {
		d.t.Fatal(err)
	}
	if !strings.Contains(string(cfg), "imageServiceEndpoint: unix:///run/pullgate/pullgate.sock") {
		d.t.Errorf("kubelet's configuration after the install:\n%s\nwant imageServiceEndpoint pullgate's socket", cfg)
	}
}

// waitUninstalled waits for the uninstall's rollout, then checks that the node is as before.
func (d *installerDeployment) waitUninstalled() {
	d.t.Helper()
	d.waitRollout("the uninstaller ready on node " + d.node.Name)
	if st := d.unitState("pullgate.service"); st == "active" {
		d.t.Errorf("pullgate.service on the node is still active after the uninstall")
	}
	cfg, err := d.node.ReadFile(harness.NodeKubeletConfig)
	if err != nil {
		d.t.Fatal(err)
	}
	if string(cfg) != string(d.kubeletConfig) {
		d.t.Errorf("kubelet's configuration after the uninstall:\n%s\nwant it as before:\n%s", cfg, d.kubeletConfig)
	}
	// kubelet, back on containerd, is healthy.
	d.c.WaitNodeReady(d.node.Name, time.Minute)
}

func (d *installerDeployment) unitState(unit string) string {
	out, _ := d.node.Command("systemctl", "is-active", unit).Output()
	return strings.TrimSpace(string(out))
}
