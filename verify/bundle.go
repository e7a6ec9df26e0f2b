package verify

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	ociremote "github.com/sigstore/cosign/v2/pkg/oci/remote"
	"github.com/sigstore/sigstore-go/pkg/bundle"
	"github.com/sigstore/sigstore-go/pkg/fulcio/certificate"
	"github.com/sigstore/sigstore-go/pkg/root"
	sgverify "github.com/sigstore/sigstore-go/pkg/verify"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
)

const (
	// bundleMediaTypePrefix starts the artifact type of a sigstore bundle referrer and the media
	// type of its one layer (application/vnd.dev.sigstore.bundle.v0.3+json and older versions).
	bundleMediaTypePrefix = "application/vnd.dev.sigstore.bundle"
	// bundleContentAnnotation is set by cosign on its bundle referrers. Registries that report a
	// referrer's config media type instead of its artifactType (go-containerregistry's own
	// registry does) still let the bundles be found by it.
	bundleContentAnnotation = "dev.sigstore.bundle.content"
	// cosignSignPredicate is what cosign v3 (and v2 with --new-bundle-format) signs for an image:
	// a DSSE envelope holding an in-toto statement whose subject is the image's digest.
	cosignSignPredicate = "https://sigstore.dev/cosign/sign/v1"
	// maxBundleSize bounds one bundle layer; real ones, certificate and log proofs included, take
	// a few kilobytes.
	maxBundleSize = 1 << 20
)

// sigstoreBundle is one sigstore bundle attached to the image as an OCI referrer.
type sigstoreBundle struct {
	b *bundle.Bundle
	// predicateType is the predicate type its DSSE statement claims, read before verification to
	// tell signatures from attestations; empty for a message signature.
	predicateType string
	// err is set when the layer is no bundle sigstore-go can read; it does not keep another
	// bundle from verifying.
	err error
}

// signature tells what is offered as an image signature from an attestation: cosign's
// statement, and also a message signature or a statement without a predicate type, so that
// verification can say why they do not count.
func (s sigstoreBundle) signature() bool {
	return s.predicateType == "" || s.predicateType == cosignSignPredicate
}

// bundleStatement is the part of a verified in-toto statement that pullgate reads.
type bundleStatement struct {
	inTotoStatement
	Subject []struct {
		Name   string            `json:"name"`
		Digest map[string]string `json:"digest"`
	} `json:"subject"`
}

// referrers fetches the image's sigstore bundles once, when first needed: an image whose
// .sig signatures settle the rule costs no referrers request.
type referrers struct {
	ref     name.Digest
	max     int
	opts    []ociremote.Option
	done    bool
	bundles []sigstoreBundle
	err     error
}

func (r *referrers) get() ([]sigstoreBundle, error) {
	if !r.done {
		r.done = true
		r.bundles, r.err = fetchBundles(r.ref, r.max, r.opts)
	}
	return r.bundles, r.err
}

