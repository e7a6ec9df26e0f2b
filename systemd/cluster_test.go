package systemd

import (
	"os"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/pullgate/pullgate/verify"
	"github.com/pullgate/pullgate/verify/cluster"
)

// The NodeImagePolicy the docs show is one a node accepts.
func TestNodeImagePolicyExample(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("../docs/examples/nodeimagepolicy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var p cluster.NodeImagePolicy
	if err := yaml.UnmarshalStrict(b, &p); err != nil {
		t.Fatalf("docs/examples/nodeimagepolicy.yaml: %v", err)
	}
	if p.Kind != cluster.Kind || p.APIVersion != cluster.Resource.GroupVersion().String() {
		t.Errorf("kind %s %s, want %s %s", p.APIVersion, p.Kind, cluster.Resource.GroupVersion(), cluster.Kind)
	}
	if err := cluster.Check(&p, verify.Settings{Timeout: time.Second, MaxSignatures: 1, MaxBytes: 1}); err != nil {
		t.Errorf("a node refuses the example: %v", err)
	}
}
