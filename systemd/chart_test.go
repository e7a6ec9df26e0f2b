package systemd

import (
	"bytes"
	"os"
	"testing"
)

// The chart ships the very manifests of systemd/: its copies must not drift.
func TestChartCopiesManifests(t *testing.T) {
	t.Parallel()
	for copy, source := range map[string]string{
		"../charts/pullgate/crds/nodeimagepolicies.yaml": "cluster/nodeimagepolicies.yaml",
		"../charts/pullgate/files/rbac.yaml":             "cluster/rbac.yaml",
		"../charts/pullgate/files/node-reports.yaml":     "cluster/node-reports.yaml",
		"../charts/pullgate/files/pullgate.rules.yaml":   "monitoring/pullgate.rules.yaml",
	} {
		a, err := os.ReadFile(copy)
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(source)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			t.Errorf("%s differs from systemd/%s: copy it again", copy, source)
		}
	}
}