// fetchBundles lists the referrers of ref (through the referrers API, or the sha256-<hex> tag
// where the registry has none) and fetches the sigstore bundles among them, at most max.
func fetchBundles(ref name.Digest, max int, opts []ociremote.Option) ([]sigstoreBundle, error) {
	idx, err := ociremote.Referrers(ref, "", opts...)
	if err != nil {
		return nil, fmt.Errorf("list referrers: %w", err)
	}
	var descs []v1.Descriptor
	for _, d := range idx.Manifests {
		if strings.HasPrefix(d.ArtifactType, bundleMediaTypePrefix) || d.Annotations[bundleContentAnnotation] != "" {
			descs = append(descs, d)
		}
	}
	if max > 0 && len(descs) > max {
		return nil, &Denial{fmt.Sprintf("%d sigstore bundles refer to the image, more than the %d allowed", len(descs), max)}
	}
	var (
		out  []sigstoreBundle
		errs []error
	)
	for _, d := range descs {
		b, err := fetchBundle(ref.Context().Digest(d.Digest.String()), opts)
		var de *Denial
		if errors.As(err, &de) {
			return nil, err
		} else if err != nil {
			// Anyone who may push to the repository may push a broken referrer: it must not
			// hide the others.
			errs = append(errs, fmt.Errorf("fetch sigstore bundle %s: %w", d.Digest, err))
			continue
		}
		if b != nil {
			out = append(out, *b)
		}
	}
	if len(out) == 0 && len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

// fetchBundle reads the bundle in the referrer manifest at ref, or nil when that manifest holds
// no bundle after all. Its layer is read as stored: bundles are not compressed, and nothing is
// decompressed.
func fetchBundle(ref name.Digest, opts []ociremote.Option) (*sigstoreBundle, error) {
	img, err := ociremote.SignedImage(ref, opts...)
	if err != nil {
		return nil, err
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, err
	}
	if len(m.Layers) != 1 || !strings.HasPrefix(string(m.Layers[0].MediaType), bundleMediaTypePrefix) {
		return nil, nil
	}
	if m.Layers[0].Size > maxBundleSize {
		return nil, &Denial{fmt.Sprintf("sigstore bundle %s takes %d bytes, more than the %d allowed", ref.DigestStr(), m.Layers[0].Size, maxBundleSize)}
	}
	layer, err := img.LayerByDigest(m.Layers[0].Digest)
	if err != nil {
		return nil, err
	}
	rc, err := layer.Compressed()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	raw, err := io.ReadAll(io.LimitReader(rc, maxBundleSize+1))
	if err != nil {
		return nil, err
	}
	if len(raw) > maxBundleSize {
		return nil, &Denial{fmt.Sprintf("sigstore bundle %s takes more than the %d bytes allowed", ref.DigestStr(), maxBundleSize)}
	}
	return parseBundle(ref.DigestStr(), raw), nil
}

// parseBundle reads the bundle layer raw of the referrer named digest. A layer sigstore-go
// cannot read gives a sigstoreBundle with err set.
func parseBundle(digest string, raw []byte) *sigstoreBundle {
	b := &bundle.Bundle{}
	if err := b.UnmarshalJSON(raw); err != nil {
		return &sigstoreBundle{err: fmt.Errorf("unreadable bundle %s: %w", digest, err)}
	}
	sb := &sigstoreBundle{b: b}
	if env := b.GetDsseEnvelope(); env != nil {
		var st inTotoStatement
		if env.PayloadType != bundle.IntotoMediaType || json.Unmarshal(env.Payload, &st) != nil {
			// Neither a signature nor an attestation pullgate reads; verification says why.
			st.PredicateType = "unknown payload type " + env.PayloadType
		}
		sb.predicateType = st.PredicateType
	}
	return sb
}

// bundleCheck verifies sigstore bundles for one authority with sigstore-go.
type bundleCheck struct {
	verifier *sgverify.Verifier
	policy   []sgverify.PolicyOption
}

// compileBundleCheck sets up the bundle verification of auth, from the same trust as its .sig
// verification: the key, the trusted root, or the private CA's roots and intermediates.
func (auth *authority) compileBundleCheck(caRoots, caIntermediates []byte) error {
	co := auth.opts
	var tm root.TrustedMaterial
	var vopts []sgverify.VerifierOption
	var popts []sgverify.PolicyOption
	if !co.IgnoreTlog {
		vopts = append(vopts, sgverify.WithTransparencyLog(1))
	}
	switch auth.kind {
	case "key":
		pub, err := co.SigVerifier.PublicKey()
		if err != nil {
			return err
		}
		kv, err := newKeyVerifier(pub)
		if err != nil {
			return err
		}
		key := root.NewExpiringKey(kv, time.Time{}, time.Time{})
		tm = root.NewTrustedPublicKeyMaterial(func(string) (root.TimeConstrainedVerifier, error) { return key, nil })
		if co.TrustedMaterial != nil {
			// The trusted root only contributes its transparency logs: a key is trusted by itself.
			tm = root.TrustedMaterialCollection{tm, logsOnly{co.TrustedMaterial}}
		}
		// A key has no validity period to check against a time.
		vopts = append(vopts, sgverify.WithNoObserverTimestamps())
		popts = append(popts, sgverify.WithKey())
	case "keyless", "certificate":
		if auth.kind == "keyless" {
			tm = co.TrustedMaterial
		} else {
			cas, err := privateCAs(caRoots, caIntermediates)
			if err != nil {
				return err
			}
			ca := &privateCA{cas: cas}
			if co.TrustedMaterial != nil {
				ca.logs = logsOnly{co.TrustedMaterial}
			}
			tm = ca
		}
		if co.IgnoreTlog {
			// Without a log, nothing vouches for when the certificate was used: it must be
			// valid now, as long-lived private-CA certificates are.
			vopts = append(vopts, sgverify.WithCurrentTime())
		} else {
			// The log's integrated time or a timestamp authority's proves the short-lived
			// certificate was valid when it signed.
			vopts = append(vopts, sgverify.WithObserverTimestamps(1))
		}
		if !co.IgnoreSCT {
			vopts = append(vopts, sgverify.WithSignedCertificateTimestamps(1))
		}
		id, err := certificateIdentity(co.Identities[0].Issuer, co.Identities[0].IssuerRegExp, co.Identities[0].Subject, co.Identities[0].SubjectRegExp)
		if err != nil {
			return err
		}
		popts = append(popts, sgverify.WithCertificateIdentity(id))
	default:
		return fmt.Errorf("unknown authority kind %q", auth.kind)
	}
	v, err := sgverify.NewVerifier(tm, vopts...)
	if err != nil {
		return err
	}
	auth.bundle = &bundleCheck{verifier: v, policy: popts}
	return nil
}

func certificateIdentity(issuer, issuerRE, subject, subjectRE string) (sgverify.CertificateIdentity, error) {
	san, err := sgverify.NewSANMatcher(subject, subjectRE)
	if err != nil {
		return sgverify.CertificateIdentity{}, err
	}
	if issuer == "" && issuerRE == "" {
		// No issuer asked for: any, including none (private CAs have no OIDC issuer extension).
		issuerRE = ".*"
	}
	iss, err := sgverify.NewIssuerMatcher(issuer, issuerRE)
	if err != nil {
		return sgverify.CertificateIdentity{}, err
	}
	return sgverify.NewCertificateIdentity(san, iss, certificate.Extensions{})
}

// privateCAs makes one certificate authority per root, each with all the intermediates.
func privateCAs(rootsPEM, intermediatesPEM []byte) ([]root.CertificateAuthority, error) {
	roots, err := cryptoutils.UnmarshalCertificatesFromPEM(rootsPEM)
	if err != nil {
		return nil, err
	}
	var inter []*x509.Certificate
	if len(intermediatesPEM) > 0 {
		if inter, err = cryptoutils.UnmarshalCertificatesFromPEM(intermediatesPEM); err != nil {
			return nil, err
		}
	}
	var cas []root.CertificateAuthority
	for _, r := range roots {
		cas = append(cas, &root.FulcioCertificateAuthority{Root: r, Intermediates: inter})
	}
	return cas, nil
}

// privateCA trusts certificates from a private CA only, never the trusted root's Fulcio, and
// takes transparency logs and timestamp authorities from logs when set.
type privateCA struct {
	root.BaseTrustedMaterial
	cas  []root.CertificateAuthority
	logs root.TrustedMaterial
}

func (p *privateCA) FulcioCertificateAuthorities() []root.CertificateAuthority { return p.cas }

func (p *privateCA) RekorLogs() map[string]*root.TransparencyLog {
	if p.logs == nil {
		return map[string]*root.TransparencyLog{}
	}
	return p.logs.RekorLogs()
}

func (p *privateCA) TimestampingAuthorities() []root.TimestampingAuthority {
	if p.logs == nil {
		return nil
	}
	return p.logs.TimestampingAuthorities()
}

// logsOnly is a trusted root reduced to its transparency logs and timestamp authorities.
type logsOnly struct{ tm root.TrustedMaterial }

func (l logsOnly) TimestampingAuthorities() []root.TimestampingAuthority {
	return l.tm.TimestampingAuthorities()
}
func (l logsOnly) FulcioCertificateAuthorities() []root.CertificateAuthority { return nil }
func (l logsOnly) RekorLogs() map[string]*root.TransparencyLog               { return l.tm.RekorLogs() }
func (l logsOnly) CTLogs() map[string]*root.TransparencyLog                  { return nil }
func (l logsOnly) PublicKeyVerifier(string) (root.TimeConstrainedVerifier, error) {
	return nil, errors.New("the trusted root vouches for no signing key")
}

// keyVerifier accepts a signature made with any of the hashes signers use with the key: cosign
// hashes with SHA-256 for every curve, sigstore-go with SHA-384 for P-384 and SHA-512 for P-521.
type keyVerifier []signature.Verifier

func newKeyVerifier(pub crypto.PublicKey) (keyVerifier, error) {
	v, err := signature.LoadVerifier(pub, crypto.SHA256)
	if err != nil {
		return nil, err
	}
	kv := keyVerifier{v}
	if ec, ok := pub.(*ecdsa.PublicKey); ok && ec.Curve != elliptic.P256() {
		d, err := signature.LoadDefaultVerifier(pub)
		if err != nil {
			return nil, err
		}
		kv = append(kv, d)
	}
	// `cosign sign --key` signs with Ed25519ph (cosign.LoadPrivateKey's default).
	if ed, ok := pub.(ed25519.PublicKey); ok {
		ph, err := signature.LoadED25519phVerifier(ed)
		if err != nil {
			return nil, err
		}
		kv = append(kv, ph)
	}
	return kv, nil
}

func (k keyVerifier) PublicKey(opts ...signature.PublicKeyOption) (crypto.PublicKey, error) {
	return k[0].PublicKey(opts...)
}

func (k keyVerifier) VerifySignature(sig, msg io.Reader, opts ...signature.VerifyOption) error {
	s, err := io.ReadAll(sig)
	if err != nil {
		return err
	}
	// A nil message is allowed: the digest then comes in opts (signature.WithDigest).
	var m []byte
	if msg != nil {
		if m, err = io.ReadAll(msg); err != nil {
			return err
		}
	}
	for _, v := range k {
		var mr io.Reader
		if msg != nil {
			mr = bytes.NewReader(m)
		}
		if err = v.VerifySignature(bytes.NewReader(s), mr, opts...); err == nil {
			return nil
		}
	}
	return err
}

// verifyBundle verifies b with authority a for the artifact h and returns its statement, nil
// for a message signature. The signature must cover h: a DSSE statement must name h among its
// subjects, a message signature must be over the manifest whose digest is h.
func verifyBundle(a *authority, b *bundle.Bundle, h v1.Hash) (*bundleStatement, error) {
	digest, err := hex.DecodeString(h.Hex)
	if err != nil {
		return nil, err
	}
	if env := b.GetDsseEnvelope(); env != nil && env.PayloadType != bundle.IntotoMediaType {
		return nil, fmt.Errorf("DSSE payload type %q is not an in-toto statement", env.PayloadType)
	}
	if _, err := a.bundle.verifier.Verify(b, sgverify.NewPolicy(sgverify.WithArtifactDigest(h.Algorithm, digest), a.bundle.policy...)); err != nil {
		return nil, err
	}
	env := b.GetDsseEnvelope()
	if env == nil {
		return nil, nil
	}
	var st bundleStatement
	if err := json.Unmarshal(env.Payload, &st); err != nil {
		return nil, fmt.Errorf("unreadable statement: %w", err)
	}
	return &st, nil
}

// verifyBundleSignatures completes res, the authority's result on the .sig signatures, with the
// sigstore bundles: the authority passes if a signature bundle verifies.
func verifyBundleSignatures(a *authority, res AuthorityResult, sigs int, bundles []sigstoreBundle, h v1.Hash, r *rule, img Image) AuthorityResult {
	var n, atts int
	var errs []string
	for _, sb := range bundles {
		if !sb.signature() {
			atts++
			continue
		}
		n++
		if sb.err != nil {
			errs = append(errs, oneLine(sb.err))
			continue
		}
		st, err := verifyBundle(a, sb.b, h)
		if err == nil {
			err = checkBundleSignature(st, h, r.bindRepo, img)
		}
		if err != nil {
			errs = append(errs, oneLine(err))
			continue
		}
		return AuthorityResult{Name: a.name, Verified: true}
	}
	if sigs == 0 && n == 0 {
		res.Reason = fmt.Sprintf("no cosign signature found for %s: no .sig tag and no sigstore bundle signature among its referrers%s (looked for a %s signature)", h, attestationsOnly(atts), a.kind)
		return res
	}
	legacy := "no .sig signature"
	if sigs > 0 {
		legacy = res.Reason
	}
	var found string
	switch {
	case n > 0:
		found = fmt.Sprintf("none of %d sigstore bundle(s) verified with this %s: %s", n, a.kind, strings.Join(dedupe(errs), "; "))
	default:
		found = "no sigstore bundle signature among its referrers" + attestationsOnly(atts)
	}
	res.Reason = legacy + "; " + found
	return res
}

func attestationsOnly(n int) string {
	if n == 0 {
		return ""
	}
	return fmt.Sprintf(", only %d attestation bundle(s)", n)
}

// checkBundleSignature checks what a verified signature bundle signed: cosign's statement
// about the image, not an attestation, and, when the rule binds the repository, a subject
// naming the image's repository with the digest. A bare message signature over the manifest
// does not count: anyone holding the key signs blobs with it (`cosign sign-blob`), and only
// the statement says that the signer meant to sign this image.
func checkBundleSignature(st *bundleStatement, h v1.Hash, bindRepo bool, img Image) error {
	switch {
	case st == nil:
		return fmt.Errorf("message signature over the manifest is not an image signature (it is what cosign sign-blob makes); sign the image with cosign sign")
	case st.PredicateType != cosignSignPredicate:
		return fmt.Errorf("statement has predicate type %q, not cosign's image signature %s", st.PredicateType, cosignSignPredicate)
	}
	if !bindRepo {
		return nil
	}
	for _, s := range st.Subject {
		if s.Digest[h.Algorithm] != h.Hex || s.Name == "" {
			continue
		}
		if signed, err := ParseImage(s.Name); err == nil && signed.Name() == img.Name() {
			return nil
		}
		return fmt.Errorf("signature is for repository %q, not %s", s.Name, img.Name())
	}
	return fmt.Errorf("bundle names no repository, and the rule binds signatures to %s", img.Name())
}

// bundleAttestations looks for an attestation bundle of spec's predicate type, signed by one of
// the rule's authorities, whose predicate satisfies spec. It returns true when one does, and
// otherwise what was found.
func bundleAttestations(ctx context.Context, r *rule, spec *attestation, bundles []sigstoreBundle, h v1.Hash) (bool, []string) {
	var found []string
	for _, a := range r.authorities {
		for _, sb := range bundles {
			if sb.signature() || sb.err != nil {
				continue
			}
			st, err := verifyBundle(a, sb.b, h)
			if err != nil || st == nil {
				continue
			}
			ok, f := evalStatement(ctx, spec, st.inTotoStatement)
			if ok {
				return true, nil
			}
			found = append(found, f)
		}
	}
	return false, found
}

func attestationBundles(bundles []sigstoreBundle) int {
	n := 0
	for _, sb := range bundles {
		if !sb.signature() {
			n++
		}
	}
	return n
}
