package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
)

// manifestResources are the resources of the kinds pullgate's manifests hold.
var manifestResources = map[string]schema.GroupVersionResource{
	"CustomResourceDefinition":         {Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"},
	"ClusterRole":                      {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterroles"},
	"ClusterRoleBinding":               {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterrolebindings"},
	"Namespace":                        {Version: "v1", Resource: "namespaces"},
	"ServiceAccount":                   {Version: "v1", Resource: "serviceaccounts"},
	"ConfigMap":                        {Version: "v1", Resource: "configmaps"},
	"Secret":                           {Version: "v1", Resource: "secrets"},
	"DaemonSet":                        {Group: "apps", Version: "v1", Resource: "daemonsets"},
	"NodeImagePolicy":                  {Group: "pullgate.io", Version: "v1alpha1", Resource: "nodeimagepolicies"},
	"ValidatingAdmissionPolicy":        {Group: "admissionregistration.k8s.io", Version: "v1", Resource: "validatingadmissionpolicies"},
	"ValidatingAdmissionPolicyBinding": {Group: "admissionregistration.k8s.io", Version: "v1", Resource: "validatingadmissionpolicybindings"},
}

// CreateManifests creates every object of the YAML files, in order, as `kubectl create -f`
// does.
func CreateManifests(t T, dyn dynamic.Interface, files ...string) {
	t.Helper()
	for _, f := range files {
		if err := createManifest(dyn, f); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
	}
}

func createManifest(dyn dynamic.Interface, file string) error {
	b, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(string(b)), 4096)
	for {
		var u unstructured.Unstructured
		if err := dec.Decode(&u.Object); errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			return err
		}
		if len(u.Object) == 0 {
			continue
		}
		gvr, ok := manifestResources[u.GetKind()]
		if !ok {
			return fmt.Errorf("no resource known for kind %s", u.GetKind())
		}
		var r dynamic.ResourceInterface = dyn.Resource(gvr)
		if ns := u.GetNamespace(); ns != "" {
			r = dyn.Resource(gvr).Namespace(ns)
		}
		if _, err := r.Create(context.Background(), &u, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create %s %s: %w", u.GetKind(), u.GetName(), err)
		}
	}
}
