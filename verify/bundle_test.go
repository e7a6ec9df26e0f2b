package verify

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/secure-systems-lab/go-securesystemslib/dsse"
	ociremote "github.com/sigstore/cosign/v2/pkg/oci/remote"
	protobundle "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	protocommon "github.com/sigstore/protobuf-specs/gen/pb-go/common/v1"
	protorekor "github.com/sigstore/protobuf-specs/gen/pb-go/rekor/v1"
	"github.com/sigstore/rekor/pkg/pki"
	"github.com/sigstore/rekor/pkg/types"
	"github.com/sigstore/rekor/pkg/types/intoto"
	"github.com/sigstore/sigstore-go/pkg/sign"
	"github.com/sigstore/sigstore-go/pkg/testing/ca"
	"github.com/sigstore/sigstore-go/pkg/tlog"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
	"google.golang.org/protobuf/encoding/protojson"
)

// referrersRegistry is go-containerregistry's registry with the OCI referrers API, wrapped.
func referrersRegistry(t *testing.T, wrap func(http.Handler) http.Handler) string {
	t.Helper()
	srv := httptest.NewServer(wrap(registry.New(registry.WithReferrersSupport(true), registry.Logger(log.New(io.Discard, "", 0)))))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func noWrap(h http.Handler) http.Handler { return h }

// inTotoJSON is an in-toto statement about subject, as cosign v3 writes it: the subject has a
// digest and no name; for an image signature the predicate type is cosign's and the predicate
// is empty.
func inTotoJSON(t *testing.T, subject name.Digest, predicateType string, predicate any) []byte {
	t.Helper()
	alg, hexDigest, _ := strings.Cut(subject.DigestStr(), ":")
	b, err := json.Marshal(map[string]any{
		"_type":         "https://in-toto.io/Statement/v1",
		"subject":       []map[string]any{{"digest": map[string]string{alg: hexDigest}}},
		"predicateType": predicateType,
		"predicate":     predicate,
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func signStatement(t *testing.T, subject name.Digest, kp sign.Keypair, opts sign.BundleOptions) []byte {
	t.Helper()
	return signAttestation(t, subject, cosignSignPredicate, map[string]any{}, kp, opts)
}

func signAttestation(t *testing.T, subject name.Digest, predicateType string, predicate any, kp sign.Keypair, opts sign.BundleOptions) []byte {
	t.Helper()
	return signBundle(t, &sign.DSSEData{Data: inTotoJSON(t, subject, predicateType, predicate), PayloadType: "application/vnd.in-toto+json"}, kp, opts)
}

// signBundle signs content with sigstore-go and returns the bundle's JSON.
func signBundle(t *testing.T, content sign.Content, kp sign.Keypair, opts sign.BundleOptions) []byte {
	t.Helper()
	b, err := sign.Bundle(content, kp, opts)
	if err != nil {
		t.Fatal(err)
	}
	js, err := protojson.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// attachBundle attaches a bundle to the image at d as cosign v3 does: an OCI manifest with
// artifactType application/vnd.dev.sigstore.bundle.v0.3+json, subject d and the bundle as its
// one layer, pushed through the referrers API or, where the registry has none, indexed under
// the sha256-<hex> tag.
func attachBundle(t *testing.T, d name.Digest, bundleJSON []byte, predicateType string) {
	t.Helper()
	if err := ociremote.WriteAttestationNewBundleFormat(d, bundleJSON, predicateType); err != nil {
		t.Fatal(err)
	}
}

// ephemeralKey is a new key pair and its public key as a PEM file for a key authority.
func ephemeralKey(t *testing.T, alg protocommon.PublicKeyDetails) (*sign.EphemeralKeypair, string) {
	t.Helper()
	kp, err := sign.NewEphemeralKeypair(&sign.EphemeralKeypairOptions{Algorithm: alg})
	if err != nil {
		t.Fatal(err)
	}
	pemKey, err := kp.GetPublicKeyPem()
	if err != nil {
		t.Fatal(err)
	}
	return kp, writeFile(t, "key.pub", []byte(pemKey))
}

func bundleKeyRule(images string, keyFile string, ignoreTlog bool) RuleSpec {
	return RuleSpec{Name: "bundles", Images: []string{images}, Mode: Enforce,
		Authorities: []AuthoritySpec{{Name: "release", Key: &KeySpec{File: keyFile}, IgnoreTransparencyLog: ignoreTlog}}}
}

func manifestOf(t *testing.T, d name.Digest) []byte {
	t.Helper()
	desc, err := remote.Get(d)
	if err != nil {
		t.Fatal(err)
	}
	return desc.Manifest
}

func TestBundleKeySignature(t *testing.T) {
	t.Parallel()
	host := referrersRegistry(t, noWrap)
	kp, keyFile := ephemeralKey(t, protocommon.PublicKeyDetails_PKIX_ECDSA_P256_SHA_256)
	other, _ := ephemeralKey(t, protocommon.PublicKeyDetails_PKIX_ECDSA_P256_SHA_256)
	p384, p384File := ephemeralKey(t, protocommon.PublicKeyDetails_PKIX_ECDSA_P384_SHA_384)
	legacy := newTestKey(t)

	signed := pushImage(t, host+"/apps/signed:v1")
	attachBundle(t, signed, signStatement(t, signed, kp, sign.BundleOptions{}), cosignSignPredicate)
	unsigned := pushImage(t, host+"/apps/unsigned:v1")
	wrongKey := pushImage(t, host+"/apps/wrongkey:v1")
	attachBundle(t, wrongKey, signStatement(t, wrongKey, other, sign.BundleOptions{}), cosignSignPredicate)
	wrongDigest := pushImage(t, host+"/apps/wrongdigest:v1")
	attachBundle(t, wrongDigest, signStatement(t, signed, kp, sign.BundleOptions{}), cosignSignPredicate)
	// A .sig signature that fails does not hide a bundle that verifies.
	both := pushImage(t, host+"/apps/both:v1")
	legacy.sign(t, both, both)
	attachBundle(t, both, signStatement(t, both, kp, sign.BundleOptions{}), cosignSignPredicate)
	// A bundle nothing can read does not hide one that verifies.
	junk := pushImage(t, host+"/apps/junk:v1")
	attachBundle(t, junk, []byte(`{"mediaType": "not a bundle"}`), cosignSignPredicate)
	attachBundle(t, junk, signStatement(t, junk, kp, sign.BundleOptions{}), cosignSignPredicate)
	junkOnly := pushImage(t, host+"/apps/junkonly:v1")
	attachBundle(t, junkOnly, []byte(`{"mediaType": "not a bundle"}`), cosignSignPredicate)
	// An attestation by the right key is not a signature.
	attOnly := pushImage(t, host+"/apps/attonly:v1")
	attachBundle(t, attOnly, signAttestation(t, attOnly, "https://slsa.dev/provenance/v1", map[string]any{}, kp, sign.BundleOptions{}), "https://slsa.dev/provenance/v1")
	// A message signature over the manifest is what `cosign sign-blob` of its bytes makes: it does
	// not say the signer meant to sign the image, and does not count.
	message := pushImage(t, host+"/apps/message:v1")
	attachBundle(t, message, signBundle(t, &sign.PlainData{Data: manifestOf(t, message)}, kp, sign.BundleOptions{}), "")
	messageOther := pushImage(t, host+"/apps/messageother:v1")
	attachBundle(t, messageOther, signBundle(t, &sign.PlainData{Data: manifestOf(t, signed)}, kp, sign.BundleOptions{}), "")
	// A statement about the digest without a predicate type is no image signature either.
	untyped := pushImage(t, host+"/apps/untyped:v1")
	attachBundle(t, untyped, signAttestation(t, untyped, "", map[string]any{}, kp, sign.BundleOptions{}), "")

	v := newTestVerifier(t, bundleKeyRule(host+"/apps/*", keyFile, true))
	tests := []struct {
		name    string
		d       name.Digest
		allowed bool
		reason  []string
	}{
		{name: "signed", d: signed, allowed: true},
		{name: "unsigned", d: unsigned, reason: []string{"release: no cosign signature found for " + unsigned.DigestStr() + ": no .sig tag and no sigstore bundle signature among its referrers (looked for a key signature)"}},
		{name: "wrong key", d: wrongKey, reason: []string{"no .sig signature; none of 1 sigstore bundle(s) verified with this key"}},
		{name: "bundle for another digest", d: wrongDigest, reason: []string{"none of 1 sigstore bundle(s) verified", "does not match"}},
		{name: ".sig by another key, bundle by the authority", d: both, allowed: true},
		{name: "unreadable bundle beside a valid one", d: junk, allowed: true},
		{name: "unreadable bundle", d: junkOnly, reason: []string{"none of 1 sigstore bundle(s) verified with this key: unreadable bundle sha256:"}},
		{name: "attestation is no signature", d: attOnly, reason: []string{"no .sig tag and no sigstore bundle signature among its referrers, only 1 attestation bundle(s) (looked for a key signature)"}},
		{name: "message signature over the manifest", d: message, reason: []string{"message signature over the manifest is not an image signature"}},
		{name: "statement without a predicate type", d: untyped, reason: []string{`statement has predicate type "", not cosign's image signature`}},
		{name: "message signature over another manifest", d: messageOther, reason: []string{"artifact does not match digest"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dec := verifyOne(t, v, tc.d)
			wantDecision(t, dec, tc.allowed, tc.reason...)
			if len(dec.Authorities) != 1 || dec.Authorities[0].Verified != tc.allowed {
				t.Fatalf("authority results %+v, want one with verified=%v", dec.Authorities, tc.allowed)
			}
		})
	}

	t.Run("P-384 key signing with SHA-384", func(t *testing.T) {
		d := pushImage(t, host+"/p384/app:v1")
		attachBundle(t, d, signStatement(t, d, p384, sign.BundleOptions{}), cosignSignPredicate)
		wantDecision(t, verifyOne(t, newTestVerifier(t, bundleKeyRule(host+"/p384/*", p384File, true)), d), true)
	})
	t.Run("bindRepository", func(t *testing.T) {
		// cosign v3's statement names no repository, so it cannot satisfy a rule that binds one.
		r := bundleKeyRule(host+"/apps/*", keyFile, true)
		r.BindRepository = true
		wantDecision(t, verifyOne(t, newTestVerifier(t, r), signed), false, "bundle names no repository")
	})
}

// virtualRekor is a sign.Transparency that logs entries in sigstore-go's virtual Rekor, with an
// inclusion promise (SET) and an inclusion proof, as rekor.sigstore.dev returns them.
type virtualRekor struct {
	t  *testing.T
	vs *ca.VirtualSigstore
}

func (r virtualRekor) GetTransparencyLogEntry(ctx context.Context, keyOrCertPEM []byte, b *protobundle.Bundle) error {
	env := b.GetDsseEnvelope()
	envJSON, err := json.Marshal(dsse.Envelope{
		PayloadType: env.PayloadType,
		Payload:     base64.StdEncoding.EncodeToString(env.Payload),
		Signatures:  []dsse.Signature{{Sig: base64.StdEncoding.EncodeToString(env.Signatures[0].Sig)}},
	})
	if err != nil {
		return err
	}
	version := intoto.New().DefaultVersion()
	pe, err := types.NewProposedEntry(ctx, intoto.KIND, version, types.ArtifactProperties{
		ArtifactBytes: envJSON, PublicKeyBytes: [][]byte{keyOrCertPEM}, PKIFormat: string(pki.X509),
	})
	if err != nil {
		return err
	}
	impl, err := types.CreateVersionedEntry(pe)
	if err != nil {
		return err
	}
	body, err := types.CanonicalizeEntry(ctx, impl)
	if err != nil {
		return err
	}
	logID, err := r.vs.RekorLogID()
	if err != nil {
		return err
	}
	rawLogID, err := hex.DecodeString(logID)
	if err != nil {
		return err
	}
	integrated := time.Now().Unix()
	set, err := r.vs.RekorSignPayload(tlog.RekorPayload{Body: base64.StdEncoding.EncodeToString(body), IntegratedTime: integrated, LogIndex: 0, LogID: logID})
	if err != nil {
		return err
	}
	proof, err := r.vs.GetInclusionProof(body)
	if err != nil {
		return err
	}
	entry, err := tlog.NewEntry(body, integrated, 0, rawLogID, set, proof)
	if err != nil {
		return err
	}
	tle := entry.TransparencyLogEntry()
	tle.KindVersion = &protorekor.KindVersion{Kind: intoto.KIND, Version: version}
	tle.InclusionPromise = &protorekor.InclusionPromise{SignedEntryTimestamp: set}
	b.VerificationMaterial.TlogEntries = append(b.VerificationMaterial.TlogEntries, tle)
	return nil
}

func TestBundleTransparencyLog(t *testing.T) {
	t.Parallel()
	host := referrersRegistry(t, noWrap)
	ss := newTestSigstore(t)
	kp, keyFile := ephemeralKey(t, protocommon.PublicKeyDetails_PKIX_ECDSA_P256_SHA_256)
	logged := pushImage(t, host+"/apps/logged:v1")
	attachBundle(t, logged, signStatement(t, logged, kp, sign.BundleOptions{TransparencyLogs: []sign.Transparency{virtualRekor{t, ss.vs}}}), cosignSignPredicate)
	unlogged := pushImage(t, host+"/apps/unlogged:v1")
	attachBundle(t, unlogged, signStatement(t, unlogged, kp, sign.BundleOptions{}), cosignSignPredicate)
	// Logged in a log the trusted root does not know.
	stranger, err := ca.NewVirtualSigstore()
	if err != nil {
		t.Fatal(err)
	}
	otherLog := pushImage(t, host+"/apps/otherlog:v1")
	attachBundle(t, otherLog, signStatement(t, otherLog, kp, sign.BundleOptions{TransparencyLogs: []sign.Transparency{virtualRekor{t, stranger}}}), cosignSignPredicate)

	s := testSettings
	s.TrustedRoot = ss.trustedRoot
	required := newSettingsVerifier(t, s, bundleKeyRule(host+"/apps/*", keyFile, false))
	ignored := newSettingsVerifier(t, s, bundleKeyRule(host+"/apps/*", keyFile, true))
	tests := []struct {
		name    string
		v       *Verifier
		d       name.Digest
		allowed bool
		reason  string
	}{
		{name: "log proof checked offline", v: required, d: logged, allowed: true},
		{name: "log proof required", v: required, d: unlogged, reason: "not enough verified log entries from transparency log"},
		{name: "log unknown to the trusted root", v: required, d: otherLog, reason: "not enough verified log entries from transparency log"},
		{name: "ignoreTransparencyLog", v: ignored, d: unlogged, allowed: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			wantDecision(t, verifyOne(t, tc.v, tc.d), tc.allowed, tc.reason)
		})
	}
}

// leafKeypair is a sign.Keypair over the key of a certificate the test issued.
type leafKeypair struct{ sv signature.SignerVerifier }

func (k leafKeypair) GetHashAlgorithm() protocommon.HashAlgorithm {
	return protocommon.HashAlgorithm_SHA2_256
}
func (k leafKeypair) GetSigningAlgorithm() protocommon.PublicKeyDetails {
	return protocommon.PublicKeyDetails_PKIX_ECDSA_P256_SHA_256
}
func (k leafKeypair) GetHint() []byte         { return nil }
func (k leafKeypair) GetKeyAlgorithm() string { return "ECDSA" }
func (k leafKeypair) GetPublicKey() crypto.PublicKey {
	pub, _ := k.sv.PublicKey()
	return pub
}
func (k leafKeypair) GetPublicKeyPem() (string, error) {
	b, err := cryptoutils.MarshalPublicKeyToPEM(k.GetPublicKey())
	return string(b), err
}
func (k leafKeypair) SignData(_ context.Context, data []byte) ([]byte, []byte, error) {
	sig, err := k.sv.SignMessage(bytes.NewReader(data))
	h := sha256.Sum256(data)
	return sig, h[:], err
}

// leafProvider is a sign.CertificateProvider that hands out a certificate the test issued.
type leafProvider struct{ cert *x509.Certificate }

func (p leafProvider) GetCertificate(context.Context, sign.Keypair, *sign.CertificateProviderOptions) ([]byte, error) {
	return p.cert.Raw, nil
}

// signWithLeaf signs cosign's statement for d with the certificate's key, as keyless
// `cosign sign` does with a Fulcio certificate, logging it in rekor when set.
func signWithLeaf(t *testing.T, d name.Digest, cert *x509.Certificate, sv signature.SignerVerifier, rekor *virtualRekor) []byte {
	t.Helper()
	opts := sign.BundleOptions{CertificateProvider: leafProvider{cert}}
	if rekor != nil {
		opts.TransparencyLogs = []sign.Transparency{*rekor}
	}
	return signStatement(t, d, leafKeypair{sv}, opts)
}

func TestBundleKeyless(t *testing.T) {
	t.Parallel()
	host := referrersRegistry(t, noWrap)
	ss := newTestSigstore(t)
	rekor := &virtualRekor{t, ss.vs}
	leaf, sv := ss.fulcio.issueLeaf(t, leafSpec{uris: []string{githubWorkflow}, issuer: githubIssuer, ct: ss.ct})
	signed := pushImage(t, host+"/ci/app:v1")
	attachBundle(t, signed, signWithLeaf(t, signed, leaf, sv, rekor), cosignSignPredicate)
	noSCTLeaf, noSCTKey := ss.fulcio.issueLeaf(t, leafSpec{uris: []string{githubWorkflow}, issuer: githubIssuer})
	noSCT := pushImage(t, host+"/ci/app:nosct")
	attachBundle(t, noSCT, signWithLeaf(t, noSCT, noSCTLeaf, noSCTKey, rekor), cosignSignPredicate)
	unlogged := pushImage(t, host+"/ci/app:unlogged")
	attachBundle(t, unlogged, signWithLeaf(t, unlogged, leaf, sv, nil), cosignSignPredicate)
	// A certificate from a CA the trusted root does not hold.
	rogueLeaf, rogueKey := newTestRootCA(t, "rogue").issueLeaf(t, leafSpec{uris: []string{githubWorkflow}, issuer: githubIssuer, ct: ss.ct})
	rogue := pushImage(t, host+"/ci/app:rogue")
	attachBundle(t, rogue, signWithLeaf(t, rogue, rogueLeaf, rogueKey, rekor), cosignSignPredicate)

	s := testSettings
	s.TrustedRoot = ss.trustedRoot
	tests := []struct {
		name    string
		d       name.Digest
		id      IdentitySpec
		allowed bool
		reason  string
	}{
		{name: "identity matches", d: signed, id: IdentitySpec{Issuer: githubIssuer, Subject: githubWorkflow}, allowed: true},
		{name: "subject regexp matches", d: signed, id: IdentitySpec{IssuerRegExp: `^https://token\.actions\.githubusercontent\.com$`, SubjectRegExp: `^https://github\.com/example/.+`}, allowed: true},
		{name: "wrong subject", d: signed, id: IdentitySpec{Issuer: githubIssuer, Subject: "https://github.com/example/other/.github/workflows/release.yml@refs/heads/main"}, reason: "certificate identity"},
		{name: "subject regexp matching a part only", d: signed, id: IdentitySpec{Issuer: githubIssuer, SubjectRegExp: `github\.com/example/`}, reason: "certificate identity"},
		{name: "wrong issuer", d: signed, id: IdentitySpec{Issuer: "https://accounts.google.com", Subject: githubWorkflow}, reason: "certificate identity"},
		{name: "no embedded SCT", d: noSCT, id: IdentitySpec{Issuer: githubIssuer, Subject: githubWorkflow}, reason: "signed certificate timestamp"},
		{name: "not logged", d: unlogged, id: IdentitySpec{Issuer: githubIssuer, Subject: githubWorkflow}, reason: "not enough verified log entries from transparency log"},
		{name: "CA not in the trusted root", d: rogue, id: IdentitySpec{Issuer: githubIssuer, Subject: githubWorkflow}, reason: "leaf certificate verification failed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			id := tc.id
			v := newSettingsVerifier(t, s, RuleSpec{Name: "ci", Images: []string{host + "/ci/*"}, Mode: Enforce,
				Authorities: []AuthoritySpec{{Name: "github", Keyless: &id}}})
			wantDecision(t, verifyOne(t, v, tc.d), tc.allowed, tc.reason)
		})
	}
}

func TestBundleCertificateAuthority(t *testing.T) {
	t.Parallel()
	host := referrersRegistry(t, noWrap)
	rootCA := newTestRootCA(t, "corp root")
	inter := rootCA.issueCA(t, "corp signing", time.Now().Add(-2*time.Hour))
	leaf, sv := inter.issueLeaf(t, leafSpec{emails: []string{"release@example.com"}})
	signed := pushImage(t, host+"/corp/app:v1")
	attachBundle(t, signed, signWithLeaf(t, signed, leaf, sv, nil), cosignSignPredicate)
	// The trusted root's Fulcio is not this authority's CA, whatever the identity.
	ss := newTestSigstore(t)
	fulcioLeaf, fulcioKey := ss.fulcio.issueLeaf(t, leafSpec{emails: []string{"release@example.com"}, ct: ss.ct})
	public := pushImage(t, host+"/corp/app:public")
	attachBundle(t, public, signWithLeaf(t, public, fulcioLeaf, fulcioKey, &virtualRekor{t, ss.vs}), cosignSignPredicate)

	roots := writeFile(t, "roots.pem", certsPEM(t, rootCA.cert))
	inters := writeFile(t, "intermediates.pem", certsPEM(t, inter.cert))
	s := testSettings
	s.TrustedRoot = ss.trustedRoot
	rule := func(subject string) RuleSpec {
		return RuleSpec{Name: "corp", Images: []string{host + "/corp/*"}, Mode: Enforce, Authorities: []AuthoritySpec{{
			Name: "corp-ca", IgnoreTransparencyLog: true,
			Certificate: &CertificateSpec{Roots: roots, Intermediates: inters, IdentitySpec: IdentitySpec{Subject: subject}},
		}}}
	}
	tests := []struct {
		name    string
		d       name.Digest
		subject string
		allowed bool
		reason  string
	}{
		{name: "private CA", d: signed, subject: "release@example.com", allowed: true},
		{name: "wrong subject", d: signed, subject: "ops@example.com", reason: "certificate identity"},
		{name: "certificate from the public Fulcio", d: public, subject: "release@example.com", reason: "none of 1 sigstore bundle(s) verified with this certificate: failed to verify leaf certificate"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			wantDecision(t, verifyOne(t, newSettingsVerifier(t, s, rule(tc.subject)), tc.d), tc.allowed, tc.reason)
		})
	}
}

func TestBundleAttestation(t *testing.T) {
	t.Parallel()
	host := referrersRegistry(t, noWrap)
	kp, keyFile := ephemeralKey(t, protocommon.PublicKeyDetails_PKIX_ECDSA_P256_SHA_256)
	other, _ := ephemeralKey(t, protocommon.PublicKeyDetails_PKIX_ECDSA_P256_SHA_256)
	const vuln = "https://cosign.sigstore.dev/attestation/vuln/v1"
	scan := func(critical int) map[string]any {
		return map[string]any{"scanner": map[string]any{"result": map[string]any{"summary": map[string]any{"CRITICAL": critical}}}}
	}
	// image pushes a signed image with one vulnerability-scan attestation bundle.
	image := func(tag string, subject *name.Digest, signer sign.Keypair, critical int) name.Digest {
		d := pushImage(t, host+"/apps/app:"+tag)
		attachBundle(t, d, signStatement(t, d, kp, sign.BundleOptions{}), cosignSignPredicate)
		about := d
		if subject != nil {
			about = *subject
		}
		attachBundle(t, d, signAttestation(t, about, vuln, scan(critical), signer, sign.BundleOptions{}), vuln)
		return d
	}
	clean := image("clean", nil, kp, 0)
	critical := image("critical", nil, kp, 2)
	foreign := image("foreign", nil, other, 0)
	misplaced := image("misplaced", &clean, kp, 0)
	noAttestation := pushImage(t, host+"/apps/app:none")
	attachBundle(t, noAttestation, signStatement(t, noAttestation, kp, sign.BundleOptions{}), cosignSignPredicate)

	r := bundleKeyRule(host+"/apps/*", keyFile, true)
	r.Attestations = []AttestationSpec{{Name: "no-critical", PredicateType: vuln, Condition: "predicate.scanner.result.summary.CRITICAL == 0"}}
	v := newTestVerifier(t, r)
	tests := []struct {
		name    string
		d       name.Digest
		allowed bool
		reason  string
	}{
		{name: "condition true", d: clean, allowed: true},
		{name: "condition false", d: critical, reason: "attestation no-critical: want predicate type " + vuln + " with its condition true, found: condition is false"},
		{name: "signed by another key", d: foreign, reason: "none of 1 attestation(s) is signed by the rule's authorities for this digest (0 under the .att tag, 1 sigstore bundle(s))"},
		{name: "about another digest", d: misplaced, reason: "none of 1 attestation(s) is signed by the rule's authorities for this digest"},
		{name: "no attestation", d: noAttestation, reason: "no attestation found for " + noAttestation.DigestStr() + ": no .att tag and no attestation bundle among its referrers"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			wantDecision(t, verifyOne(t, v, tc.d), tc.allowed, tc.reason)
		})
	}
}

// requests counts the requests whose path contains a string.
type requests struct {
	part string
	n    atomic.Int32
}

func (c *requests) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, c.part) {
			c.n.Add(1)
		}
		next.ServeHTTP(w, r)
	})
}

