package proxy_test

import (
	"testing"

	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/pullgate/pullgate/proxy"
	"github.com/pullgate/pullgate/verify"
)

func TestAudit(t *testing.T) {
	t.Parallel()
	imported := &runtimeapi.Image{Id: "sha256:" + "d1", RepoTags: []string{"registry.example.com/tools/imported:v2"}}
	e := start(t, setup{
		runtime: &fakeRuntime{replies: map[string]proto.Message{"ListImages": &runtimeapi.ListImagesResponse{Images: []*runtimeapi.Image{storedImage().Image, imported}}}},
		verifier: &fakeVerifier{known: func(r verify.Request) (verify.Decision, error) {
			switch r.Image.Name() {
			case storeRepo:
				return verify.Decision{Allowed: true, Rule: "apps", Mode: verify.Enforce, Stored: true}, nil
			case "registry.example.com/mirror/web":
				return verify.Decision{Allowed: true, Rule: "mirror", Mode: verify.Warn, Reason: "keya: no cosign signature found"}, nil
			}
			return verify.Decision{Rule: "tools", Mode: verify.Enforce, Unknown: true, Reason: "never verified"}, nil
		}},
	})
	entries, err := proxy.Audit(t.Context(), e.imageClient(), e.verifier, "")
	if err != nil {
		t.Fatal(err)
	}
	want := []proxy.AuditEntry{
		{Image: "registry.example.com/apps/web@" + tagDigest.String(), Tags: []string{storeRepo + ":v1"}, ID: imageID, Verdict: "allowed", Rule: "apps", Mode: "enforce"},
		{Image: "registry.example.com/mirror/web@" + pinDigest.String(), ID: imageID, Verdict: "warned", Rule: "mirror", Mode: "warn", Reason: "keya: no cosign signature found"},
		{Image: "registry.example.com/tools/imported:v2", Tags: []string{"registry.example.com/tools/imported:v2"}, ID: "sha256:d1", Verdict: "unknown", Rule: "tools", Mode: "enforce", Reason: "never verified"},
	}
	if len(entries) != len(want) {
		t.Fatalf("Audit = %+v, want %+v", entries, want)
	}
	for i := range want {
		if got := entries[i]; got.Image != want[i].Image || got.ID != want[i].ID || got.Verdict != want[i].Verdict || got.Rule != want[i].Rule ||
			got.Mode != want[i].Mode || got.Reason != want[i].Reason || len(got.Tags) != len(want[i].Tags) {
			t.Errorf("entry %d = %+v, want %+v", i, got, want[i])
		}
	}
	for _, r := range e.verifier.seenKnown() {
		if !r.AllNamespaces {
			t.Errorf("audit without a namespace asked for namespace %q", r.Namespace)
		}
	}
}
