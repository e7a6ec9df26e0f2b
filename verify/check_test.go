package verify

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/opencontainers/go-digest"

	"github.com/pullgate/pullgate/verify/auth"
)

type fakeResolver struct{ refuse map[string]bool }

func (f fakeResolver) Resolve(_ context.Context, _ Image, c auth.Credential) (digest.Digest, error) {
	if f.refuse[c.Username] {
		return "", &transport.Error{StatusCode: http.StatusUnauthorized}
	}
	return "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", nil
}

type fakeDecider struct{ refuse map[string]bool }

func (fakeDecider) DecideByName(Image, string) (Decision, bool) { return Decision{}, false }
func (fakeDecider) Recall(Image) (digest.Digest, bool)          { return "", false }

func (f fakeDecider) Verify(_ context.Context, req Request) (Decision, error) {
	if f.refuse[req.Credential.Username] {
		return Decision{}, &RegistryError{Op: "verify", Image: req.Image, Err: &transport.Error{StatusCode: http.StatusForbidden}}
	}
	return Decision{Allowed: true, Rule: "r"}, nil
}

// A credential the registry refuses, while resolving or while fetching signatures, gives way
// to the next, as kubelet tries its credentials in turn.
func TestCheckTriesCredentialsInOrder(t *testing.T) {
	t.Parallel()
	creds := []auth.Credential{{Username: "stale"}, {Username: "good"}, {}}
	tag, err := ParseImage("registry.example.com/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	pinned := tag.Pinned("sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
	tests := []struct {
		name            string
		img             Image
		resolve, decide map[string]bool
		want            string
		wantErr         bool
	}{
		{name: "tag, stale credential refused by resolve", img: tag, resolve: map[string]bool{"stale": true}, want: "good"},
		{name: "digest, stale credential refused by the signature fetch", img: pinned, decide: map[string]bool{"stale": true}, want: "good"},
		{name: "tag, refused while verifying", img: tag, decide: map[string]bool{"stale": true}, want: "good"},
		{name: "every credential refused", img: pinned, decide: map[string]bool{"stale": true, "good": true, "": true}, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, err := Check(context.Background(), fakeResolver{tc.resolve}, fakeDecider{tc.decide}, tc.img, "", creds)
			if tc.wantErr {
				if err == nil || !Unauthorized(err) {
					t.Fatalf("Check = %+v, %v; want the registry's refusal", c, err)
				}
				return
			}
			if err != nil || c.Credential.Username != tc.want || !c.Decision.Allowed {
				t.Fatalf("Check = %+v, %v; want allowed with credential %q", c, err, tc.want)
			}
		})
	}
}

// countingResolver fails the test if asked: a decision the name settles needs no digest.
type countingResolver struct{ t *testing.T }

func (r countingResolver) Resolve(context.Context, Image, auth.Credential) (digest.Digest, error) {
	r.t.Error("resolved a tag whose image the policy denies by its name alone")
	return "", nil
}

func TestCheckDecidesByNameBeforeResolving(t *testing.T) {
	t.Parallel()
	p := mustPolicy(t, RuleSpec{Name: "apps", Images: []string{"registry.example.com/apps/**"}, Namespaces: []string{"prod"}, Mode: Skip})
	img, err := ParseImage("registry.example.com/apps/web:v1")
	if err != nil {
		t.Fatal(err)
	}
	c, err := Check(t.Context(), countingResolver{t}, NewVerifier(p, nil), img, "dev", []auth.Credential{{Username: "alice", Password: "pw"}})
	if err != nil || c.Decision.Allowed || c.Decision.Rule != DefaultRule || c.Digest != "" {
		t.Fatalf("Check = %+v, %v; want denied by %s before any resolve", c, err, DefaultRule)
	}
	if want := "no policy matches (defaultAction: deny)"; !strings.HasPrefix(c.Decision.Reason, want) {
		t.Errorf("reason %q, want it to start with %q", c.Decision.Reason, want)
	}
}

type errResolver struct{ err error }

func (r errResolver) Resolve(context.Context, Image, auth.Credential) (digest.Digest, error) {
	return "", r.err
}

type recallDecider struct {
	fakeDecider
	d digest.Digest
}

func (r recallDecider) Recall(Image) (digest.Digest, bool) { return r.d, true }

// A tag stands for its last allowed digest only while the registry is unavailable: a definite
// answer (the tag is gone, the credential refused) is the answer.
func TestCheckRecallsOnlyWhileUnavailable(t *testing.T) {
	t.Parallel()
	img, err := ParseImage("registry.example.com/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	const dg = digest.Digest("sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
	for _, tc := range []struct {
		name   string
		err    error
		recall bool
	}{
		{name: "503", err: &RegistryError{Image: img, Unavailable: true, Err: &transport.Error{StatusCode: http.StatusServiceUnavailable}}, recall: true},
		{name: "404", err: &RegistryError{Image: img, Err: &transport.Error{StatusCode: http.StatusNotFound}}},
		{name: "a bound", err: &RegistryError{Image: img, Err: &Denial{"too big"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, err := Check(t.Context(), errResolver{tc.err}, recallDecider{d: dg}, img, "", []auth.Credential{{}})
			if tc.recall && (err != nil || c.Digest != dg || c.Recalled == nil) {
				t.Errorf("Check = %+v, %v; want the recalled digest", c, err)
			}
			if !tc.recall && (err == nil || c.Recalled != nil) {
				t.Errorf("Check = %+v, %v; want the registry's answer", c, err)
			}
		})
	}
}
