package test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"sigs.k8s.io/yaml"

	"github.com/pullgate/pullgate/test/harness"
)

const rulesFile = "../systemd/monitoring/pullgate.rules.yaml"

type alertRule struct {
	Alert       string            `json:"alert"`
	Expr        string            `json:"expr"`
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
}

// alertInputs says, for each alert, the series that make it fire and the ones that do not:
// metric, its values for promtool when firing and when healthy, and whether the alert sums by
// instance (its labels are then the instance alone).
var alertInputs = map[string]struct {
	metric          string
	firing, healthy string
	byInstance      bool
}{
	"PullgateDown":                 {"up", "0x30", "1x30", false},
	"PullgateNotReady":             {"pullgate_upstream_up", "0x30", "1x30", false},
	"PullgateClusterPolicyBehind":  {"pullgate_cluster_policy_generation", "1x30", "2x30", false},
	"PullgateClusterPolicyRefused": {"pullgate_cluster_policy_refused", "1x30", "0x30", false},
	"PullgateAPIServerUnreachable": {"pullgate_cluster_api_contact_age_seconds", "900x30", "30x30", false},
	"PullgateDenialSpike":          {"pullgate_pull_decisions_total", "0+60x30", "0+1x30", true},
	"PullgateStateUnusable":        {"pullgate_state_usable", "0x30", "1x30", false},
	"PullgateRegistryUnavailable":  {"pullgate_registry_unavailable_total", "0+5x30", "0x30", true},
}

// checkAlertRules tests the shipped alerting rules with promtool, on series named and labelled
// as a real pullgate's scrape (metrics, its /metrics text) has them: every metric a rule reads
// must be there, every alert fires on the series that should fire it and stays quiet otherwise.
func checkAlertRules(t *testing.T, metrics string) {
	t.Helper()
	promtool := os.Getenv("PULLGATE_PROMTOOL")
	if fi, err := os.Stat(promtool); promtool == "" || err != nil || fi.IsDir() {
		harness.Missing(t, "promtool not found: `make e2e` builds it into bin/ and sets PULLGATE_PROMTOOL")
	}
	b, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Groups []struct {
			Rules []alertRule `json:"rules"`
		} `json:"groups"`
	}
	if err := yaml.Unmarshal(b, &file); err != nil {
		t.Fatal(err)
	}
	var rules []alertRule
	for _, g := range file.Groups {
		rules = append(rules, g.Rules...)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(metrics))
	if err != nil {
		t.Fatalf("pullgate's /metrics: %v", err)
	}
	for _, r := range rules {
		for _, m := range regexp.MustCompile(`pullgate_[a-z_]+`).FindAllString(r.Expr, -1) {
			if _, ok := families[m]; !ok {
				t.Errorf("alert %s reads %s, which pullgate does not export", r.Alert, m)
			}
		}
	}

	const job, node, other = "pullgate", "node-a:9750", "node-b:9750"
	// series returns metric's first sample's labels as pullgate exports them, as scraped.
	series := func(metric, instance, want string) (string, map[string]string) {
		labels := map[string]string{"job": job, "instance": instance}
		if f, ok := families[metric]; ok {
			for _, m := range f.GetMetric() {
				l := map[string]string{}
				for _, p := range m.GetLabel() {
					l[p.GetName()] = p.GetValue()
				}
				if want == "" || strings.Contains(fmt.Sprint(l), want) {
					for k, v := range l {
						labels[k] = v
					}
					break
				}
			}
		} else if metric != "up" {
			t.Fatalf("pullgate exports no %s", metric)
		}
		keys := make([]string, 0, len(labels))
		for k := range labels {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		var parts []string
		for _, k := range keys {
			parts = append(parts, fmt.Sprintf("%s=%q", k, labels[k]))
		}
		return metric + "{" + strings.Join(parts, ",") + "}", labels
	}
	filter := map[string]string{"pullgate_pull_decisions_total": "verdict:denied", "pullgate_cluster_policy_generation": "object:apps", "pullgate_cluster_policy_refused": "object:apps"}

	var tests strings.Builder
	fmt.Fprintf(&tests, "rule_files: [%q]\nevaluation_interval: 1m\ntests:\n", mustAbs(t, rulesFile))
	for _, firing := range []bool{true, false} {
		fmt.Fprintf(&tests, "- name: firing=%v\n  interval: 1m\n  input_series:\n", firing)
		var checks strings.Builder
		for _, r := range rules {
			in, ok := alertInputs[r.Alert]
			if !ok {
				t.Fatalf("alert %s has no test inputs here", r.Alert)
			}
			values := in.healthy
			if firing {
				values = in.firing
			}
			name, labels := series(in.metric, node, filter[in.metric])
			fmt.Fprintf(&tests, "  - series: '%s'\n    values: '%s'\n", name, values)
			if r.Alert == "PullgateClusterPolicyBehind" {
				// Another node already applies a later generation.
				otherName, _ := series(in.metric, other, filter[in.metric])
				fmt.Fprintf(&tests, "  - series: '%s'\n    values: '2x30'\n", otherName)
			}
			fmt.Fprintf(&checks, "  - eval_time: 20m\n    alertname: %s\n    exp_alerts:\n", r.Alert)
			if !firing {
				checks.WriteString("      []\n")
				continue
			}
			exp := map[string]string{}
			if in.byInstance {
				exp["instance"] = node
			} else {
				for k, v := range labels {
					exp[k] = v
				}
				delete(exp, "__name__")
			}
			for k, v := range r.Labels {
				exp[k] = v
			}
			checks.WriteString("      - exp_labels:\n")
			for k, v := range exp {
				fmt.Fprintf(&checks, "          %s: %q\n", k, v)
			}
			checks.WriteString("        exp_annotations:\n")
			for k, v := range r.Annotations {
				for lk, lv := range exp {
					v = strings.ReplaceAll(v, "{{ $labels."+lk+" }}", lv)
				}
				fmt.Fprintf(&checks, "          %s: %q\n", k, v)
			}
		}
		tests.WriteString("  alert_rule_test:\n" + checks.String())
	}
	testFile := filepath.Join(t.TempDir(), "pullgate.rules.test.yaml")
	if err := os.WriteFile(testFile, []byte(tests.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"check", "rules", rulesFile}, {"test", "rules", testFile}} {
		if out, err := exec.Command(promtool, args...).CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s\n%s", strings.Join(args, " "), err, out, tests.String())
		}
	}
}

func mustAbs(t *testing.T, p string) string {
	t.Helper()
	a, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return a
}
