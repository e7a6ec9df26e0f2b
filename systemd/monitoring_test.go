package systemd

import (
	"os"
	"reflect"
	"testing"

	"sigs.k8s.io/yaml"
)

// The PrometheusRule holds the very groups of the plain rule file.
func TestPrometheusRuleMatchesRuleFile(t *testing.T) {
	t.Parallel()
	read := func(path string, v any) {
		t.Helper()
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := yaml.Unmarshal(b, v); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
	}
	var file map[string]any
	var rule struct {
		APIVersion string         `json:"apiVersion"`
		Kind       string         `json:"kind"`
		Spec       map[string]any `json:"spec"`
	}
	read("monitoring/pullgate.rules.yaml", &file)
	read("monitoring/prometheusrule.yaml", &rule)
	if rule.APIVersion != "monitoring.coreos.com/v1" || rule.Kind != "PrometheusRule" {
		t.Errorf("prometheusrule.yaml is %s %s", rule.APIVersion, rule.Kind)
	}
	if !reflect.DeepEqual(file, rule.Spec) {
		t.Errorf("prometheusrule.yaml's spec differs from pullgate.rules.yaml:\n%v\n%v", rule.Spec, file)
	}
}
