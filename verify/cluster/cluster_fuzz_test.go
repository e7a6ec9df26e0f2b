package cluster

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/pullgate/pullgate/verify"
)

// FuzzCheck: a NodeImagePolicy from the API server, whatever its spec, is accepted or refused
// with a reason, never a panic; an accepted one compiles with the node's file.
func FuzzCheck(f *testing.F) {
	f.Add([]byte(`{"spec":{"rules":[{"name":"a","images":["x.io/**"],"mode":"skip"}]}}`))
	f.Add([]byte(`{"spec":{"order":-3,"defaultAction":"deny","nodeSelector":{"matchExpressions":[{"key":"pool","operator":"In","values":["a"]}]},"rules":[{"name":"a","images":["*/b/**"],"namespaces":["prod-*"],"mode":"enforce","authorities":[{"name":"k","key":{"data":"x"}}]}]}}`))
	f.Add([]byte(`{"spec":{"rules":[{"name":"a","images":["x.io/**"],"mode":"enforce","authorities":[{"name":"k","keyless":{"issuer":"https://i","subjectRegExp":"(("}}],"attestations":[{"name":"v","predicateType":"t","condition":"predicate.x >"}]}]}}`))
	s := verify.Settings{Timeout: time.Second, MaxSignatures: 1, MaxBytes: 1}
	f.Fuzz(func(t *testing.T, b []byte) {
		var p NodeImagePolicy
		if json.Unmarshal(b, &p) != nil {
			return
		}
		if err := Check(&p, s); err != nil {
			return
		}
		rules, action := Effective(nil, verify.Allow, []Applied{{Name: "o", Spec: p.Spec}})
		if _, err := verify.CompilePolicy(rules, action, s); err != nil {
			t.Fatalf("accepted alone, refused with the file: %v", err)
		}
	})
}
