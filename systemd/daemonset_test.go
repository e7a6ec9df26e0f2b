package systemd

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/pullgate/pullgate/proxy/config"
	"github.com/pullgate/pullgate/verify"
)

type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Namespace  string   `json:"namespace,omitempty"`
	Resources  []string `json:"resources"`
	Patches    []struct {
		Path string `json:"path"`
	} `json:"patches,omitempty"`
	Images []struct {
		Name   string `json:"name"`
		NewTag string `json:"newTag,omitempty"`
		Digest string `json:"digest,omitempty"`
	} `json:"images,omitempty"`
}

func readKustomization(t *testing.T, dir string) kustomization {
	t.Helper()
	var k kustomization
	strict(t, filepath.Join(dir, "kustomization.yaml"), &k)
	if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" {
		t.Errorf("%s: apiVersion %q kind %q", dir, k.APIVersion, k.Kind)
	}
	return k
}

func strict(t *testing.T, path string, v any) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(data, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// manifests decodes every object of the kustomization strictly into its k8s.io/api type.
func manifests(t *testing.T) (objs map[string]any, ns string) {
	t.Helper()
	k := readKustomization(t, "daemonset")
	listed := slices.Clone(k.Resources)
	slices.Sort(listed)
	files, _ := filepath.Glob("daemonset/*.yaml")
	var onDisk []string
	for _, f := range files {
		if b := filepath.Base(f); b != "kustomization.yaml" {
			onDisk = append(onDisk, b)
		}
	}
	if !slices.Equal(listed, onDisk) {
		t.Errorf("kustomization lists %v, directory has %v", listed, onDisk)
	}
	objs = map[string]any{}
	for _, r := range k.Resources {
		path := filepath.Join("daemonset", r)
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, doc := range bytes.Split(data, []byte("\n---\n")) {
			var tm metav1.TypeMeta
			if err := yaml.Unmarshal(doc, &tm); err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			var obj interface{ GetName() string }
			switch tm.APIVersion + " " + tm.Kind {
			case "apps/v1 DaemonSet":
				obj = &appsv1.DaemonSet{}
			case "v1 ConfigMap":
				obj = &corev1.ConfigMap{}
			case "v1 Secret":
				obj = &corev1.Secret{}
			case "v1 ServiceAccount":
				obj = &corev1.ServiceAccount{}
			case "v1 Namespace":
				obj = &corev1.Namespace{}
			default:
				t.Fatalf("%s: unexpected %s %s", path, tm.APIVersion, tm.Kind)
			}
			if err := yaml.UnmarshalStrict(doc, obj); err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			if obj.GetName() == "" {
				t.Errorf("%s: %s without a name", path, tm.Kind)
			}
			if m, ok := obj.(interface{ GetNamespace() string }); ok && tm.Kind != "Namespace" && m.GetNamespace() != k.Namespace {
				t.Errorf("%s: %s in namespace %q, kustomization sets %q", path, tm.Kind, m.GetNamespace(), k.Namespace)
			}
			objs[tm.Kind+"/"+obj.GetName()] = obj
		}
	}
	return objs, k.Namespace
}

// The installer DaemonSet has what docs/install.md promises, and references only what exists.
func TestDaemonSet(t *testing.T) {
	t.Parallel()
	objs, ns := manifests(t)
	if _, ok := objs["Namespace/"+ns]; !ok {
		t.Errorf("no Namespace %s", ns)
	}
	ds, ok := objs["DaemonSet/pullgate-installer"].(*appsv1.DaemonSet)
	if !ok {
		t.Fatal("no DaemonSet pullgate-installer")
	}
	spec := ds.Spec.Template.Spec
	check := func(what string, ok bool) {
		t.Helper()
		if !ok {
			t.Errorf("DaemonSet: %s", what)
		}
	}
	check("selector matches the template's labels", ds.Spec.Selector != nil && len(ds.Spec.Selector.MatchLabels) > 0 &&
		labelsMatch(ds.Spec.Selector.MatchLabels, ds.Spec.Template.Labels))
	check("rolling update", ds.Spec.UpdateStrategy.Type == appsv1.RollingUpdateDaemonSetStrategyType)
	ru := ds.Spec.UpdateStrategy.RollingUpdate
	check("maxUnavailable 1", ru != nil && ru.MaxUnavailable != nil && ru.MaxUnavailable.IntValue() == 1)
	check("node selector for a gradual rollout", spec.NodeSelector["pullgate.io/install"] == "true")
	check("host PID namespace (nsenter into systemd)", spec.HostPID)
	check("host network (kubelet's healthz on loopback)", spec.HostNetwork)
	check("service account exists", objs["ServiceAccount/"+spec.ServiceAccountName] != nil)
	check("one install init container", len(spec.InitContainers) == 1)
	check("a container", len(spec.Containers) == 1)

	volumes := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = v
	}
	host := volumes["host"]
	check("host root volume", host.HostPath != nil && host.HostPath.Path == "/")
	check("config volume is the ConfigMap", host.HostPath != nil && volumes["config"].ConfigMap != nil && objs["ConfigMap/"+volumes["config"].ConfigMap.Name] != nil)
	check("keys volume is the Secret", volumes["keys"].Secret != nil && objs["Secret/"+volumes["keys"].Secret.SecretName] != nil)

	for _, c := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
		check(c.Name+": image set", c.Image != "")
		for _, m := range c.VolumeMounts {
			check(fmt.Sprintf("%s: mount %s has a volume", c.Name, m.Name), volumes[m.Name].Name != "")
		}
	}
	install := spec.InitContainers[0]
	check("installer privileged", install.SecurityContext != nil && install.SecurityContext.Privileged != nil && *install.SecurityContext.Privileged)
	check("installer runs pullgate install on /host", slices.Equal(install.Command[:3], []string{"/usr/local/bin/pullgate", "install", "--host-root=/host"}))
	mounts := map[string]string{}
	for _, m := range install.VolumeMounts {
		mounts[m.Name] = m.MountPath
	}
	check("host root at /host", mounts["host"] == "/host")
	check("--config points into the config volume", slices.Contains(install.Command, "--config="+mounts["config"]+"/config.yaml"))
	check("--keys is the keys volume", slices.Contains(install.Command, "--keys="+mounts["keys"]))

	// The policy is valid, and lets pullgate's own image and the pause image through first.
	// Its keys come from the Secret, installed in /etc/pullgate/keys.
	keys := t.TempDir()
	for name, data := range objs["Secret/"+volumes["keys"].Secret.SecretName].(*corev1.Secret).StringData {
		if err := os.WriteFile(filepath.Join(keys, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cm := objs["ConfigMap/pullgate-config"].(*corev1.ConfigMap)
	c, err := config.Parse([]byte(strings.ReplaceAll(cm.Data["config.yaml"], "/etc/pullgate/keys/", keys+"/")))
	if err == nil {
		err = c.Validate()
	}
	if err != nil {
		t.Fatalf("ConfigMap config.yaml: %v", err)
	}
	// The privileged installer image is checked like any other, with a key from the Secret,
	// and pinned by digest; the pause image is let through.
	pause := spec.Containers[0].Image
	first := c.Policies[0]
	check("first policy enforces a signature on the installer image", first.Mode == verify.Mode("enforce") &&
		slices.Equal(first.Images, []string{install.Image}) && len(first.Authorities) > 0)
	for _, a := range first.Authorities {
		check("installer image authority "+a.Name+" uses a key of the Secret", a.Key != nil && strings.HasPrefix(a.Key.File, keys+"/"))
	}
	second := c.Policies[1]
	check("second policy skips the pause image", second.Mode == verify.Mode("skip") &&
		slices.Contains(second.Images, pause[:strings.LastIndex(pause, ":")]))
	k := readKustomization(t, "daemonset")
	pinned := false
	for _, img := range k.Images {
		if img.Name == install.Image {
			pinned = strings.HasPrefix(img.Digest, "sha256:") && len(img.Digest) == len("sha256:")+64 && img.NewTag == ""
		}
	}
	check("kustomization pins the installer image by digest", pinned)
}

func labelsMatch(selector, labels map[string]string) bool {
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// The uninstall overlay reuses the DaemonSet and only changes what the init container runs.
func TestUninstallOverlay(t *testing.T) {
	t.Parallel()
	k := readKustomization(t, "daemonset-uninstall")
	if !slices.Equal(k.Resources, []string{"../daemonset"}) || len(k.Patches) != 1 {
		t.Fatalf("uninstall kustomization: resources %v, patches %v", k.Resources, k.Patches)
	}
	var patch appsv1.DaemonSet
	strict(t, filepath.Join("daemonset-uninstall", k.Patches[0].Path), &patch)
	objs, _ := manifests(t)
	ds := objs["DaemonSet/pullgate-installer"].(*appsv1.DaemonSet)
	if patch.Name != ds.Name || patch.Namespace != ds.Namespace {
		t.Errorf("patch targets %s/%s, want %s/%s", patch.Namespace, patch.Name, ds.Namespace, ds.Name)
	}
	ics := patch.Spec.Template.Spec.InitContainers
	if len(ics) != 1 || ics[0].Name != ds.Spec.Template.Spec.InitContainers[0].Name ||
		!slices.Equal(ics[0].Command, []string{"/usr/local/bin/pullgate", "uninstall", "--host-root=/host"}) {
		t.Errorf("patch init containers = %+v", ics)
	}
}
