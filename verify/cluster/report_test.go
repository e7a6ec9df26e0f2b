package cluster

import (
	"fmt"
	"strconv"
	"testing"
)

// A report counts every image in its summary, lists the ones that need attention first, and
// stays bounded, saying how many results it left out.
func TestReport(t *testing.T) {
	t.Parallel()
	var entries []ReportEntry
	for i := range MaxReportResults + 10 {
		entries = append(entries, ReportEntry{Image: fmt.Sprintf("x.io/app-%d@sha256:a", i), Verdict: "allowed", Rule: "apps"})
	}
	entries = append(entries,
		ReportEntry{Image: "x.io/bad@sha256:b", Verdict: "denied", Rule: "apps", Reason: "no signature"},
		ReportEntry{Image: "x.io/soon@sha256:c", Verdict: "warned", Rule: "apps", Reason: "enforce would deny it"},
		ReportEntry{Image: "x.io/new@sha256:d", Verdict: "unknown", Rule: "apps"})
	r := Report("node-1", entries)
	if r.Name != "pullgate-node-1" || r.Scope.Kind != "Node" || r.Scope.Name != "node-1" || r.Source != "pullgate" {
		t.Errorf("report %s scoped to %s %s from %s", r.Name, r.Scope.Kind, r.Scope.Name, r.Source)
	}
	if s := r.Summary; s.Pass != MaxReportResults+10 || s.Fail != 1 || s.Warn != 1 || s.Skip != 1 {
		t.Errorf("summary %+v", s)
	}
	if len(r.Results) != MaxReportResults {
		t.Fatalf("%d results, want the bound %d", len(r.Results), MaxReportResults)
	}
	for i, want := range []string{"fail", "warn", "skip", "pass"} {
		if got := string(r.Results[i].Result); got != want {
			t.Errorf("result %d is %s, want %s: what needs attention first", i, got, want)
		}
	}
	if r.Results[0].Properties["image"] != "x.io/bad@sha256:b" || r.Results[0].Description != "no signature" || r.Results[0].Policy != "apps" {
		t.Errorf("first result %+v", r.Results[0])
	}
	if got := r.Annotations[OmittedAnnotation]; got != strconv.Itoa(len(entries)-MaxReportResults) {
		t.Errorf("omitted %q, want %d", got, len(entries)-MaxReportResults)
	}
}
