package verify

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	mutateidx "github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"
	"github.com/sigstore/cosign/v2/pkg/cosign"
	"github.com/sigstore/cosign/v2/pkg/oci/mutate"
	ociremote "github.com/sigstore/cosign/v2/pkg/oci/remote"
	"github.com/sigstore/cosign/v2/pkg/oci/static"
	"github.com/sigstore/sigstore/pkg/signature"
	sigpayload "github.com/sigstore/sigstore/pkg/signature/payload"

	"github.com/pullgate/pullgate/verify/auth"
	"github.com/pullgate/pullgate/verify/hosts"
)

// testRegistry is go-containerregistry's registry on loopback, plain HTTP.
func testRegistry(t *testing.T) string {
	t.Helper()
	return testRegistryWith(t, func(h http.Handler) http.Handler { return h })
}

// testRegistryWith is testRegistry with its handler wrapped, to count or fail requests.
func testRegistryWith(t *testing.T, wrap func(http.Handler) http.Handler) string {
	t.Helper()
	srv := httptest.NewServer(wrap(registry.New(registry.Logger(log.New(io.Discard, "", 0)))))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func pushImage(t *testing.T, ref string) name.Digest {
	t.Helper()
	img, err := random.Image(256, 1)
	if err != nil {
		t.Fatal(err)
	}
	tag, err := name.NewTag(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(tag, img); err != nil {
		t.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return tag.Context().Digest(d.String())
}

// testKey is a key pair and its public key as a PEM file.
type testKey struct {
	signer  signature.SignerVerifier
	pem     []byte
	pemFile string
}

// newTestKey is an ECDSA P-256 key, what `cosign generate-key-pair` makes.
func newTestKey(t *testing.T) testKey {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return loadTestKey(t, priv)
}

// loadTestKey loads priv the way `cosign import-key-pair` and `cosign sign --key` do, so
// that signatures use cosign's default algorithm for the key type (SHA-384 for P-384,
// Ed25519ph for Ed25519).
func loadTestKey(t *testing.T, priv crypto.Signer) testKey {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "import.key")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	pass := func(bool) ([]byte, error) { return []byte("test"), nil }
	kb, err := cosign.ImportKeyPair(keyFile, pass)
	if err != nil {
		t.Fatal(err)
	}
	sv, err := cosign.LoadPrivateKey(kb.PrivateBytes, []byte("test"), nil)
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(dir, "key.pub")
	if err := os.WriteFile(f, kb.PublicBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	return testKey{signer: sv, pem: kb.PublicBytes, pemFile: f}
}

// sign attaches a cosign simple-signing signature for target to the image at d, as
// `cosign sign --key` does (without a transparency-log upload).
func (k testKey) sign(t *testing.T, d name.Digest, target name.Digest, opts ...static.Option) {
	t.Helper()
	k.signPayload(t, d, cosignPayload(t, target), opts...)
}

// signPayload signs payload with k and attaches it to the image at d under cosign's .sig tag.
func (k testKey) signPayload(t *testing.T, d name.Digest, payload []byte, opts ...static.Option) {
	t.Helper()
	attachSignature(t, d, payload, signRaw(t, k.signer, payload), opts...)
}

func signRaw(t *testing.T, s signature.Signer, payload []byte) []byte {
	t.Helper()
	raw, err := s.SignMessage(bytes.NewReader(payload))
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func cosignPayload(t *testing.T, target name.Digest) []byte {
	t.Helper()
	pl, err := sigpayload.Cosign{Image: target}.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	return pl
}

func attachSignature(t *testing.T, d name.Digest, payload, raw []byte, opts ...static.Option) {
	t.Helper()
	sig, err := static.NewSignature(payload, base64.StdEncoding.EncodeToString(raw), opts...)
	if err != nil {
		t.Fatal(err)
	}
	se, err := ociremote.SignedEntity(d)
	if err != nil {
		t.Fatal(err)
	}
	se, err = mutate.AttachSignatureToEntity(se, sig)
	if err != nil {
		t.Fatal(err)
	}
	if err := ociremote.WriteSignatures(d.Repository, se); err != nil {
		t.Fatal(err)
	}
}

// verifyOne checks d under v with no namespace and fails the test on an error.
func verifyOne(t *testing.T, v *Verifier, d name.Digest) Decision {
	t.Helper()
	dec, err := v.Verify(context.Background(), pullRequest(t, d, ""))
	if err != nil {
		t.Fatalf("Verify(%s): %v", d, err)
	}
	return dec
}

// wantDecision fails unless dec has the verdict and its reason contains every part of want.
func wantDecision(t *testing.T, dec Decision, allowed bool, want ...string) {
	t.Helper()
	if dec.Allowed != allowed {
		t.Fatalf("decision %+v: allowed=%v, want %v", dec, dec.Allowed, allowed)
	}
	for _, w := range want {
		if !strings.Contains(dec.Reason, w) {
			t.Fatalf("decision %+v: reason does not contain %q", dec, w)
		}
	}
}

func keyRule(name string, images []string, mode Mode, keys ...testKey) RuleSpec {
	r := RuleSpec{Name: name, Images: images, Mode: mode}
	for i, k := range keys {
		r.Authorities = append(r.Authorities, AuthoritySpec{Name: "key" + string(rune('a'+i)), Key: &KeySpec{File: k.pemFile}, IgnoreTransparencyLog: true})
	}
	return r
}

var testSettings = Settings{Timeout: 10 * time.Second, CacheTTL: time.Hour, MaxSignatures: 8, MaxBytes: 1 << 20}

func newTestVerifier(t *testing.T, rules ...RuleSpec) *Verifier {
	t.Helper()
	p, err := CompilePolicy(rules, Deny, testSettings)
	if err != nil {
		t.Fatal(err)
	}
	return NewVerifier(p, NewResolver(hosts.New("")))
}

func pullRequest(t *testing.T, d name.Digest, ns string) Request {
	t.Helper()
	img, err := ParseImage(d.String())
	if err != nil {
		t.Fatal(err)
	}
	return Request{Image: img, Digest: digest.Digest(d.DigestStr()), Namespace: ns, Credential: auth.Credential{}}
}

func TestVerifyKeySignature(t *testing.T) {
	t.Parallel()
	host := testRegistry(t)
	release, other := newTestKey(t), newTestKey(t)
	signed := pushImage(t, host+"/apps/signed:v1")
	release.sign(t, signed, signed)
	unsigned := pushImage(t, host+"/apps/unsigned:v1")
	otherKey := pushImage(t, host+"/apps/other:v1")
	other.sign(t, otherKey, otherKey)
	wrongDigest := pushImage(t, host+"/apps/wrong:v1")
	release.sign(t, wrongDigest, signed) // a valid signature, for another digest

	v := newTestVerifier(t,
		keyRule("apps", []string{host + "/apps/**"}, Enforce, release),
	)
	tests := []struct {
		name    string
		d       name.Digest
		allowed bool
		reason  string
	}{
		{name: "signed", d: signed, allowed: true},
		{name: "unsigned", d: unsigned, reason: "keya: no cosign signature found"},
		{name: "wrong key", d: otherKey, reason: "none of 1 signature(s) verified with this key"},
		{name: "signature for another digest", d: wrongDigest, reason: "invalid or missing digest in claim"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d, err := v.Verify(context.Background(), pullRequest(t, tc.d, ""))
			if err != nil {
				t.Fatal(err)
			}
			if d.Allowed != tc.allowed || d.Rule != "apps" || !strings.Contains(d.Reason, tc.reason) {
				t.Fatalf("Verify = %+v, want allowed=%v reason containing %q", d, tc.allowed, tc.reason)
			}
		})
	}
}

func TestVerifyModesAndCache(t *testing.T) {
	t.Parallel()
	host := testRegistry(t)
	key := newTestKey(t)
	unsigned := pushImage(t, host+"/team/app:v1")
	v := newTestVerifier(t,
		keyRule("prod", []string{host + "/team/**"}, Enforce, key),
	)
	v.SetPolicy(mustPolicy(t, RuleSpec{Name: "prod", Images: []string{host + "/team/**"}, Namespaces: []string{"prod-*"}, Mode: Enforce,
		Authorities: []AuthoritySpec{{Name: "k", Key: &KeySpec{File: key.pemFile}, IgnoreTransparencyLog: true}}},
		keyRule("observe", []string{host + "/team/**"}, Warn, key)))

	d, err := v.Verify(context.Background(), pullRequest(t, unsigned, "prod-eu"))
	if err != nil || d.Allowed || d.Rule != "prod" {
		t.Fatalf("prod namespace: %+v, %v; want denied by prod", d, err)
	}
	d, err = v.Verify(context.Background(), pullRequest(t, unsigned, "dev"))
	if err != nil || !d.Allowed || d.Rule != "observe" || d.Reason == "" {
		t.Fatalf("dev namespace: %+v, %v; want allowed by observe (warn) with a reason", d, err)
	}
	d, err = v.Verify(context.Background(), pullRequest(t, unsigned, ""))
	if err != nil || d.Rule != "observe" {
		t.Fatalf("no namespace: %+v, %v; want the rule without namespaces", d, err)
	}
	if !d.Cached {
		t.Errorf("second check of the same digest under the same rule was not cached")
	}
	key.sign(t, unsigned, unsigned)
	// A denial is remembered only briefly: once it expires, the new signature counts.
	v.now = func() time.Time { return time.Now().Add(failureTTL + time.Second) }
	d, err = v.Verify(context.Background(), pullRequest(t, unsigned, "prod-eu"))
	if err != nil || !d.Allowed || d.Cached {
		t.Fatalf("after signing: %+v, %v; want allowed, verified afresh", d, err)
	}
}

func mustPolicy(t *testing.T, rules ...RuleSpec) *Policy {
	t.Helper()
	p, err := CompilePolicy(rules, Deny, testSettings)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// pushIndex pushes an index of two platforms, this node's and another, and returns the index
// and the digest of this node's manifest.
func pushIndex(t *testing.T, ref string, extra ...v1.Platform) (index, platform name.Digest) {
	t.Helper()
	tag, err := name.NewTag(ref)
	if err != nil {
		t.Fatal(err)
	}
	var adds []mutateidx.IndexAddendum
	var mine v1.Hash
	for i, p := range append([]v1.Platform{{OS: "linux", Architecture: runtime.GOARCH}, {OS: "linux", Architecture: "s390x"}}, extra...) {
		img, err := random.Image(128, 1)
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			if mine, err = img.Digest(); err != nil {
				t.Fatal(err)
			}
		}
		adds = append(adds, mutateidx.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &p}})
	}
	idx := mutateidx.AppendManifests(empty.Index, adds...)
	if err := remote.WriteIndex(tag, idx); err != nil {
		t.Fatal(err)
	}
	d, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return tag.Context().Digest(d.String()), tag.Context().Digest(mine.String())
}

func TestVerifySignedLevel(t *testing.T) {
	t.Parallel()
	host := testRegistry(t)
	key := newTestKey(t)
	index, platform := pushIndex(t, host+"/multi/app:v1")
	key.sign(t, platform, platform) // only this node's platform manifest is signed
	signedIndex, _ := pushIndex(t, host+"/multi/signed:v1")
	// A second entry for this node's architecture (another variant): which one containerd
	// unpacks depends on the node's CPU, so a signature on one of them settles nothing.
	ambiguous, first := pushIndex(t, host+"/multi/ambiguous:v1", v1.Platform{OS: "linux", Architecture: runtime.GOARCH, Variant: "v2"})
	key.sign(t, first, first)
	key.sign(t, signedIndex, signedIndex)
	// The platform manifest is signed and attested, as `cosign sign/attest` of that manifest
	// does; the index is neither.
	attested, attestedPlatform := pushIndex(t, host+"/multi/attested:v1")
	key.sign(t, attestedPlatform, attestedPlatform)
	key.attest(t, attestedPlatform, "https://spdx.dev/Document", map[string]any{})

	rule := func(level string) RuleSpec {
		r := keyRule("multi", []string{host + "/multi/**"}, Enforce, key)
		r.SignedLevel = level
		return r
	}
	withSBOM := func(level string) RuleSpec {
		r := rule(level)
		r.Attestations = []AttestationSpec{{Name: "sbom", PredicateType: "https://spdx.dev/Document"}}
		return r
	}
	tests := []struct {
		name, level string
		// rule, when set, replaces rule(level).
		rule    func(string) RuleSpec
		d       name.Digest
		allowed bool
		reason  string
	}{
		{name: "platform level, attestations on the platform manifest", level: SignedPlatform, rule: withSBOM, d: attested, allowed: true},
		{name: "platform level, attestations looked for on the platform manifest", level: SignedPlatform, rule: withSBOM, d: index, reason: "for platform linux/" + runtime.GOARCH + ", attestation sbom: no attestation found for " + platform.DigestStr()},
		{name: "index level, platform signed", level: SignedIndex, d: index},
		{name: "platform level, platform signed", level: SignedPlatform, d: index, allowed: true},
		{name: "index level, index signed", level: SignedIndex, d: signedIndex, allowed: true},
		{name: "platform level, index signed", level: SignedPlatform, d: signedIndex, allowed: true},
		{name: "platform level, ambiguous index", level: SignedPlatform, d: ambiguous, reason: "manifests containerd could choose"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := rule
			if tc.rule != nil {
				r = tc.rule
			}
			v := newTestVerifier(t, r(tc.level))
			d, err := v.Verify(context.Background(), pullRequest(t, tc.d, ""))
			if err != nil {
				t.Fatal(err)
			}
			if d.Allowed != tc.allowed || !strings.Contains(d.Reason, tc.reason) {
				t.Fatalf("Verify = %+v, want allowed=%v reason containing %q", d, tc.allowed, tc.reason)
			}
		})
	}
}

// copyManifest copies the image at src to dst, as `crane copy` does.
func copyManifest(t *testing.T, src, dst name.Reference) {
	t.Helper()
	img, err := remote.Image(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(dst, img); err != nil {
		t.Fatal(err)
	}
}