func TestBundleReferrersFallback(t *testing.T) {
	t.Parallel()
	kp, keyFile := ephemeralKey(t, protocommon.PublicKeyDetails_PKIX_ECDSA_P256_SHA_256)
	// The registry has the referrers API but the wrapper hides it, as registries without
	// OCI 1.1 support answer: cosign then indexes its bundles under the sha256-<hex> tag.
	fallbackTags := &requests{part: "/manifests/sha256-"}
	host := referrersRegistry(t, func(next http.Handler) http.Handler {
		return fallbackTags.wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.Contains(r.URL.Path, "/referrers/") {
				http.NotFound(w, r)
				return
			}
			next.ServeHTTP(w, r)
		}))
	})
	signed := pushImage(t, host+"/apps/app:v1")
	attachBundle(t, signed, signStatement(t, signed, kp, sign.BundleOptions{}), cosignSignPredicate)
	tag := signed.Context().Tag(strings.Replace(signed.DigestStr(), ":", "-", 1))
	if _, err := remote.Head(tag); err != nil {
		t.Fatalf("cosign's writer left no referrers tag %s: %v", tag, err)
	}
	before := fallbackTags.n.Load()
	wantDecision(t, verifyOne(t, newTestVerifier(t, bundleKeyRule(host+"/apps/*", keyFile, true)), signed), true)
	if fallbackTags.n.Load() == before {
		t.Fatalf("the bundle was found without reading the referrers tag")
	}
}

