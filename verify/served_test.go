package verify

import (
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/pullgate/pullgate/verify/auth"
	"github.com/pullgate/pullgate/verify/hosts"
)

// What the registry served survives a restart, and tells credentials apart by every field.
func TestServedTo(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	img, public := mustImage(t, "registry.example.com/team/app:v1"), mustImage(t, "registry.example.com/team/public:v1")
	dg := digest.Digest("sha256:" + "1111111111111111111111111111111111111111111111111111111111111111")
	pod := auth.Credential{Username: "pod", Password: "secret"}
	v := NewVerifier(mustPolicy(t), NewResolver(hosts.New("")), WithState(openState(t, dir)))
	v.Served(img, dg, pod)
	v.Served(public, dg, auth.Credential{})

	v = NewVerifier(mustPolicy(t), NewResolver(hosts.New("")), WithState(openState(t, dir)))
	for _, tc := range []struct {
		img   Image
		creds []auth.Credential
		want  bool
	}{
		{img, []auth.Credential{pod}, true},
		{img, []auth.Credential{{Username: "other"}, pod}, true},
		{img, []auth.Credential{{Username: "pod", Password: "guess"}}, false},
		{img, []auth.Credential{{Username: "pod", Password: "secret", RegistryToken: "t"}}, false},
		{img, []auth.Credential{{}}, false},
		{public, []auth.Credential{{Username: "anyone", Password: "x"}}, true},
	} {
		if got := v.ServedTo(tc.img, dg, tc.creds); got != tc.want {
			t.Errorf("ServedTo(%s, %v) = %v, want %v", tc.img, tc.creds, got, tc.want)
		}
	}
	if NewVerifier(mustPolicy(t), NewResolver(hosts.New(""))).ServedTo(public, dg, nil) {
		t.Error("a verifier without state says the registry served something")
	}
}

func mustImage(t *testing.T, ref string) Image {
	t.Helper()
	img, err := ParseImage(ref)
	if err != nil {
		t.Fatal(err)
	}
	return img
}