func TestBundleBounds(t *testing.T) {
	t.Parallel()
	referrersCalls := &requests{part: "/referrers/"}
	host := referrersRegistry(t, referrersCalls.wrap)
	kp, keyFile := ephemeralKey(t, protocommon.PublicKeyDetails_PKIX_ECDSA_P256_SHA_256)
	many := pushImage(t, host+"/apps/many:v1")
	for range testSettings.MaxSignatures + 1 {
		attachBundle(t, many, signStatement(t, many, kp, sign.BundleOptions{}), cosignSignPredicate)
	}
	legacy := newTestKey(t)
	sigOnly := pushImage(t, host+"/apps/sig:v1")
	legacy.sign(t, sigOnly, sigOnly)

	v := newTestVerifier(t, bundleKeyRule(host+"/apps/many", keyFile, true), keyRule("sig", []string{host + "/apps/sig"}, Enforce, legacy))
	wantDecision(t, verifyOne(t, v, many), false, fmt.Sprintf("%d sigstore bundles refer to the image, more than the %d allowed", testSettings.MaxSignatures+1, testSettings.MaxSignatures))

	// A .sig signature that settles the rule costs no referrers request.
	before := referrersCalls.n.Load()
	wantDecision(t, verifyOne(t, v, sigOnly), true)
	if n := referrersCalls.n.Load() - before; n != 0 {
		t.Fatalf("%d referrers requests for an image its .sig signature settles, want 0", n)
	}
}

func TestBundlePlatformLevel(t *testing.T) {
	t.Parallel()
	host := referrersRegistry(t, noWrap)
	kp, keyFile := ephemeralKey(t, protocommon.PublicKeyDetails_PKIX_ECDSA_P256_SHA_256)
	index, platform := pushIndex(t, host+"/multi/app:v1")
	// Only this node's platform manifest carries a bundle.
	attachBundle(t, platform, signStatement(t, platform, kp, sign.BundleOptions{}), cosignSignPredicate)
	for _, tc := range []struct {
		level   string
		allowed bool
	}{{SignedIndex, false}, {SignedPlatform, true}} {
		t.Run(tc.level, func(t *testing.T) {
			r := bundleKeyRule(host+"/multi/*", keyFile, true)
			r.SignedLevel = tc.level
			wantDecision(t, verifyOne(t, newTestVerifier(t, r), index), tc.allowed)
		})
	}
}
