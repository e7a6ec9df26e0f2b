package verify

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	ct "github.com/google/certificate-transparency-go"
	cttls "github.com/google/certificate-transparency-go/tls"
	ctx509 "github.com/google/certificate-transparency-go/x509"
	ctx509util "github.com/google/certificate-transparency-go/x509util"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/sigstore/cosign/v2/pkg/cosign/bundle"
	ociremote "github.com/sigstore/cosign/v2/pkg/oci/remote"
	"github.com/sigstore/cosign/v2/pkg/oci/static"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore-go/pkg/testing/ca"
	"github.com/sigstore/sigstore-go/pkg/tlog"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"

	"github.com/pullgate/pullgate/verify/hosts"
)

func generateKey(t *testing.T, kind string) crypto.Signer {
	t.Helper()
	var (
		k   crypto.Signer
		err error
	)
	switch kind {
	case "ecdsa-p256":
		k, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "ecdsa-p384":
		k, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case "rsa-2048":
		k, err = rsa.GenerateKey(rand.Reader, 2048)
	case "rsa-4096":
		k, err = rsa.GenerateKey(rand.Reader, 4096)
	case "ed25519":
		_, k, err = ed25519.GenerateKey(rand.Reader)
	default:
		t.Fatalf("unknown key kind %q", kind)
	}
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// Each key type passes with its own public key and fails with another key of the same type,
// whether the key comes from a file or inline.
func TestKeyAuthorityTypes(t *testing.T) {
	t.Parallel()
	host := testRegistry(t)
	for _, kind := range []string{"ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-4096", "ed25519"} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			priv := generateKey(t, kind)
			signer, other := loadTestKey(t, priv), loadTestKey(t, generateKey(t, kind))
			d := pushImage(t, host+"/keys/"+kind+":v1")
			signer.sign(t, d, d)
			// Older cosign and KMS signers: SHA-256 digests and pure Ed25519.
			sha256Signer, err := signature.LoadSignerVerifier(priv, crypto.SHA256)
			if err != nil {
				t.Fatal(err)
			}
			d256 := pushImage(t, host+"/keys/"+kind+":sha256")
			attachSignature(t, d256, cosignPayload(t, d256), signRaw(t, sha256Signer, cosignPayload(t, d256)))
			tests := []struct {
				name    string
				d       name.Digest
				key     KeySpec
				allowed bool
				reason  string
			}{
				{name: "file", d: d, key: KeySpec{File: signer.pemFile}, allowed: true},
				{name: "inline data", d: d, key: KeySpec{Data: string(signer.pem)}, allowed: true},
				{name: "sha256 or pure signature", d: d256, key: KeySpec{File: signer.pemFile}, allowed: true},
				{name: "another key", d: d, key: KeySpec{Data: string(other.pem)}, reason: "none of 1 signature(s) verified with this key"},
			}
			for _, tc := range tests {
				t.Run(tc.name, func(t *testing.T) {
					key := tc.key
					v := newTestVerifier(t, RuleSpec{Name: "keys", Images: []string{host + "/keys/*"}, Mode: Enforce,
						Authorities: []AuthoritySpec{{Name: "release", Key: &key, IgnoreTransparencyLog: true}}})
					dec := verifyOne(t, v, tc.d)
					wantDecision(t, dec, tc.allowed, tc.reason)
					if len(dec.Authorities) != 1 || dec.Authorities[0].Verified != tc.allowed {
						t.Fatalf("authority results %+v, want one with verified=%v", dec.Authorities, tc.allowed)
					}
				})
			}
		})
	}
}

// testCA is a certificate authority made in the test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

var serial atomic.Int64

func newTestRootCA(t *testing.T, cn string) testCA {
	t.Helper()
	return testCA{}.issueCA(t, cn, time.Now().Add(-3*time.Hour))
}

// issueCA makes a CA certificate signed by ca, or a self-signed root when ca is empty.
func (ca testCA) issueCA(t *testing.T, cn string, notBefore time.Time) testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serial.Add(1)),
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"pullgate test"}},
		NotBefore:             notBefore,
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	parent, parentKey := tmpl, key
	if ca.cert != nil {
		parent, parentKey = ca.cert, ca.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return testCA{cert: cert, key: key}
}

// leafSpec describes a code-signing certificate.
type leafSpec struct {
	emails              []string
	uris                []string
	issuer              string // Fulcio's OIDC issuer extension, when set
	notBefore, notAfter time.Time
	ct                  *testCTLog // embeds an SCT from this log, when set
}

var oidcIssuerOID = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 57264, 1, 1}

// issueLeaf makes a code-signing certificate for a new key and returns it with the key's signer.
func (ca testCA) issueLeaf(t *testing.T, s leafSpec) (*x509.Certificate, signature.SignerVerifier) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if s.notBefore.IsZero() {
		s.notBefore = time.Now().Add(-time.Minute)
	}
	if s.notAfter.IsZero() {
		s.notAfter = time.Now().Add(10 * time.Minute)
	}
	tmpl := &x509.Certificate{
		SerialNumber:   big.NewInt(serial.Add(1)),
		EmailAddresses: s.emails,
		NotBefore:      s.notBefore,
		NotAfter:       s.notAfter,
		KeyUsage:       x509.KeyUsageDigitalSignature,
		ExtKeyUsage:    []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
	}
	for _, u := range s.uris {
		parsed, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, parsed)
	}
	if s.issuer != "" {
		tmpl.ExtraExtensions = append(tmpl.ExtraExtensions, pkix.Extension{Id: oidcIssuerOID, Value: []byte(s.issuer)})
	}
	create := func() *x509.Certificate {
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
		if err != nil {
			t.Fatal(err)
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		return cert
	}
	if s.ct != nil {
		// As Fulcio does: the log signs a precertificate (poisoned), and the certificate carries
		// the SCT in place of the poison, so that removing either gives the same TBS.
		n := len(tmpl.ExtraExtensions)
		tmpl.ExtraExtensions = append(tmpl.ExtraExtensions, pkix.Extension{Id: asn1.ObjectIdentifier(ctx509.OIDExtensionCTPoison), Critical: true, Value: asn1.NullBytes})
		sct := s.ct.sctExtension(t, create(), ca.cert)
		tmpl.ExtraExtensions = append(tmpl.ExtraExtensions[:n], sct)
	}
	cert := create()
	sv, err := signature.LoadECDSASignerVerifier(key, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	return cert, sv
}

func certsPEM(t *testing.T, certs ...*x509.Certificate) []byte {
	t.Helper()
	var b []byte
	for _, c := range certs {
		p, err := cryptoutils.MarshalCertificateToPEM(c)
		if err != nil {
			t.Fatal(err)
		}
		b = append(b, p...)
	}
	return b
}

func writeFile(t *testing.T, name string, b []byte) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(f, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// signWithCert attaches a signature for d made with a certificate's key, carrying the
// certificate and its chain as `cosign sign --certificate --certificate-chain` does, and the
// transparency-log bundle when one is given.
func signWithCert(t *testing.T, d name.Digest, sv signature.Signer, leaf *x509.Certificate, chain []*x509.Certificate, rekor func(payload, sig, pub []byte) *bundle.RekorBundle) {
	t.Helper()
	payload := cosignPayload(t, d)
	raw := signRaw(t, sv, payload)
	opts := []static.Option{static.WithCertChain(certsPEM(t, leaf), certsPEM(t, chain...))}
	if rekor != nil {
		opts = append(opts, static.WithBundle(rekor(payload, raw, certsPEM(t, leaf))))
	}
	attachSignature(t, d, payload, raw, opts...)
}

// testCTLog is a certificate-transparency log that issues embedded SCTs.
type testCTLog struct {
	key *ecdsa.PrivateKey
	id  [32]byte
}

func newTestCTLog(t *testing.T) *testCTLog {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return &testCTLog{key: key, id: sha256.Sum256(der)}
}

func (l *testCTLog) sctExtension(t *testing.T, cert, issuer *x509.Certificate) pkix.Extension {
	t.Helper()
	chain, err := ctx509.ParseCertificates(append(append([]byte{}, cert.Raw...), issuer.Raw...))
	if err != nil {
		t.Fatal(err)
	}
	ts := uint64(time.Now().UnixMilli())
	leaf, err := ct.MerkleTreeLeafFromChain(chain, ct.PrecertLogEntryType, ts)
	if err != nil {
		t.Fatal(err)
	}
	sct := ct.SignedCertificateTimestamp{SCTVersion: ct.V1, LogID: ct.LogID{KeyID: l.id}, Timestamp: ts}
	input, err := ct.SerializeSCTSignatureInput(sct, ct.LogEntry{Leaf: *leaf})
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256(input)
	sig, err := ecdsa.SignASN1(rand.Reader, l.key, h[:])
	if err != nil {
		t.Fatal(err)
	}
	sct.Signature = ct.DigitallySigned{Algorithm: cttls.SignatureAndHashAlgorithm{Hash: cttls.SHA256, Signature: cttls.ECDSA}, Signature: sig}
	list, err := ctx509util.MarshalSCTsIntoSCTList([]*ct.SignedCertificateTimestamp{&sct})
	if err != nil {
		t.Fatal(err)
	}
	b, err := cttls.Marshal(*list)
	if err != nil {
		t.Fatal(err)
	}
	v, err := asn1.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return pkix.Extension{Id: asn1.ObjectIdentifier(ctx509.OIDExtensionCTSCT), Value: v}
}

// testSigstore is a private Sigstore: sigstore-go's virtual Sigstore for the Rekor log, a
// Fulcio-like CA made with its helpers (whose key the test needs, to issue certificates with
// URI SANs and embedded SCTs), a CT log, and a trusted_root.json that trusts all three.
type testSigstore struct {
	vs          *ca.VirtualSigstore
	fulcio      testCA
	ct          *testCTLog
	trustedRoot string
}

func newTestSigstore(t *testing.T) *testSigstore {
	t.Helper()
	vs, err := ca.NewVirtualSigstore()
	if err != nil {
		t.Fatal(err)
	}
	rootCert, rootKey, err := ca.GenerateRootCa()
	if err != nil {
		t.Fatal(err)
	}
	interCert, interKey, err := ca.GenerateFulcioIntermediate(rootCert, rootKey)
	if err != nil {
		t.Fatal(err)
	}
	s := &testSigstore{vs: vs, fulcio: testCA{cert: interCert, key: interKey}, ct: newTestCTLog(t)}
	start := time.Now().Add(-24 * time.Hour)
	rekor := map[string]*root.TransparencyLog{}
	for id, l := range vs.RekorLogs() {
		raw, err := hex.DecodeString(id)
		if err != nil {
			t.Fatal(err)
		}
		rekor[id] = &root.TransparencyLog{BaseURL: "https://rekor.test", ID: raw, ValidityPeriodStart: start, HashFunc: crypto.SHA256, PublicKey: l.PublicKey, SignatureHashFunc: crypto.SHA256}
	}
	ctlogs := map[string]*root.TransparencyLog{hex.EncodeToString(s.ct.id[:]): {
		BaseURL: "https://ct.test", ID: s.ct.id[:], ValidityPeriodStart: start, HashFunc: crypto.SHA256, PublicKey: &s.ct.key.PublicKey, SignatureHashFunc: crypto.SHA256,
	}}
	cas := append(vs.FulcioCertificateAuthorities(), &root.FulcioCertificateAuthority{
		Root: rootCert, Intermediates: []*x509.Certificate{interCert}, ValidityPeriodStart: start, URI: "https://fulcio.test",
	})
	tr, err := root.NewTrustedRoot(root.TrustedRootMediaType01, cas, ctlogs, nil, rekor)
	if err != nil {
		t.Fatal(err)
	}
	js, err := tr.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	s.trustedRoot = writeFile(t, "trusted_root.json", js)
	return s
}

// rekorBundle returns a Rekor SET for a hashedrekord entry of payload, sig and pub, signed by
// the virtual log, as `cosign sign` stores it in the signature's bundle annotation.
func (s *testSigstore) rekorBundle(t *testing.T, integrated time.Time) func(payload, sig, pub []byte) *bundle.RekorBundle {
	return func(payload, sig, pub []byte) *bundle.RekorBundle {
		t.Helper()
		h := sha256.Sum256(payload)
		body := fmt.Sprintf(`{"apiVersion":"0.0.1","kind":"hashedrekord","spec":{"data":{"hash":{"algorithm":"sha256","value":%q}},"signature":{"content":%q,"publicKey":{"content":%q}}}}`,
			hex.EncodeToString(h[:]), base64.StdEncoding.EncodeToString(sig), base64.StdEncoding.EncodeToString(pub))
		b64 := base64.StdEncoding.EncodeToString([]byte(body))
		logID, err := s.vs.RekorLogID()
		if err != nil {
			t.Fatal(err)
		}
		set, err := s.vs.RekorSignPayload(tlog.RekorPayload{Body: b64, IntegratedTime: integrated.Unix(), LogIndex: 7, LogID: logID})
		if err != nil {
			t.Fatal(err)
		}
		return &bundle.RekorBundle{SignedEntryTimestamp: set, Payload: bundle.RekorPayload{Body: b64, IntegratedTime: integrated.Unix(), LogIndex: 7, LogID: logID}}
	}
}

func newSettingsVerifier(t *testing.T, s Settings, rules ...RuleSpec) *Verifier {
	t.Helper()
	p, err := CompilePolicy(rules, Deny, s)
	if err != nil {
		t.Fatal(err)
	}
	return NewVerifier(p, NewResolver(hosts.New("")))
}

const (
	githubIssuer   = "https://token.actions.githubusercontent.com"
	githubWorkflow = "https://github.com/example/app/.github/workflows/release.yml@refs/heads/main"
)

// Keyless: Fulcio-style certificates with an embedded SCT, a Rekor SET checked offline against
// the trusted root, and the identity matched on the OIDC issuer and the SAN.
func TestKeylessAuthority(t *testing.T) {
	t.Parallel()
	host := testRegistry(t)
	ss := newTestSigstore(t)
	now := time.Now()
	ci := leafSpec{uris: []string{githubWorkflow}, issuer: githubIssuer, ct: ss.ct}

	signed := pushImage(t, host+"/ci/app:signed")
	leaf, sv := ss.fulcio.issueLeaf(t, ci)
	signWithCert(t, signed, sv, leaf, []*x509.Certificate{ss.fulcio.cert}, ss.rekorBundle(t, now))

	noSET := pushImage(t, host+"/ci/app:noset")
	leaf, sv = ss.fulcio.issueLeaf(t, ci)
	signWithCert(t, noSET, sv, leaf, []*x509.Certificate{ss.fulcio.cert}, nil)

	otherLog := pushImage(t, host+"/ci/app:otherlog")
	leaf, sv = ss.fulcio.issueLeaf(t, ci)
	signWithCert(t, otherLog, sv, leaf, []*x509.Certificate{ss.fulcio.cert}, newTestSigstore(t).rekorBundle(t, now))

	noSCT := pushImage(t, host+"/ci/app:nosct")
	leaf, sv = ss.fulcio.issueLeaf(t, leafSpec{uris: []string{githubWorkflow}, issuer: githubIssuer})
	signWithCert(t, noSCT, sv, leaf, []*x509.Certificate{ss.fulcio.cert}, ss.rekorBundle(t, now))

	untrustedCA := pushImage(t, host+"/ci/app:untrusted")
	rogue := newTestRootCA(t, "rogue")
	leaf, sv = rogue.issueLeaf(t, leafSpec{uris: []string{githubWorkflow}, issuer: githubIssuer, ct: ss.ct})
	signWithCert(t, untrustedCA, sv, leaf, []*x509.Certificate{rogue.cert}, ss.rekorBundle(t, now))

	email := pushImage(t, host+"/ci/app:email")
	leaf, sv = ss.fulcio.issueLeaf(t, leafSpec{emails: []string{"dev@example.com"}, issuer: "https://accounts.example.com", ct: ss.ct})
	signWithCert(t, email, sv, leaf, []*x509.Certificate{ss.fulcio.cert}, ss.rekorBundle(t, now))

	tests := []struct {
		name    string
		d       name.Digest
		id      IdentitySpec
		allowed bool
		reason  string
	}{
		{name: "issuer and subject", d: signed, id: IdentitySpec{Issuer: githubIssuer, Subject: githubWorkflow}, allowed: true},
		{name: "workflow subjectRegExp", d: signed, id: IdentitySpec{Issuer: githubIssuer, SubjectRegExp: `^https://github\.com/example/.+`}, allowed: true},
		{name: "issuerRegExp", d: signed, id: IdentitySpec{IssuerRegExp: `https://token\.actions\..+`, Subject: githubWorkflow}, allowed: true},
		// Regular expressions match the whole value, not a part of it.
		{name: "subjectRegExp matching a part only", d: signed, id: IdentitySpec{Issuer: githubIssuer, SubjectRegExp: `github\.com/example/`}, reason: "none of 1 signature(s) verified with this keyless"},
		{name: "issuerRegExp matching a part only", d: signed, id: IdentitySpec{IssuerRegExp: `token\.actions`, Subject: githubWorkflow}, reason: "none of 1 signature(s) verified with this keyless"},
		{name: "email subject", d: email, id: IdentitySpec{Issuer: "https://accounts.example.com", Subject: "dev@example.com"}, allowed: true},
		{name: "wrong issuer", d: signed, id: IdentitySpec{Issuer: "https://gitlab.example.com", Subject: githubWorkflow}, reason: "none of 1 signature(s) verified with this keyless"},
		{name: "wrong subject", d: signed, id: IdentitySpec{Issuer: githubIssuer, Subject: "https://github.com/example/app/.github/workflows/other.yml@refs/heads/main"}, reason: "none of 1 signature(s) verified with this keyless"},
		{name: "subjectRegExp of another org", d: signed, id: IdentitySpec{Issuer: githubIssuer, SubjectRegExp: `^https://github\.com/other/.+`}, reason: "none of 1 signature(s) verified with this keyless"},
		{name: "no transparency-log proof", d: noSET, id: IdentitySpec{Issuer: githubIssuer, Subject: githubWorkflow}, reason: "transparency"},
		{name: "SET from a log the root does not trust", d: otherLog, id: IdentitySpec{Issuer: githubIssuer, Subject: githubWorkflow}, reason: "rekor log public key not found"},
		{name: "no embedded SCT", d: noSCT, id: IdentitySpec{Issuer: githubIssuer, Subject: githubWorkflow}, reason: "SCT"},
		{name: "CA not in the trusted root", d: untrustedCA, id: IdentitySpec{Issuer: githubIssuer, Subject: githubWorkflow}, reason: "leaf certificate verification failed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := testSettings
			s.TrustedRoot = ss.trustedRoot
			id := tc.id
			v := newSettingsVerifier(t, s, RuleSpec{Name: "ci", Images: []string{host + "/ci/**"}, Mode: Enforce,
				Authorities: []AuthoritySpec{{Name: "github", Keyless: &id}}})
			wantDecision(t, verifyOne(t, v, tc.d), tc.allowed, tc.reason)
		})
	}
}

// The signed payload must name the digest, carry no unknown critical field and, when the rule
// binds the repository, name the image's repository.
func TestKeySignatureClaims(t *testing.T) {
	t.Parallel()
	host := testRegistry(t)
	key := newTestKey(t)
	signed := pushImage(t, host+"/claims/app:v1")
	key.sign(t, signed, signed)

	otherDigest := pushImage(t, host+"/claims/app:other")
	key.sign(t, otherDigest, signed) // valid signature, payload names another digest

	critical := pushImage(t, host+"/claims/app:critical")
	key.signPayload(t, critical, []byte(`{"critical":{"identity":{"docker-reference":"`+critical.Context().String()+`"},"image":{"docker-manifest-digest":"`+critical.DigestStr()+`"},"type":"cosign container image signature","x-must-understand":{"expires":"2000-01-01"}},"optional":null}`))

	// A payload by the same key that says it is something other than an image signature, and
	// one that says nothing.
	otherType := pushImage(t, host+"/claims/app:othertype")
	key.signPayload(t, otherType, []byte(`{"critical":{"identity":{"docker-reference":"`+otherType.Context().String()+`"},"image":{"docker-manifest-digest":"`+otherType.DigestStr()+`"},"type":"release approval"},"optional":null}`))
	noType := pushImage(t, host+"/claims/app:notype")
	key.signPayload(t, noType, []byte(`{"critical":{"identity":{"docker-reference":"`+noType.Context().String()+`"},"image":{"docker-manifest-digest":"`+noType.DigestStr()+`"}},"optional":null}`))

	// The same image and its signature tag copied to another repository, as `cosign copy` does.
	copied, err := name.NewDigest(host + "/claims/copy@" + signed.DigestStr())
	if err != nil {
		t.Fatal(err)
	}
	copyManifest(t, signed, copied)
	from, err := ociremote.SignatureTag(signed)
	if err != nil {
		t.Fatal(err)
	}
	to, err := ociremote.SignatureTag(copied)
	if err != nil {
		t.Fatal(err)
	}
	copyManifest(t, from, to)

	tests := []struct {
		name    string
		d       name.Digest
		bind    bool
		allowed bool
		reason  string
	}{
		{name: "signed", d: signed, bind: true, allowed: true},
		{name: "payload names another digest", d: otherDigest, reason: "invalid or missing digest in claim"},
		{name: "unknown critical field", d: critical, reason: `payload has unknown critical field "x-must-understand"`},
		{name: "payload of another type", d: otherType, reason: `payload type "release approval" is not a container image signature`},
		{name: "payload without a type", d: noType, reason: `payload type "" is not a container image signature`},
		{name: "copied without bindRepository", d: copied, allowed: true},
		{name: "copied with bindRepository", d: copied, bind: true, reason: "signature is for repository \"" + host + "/claims/app\""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := keyRule("claims", []string{host + "/claims/**"}, Enforce, key)
			r.BindRepository = tc.bind
			wantDecision(t, verifyOne(t, newTestVerifier(t, r), tc.d), tc.allowed, tc.reason)
		})
	}
}

// A key authority that does not ignore the transparency log needs the signature's SET, checked
// offline against the trusted root's Rekor keys.
func TestKeyTransparencyLog(t *testing.T) {
	t.Parallel()
	host := testRegistry(t)
	ss := newTestSigstore(t)
	key := newTestKey(t)
	sign := func(tag string, rekor func(payload, sig, pub []byte) *bundle.RekorBundle) name.Digest {
		d := pushImage(t, host+"/tlog/app:"+tag)
		payload := cosignPayload(t, d)
		raw := signRaw(t, key.signer, payload)
		var opts []static.Option
		if rekor != nil {
			opts = append(opts, static.WithBundle(rekor(payload, raw, key.pem)))
		}
		attachSignature(t, d, payload, raw, opts...)
		return d
	}
	logged := sign("logged", ss.rekorBundle(t, time.Now()))
	unlogged := sign("unlogged", nil)
	otherLog := sign("otherlog", newTestSigstore(t).rekorBundle(t, time.Now()))
	// A SET for another entry: the signature in the logged body is not this one.
	mismatch := sign("mismatch", func(payload, _, pub []byte) *bundle.RekorBundle {
		return ss.rekorBundle(t, time.Now())(payload, signRaw(t, newTestKey(t).signer, payload), pub)
	})

	tests := []struct {
		name    string
		d       name.Digest
		ignore  bool
		allowed bool
		reason  string
	}{
		{name: "SET from the trusted log", d: logged, allowed: true},
		{name: "no SET", d: unlogged, reason: "no transparency-log proof (Rekor bundle) on the signature"},
		{name: "no SET, log ignored", d: unlogged, ignore: true, allowed: true},
		{name: "SET from an untrusted log", d: otherLog, reason: "rekor log public key not found"},
		{name: "SET for another signature", d: mismatch, reason: "error verifying bundle"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := testSettings
			s.TrustedRoot = ss.trustedRoot
			v := newSettingsVerifier(t, s, RuleSpec{Name: "tlog", Images: []string{host + "/tlog/**"}, Mode: Enforce,
				Authorities: []AuthoritySpec{{Name: "release", Key: &KeySpec{File: key.pemFile}, IgnoreTransparencyLog: tc.ignore}}})
			wantDecision(t, verifyOne(t, v, tc.d), tc.allowed, tc.reason)
		})
	}
}

// Certificates from a private CA: the chain is checked against the configured roots, the
// identity against the certificate's SANs, and expiry against the transparency-log time.
func TestCertificateAuthority(t *testing.T) {
	t.Parallel()
	host := testRegistry(t)
	ss := newTestSigstore(t)
	rootCA := newTestRootCA(t, "Example Root CA")
	inter := rootCA.issueCA(t, "Example Signing CA", time.Now().Add(-3*time.Hour))
	rogue := newTestRootCA(t, "Rogue Root CA").issueCA(t, "Rogue Signing CA", time.Now().Add(-3*time.Hour))
	rootsFile := writeFile(t, "roots.pem", certsPEM(t, rootCA.cert))
	const subject = "release@example.com"
	now := time.Now()

	sign := func(tag string, ca testCA, s leafSpec, rekor func(payload, sig, pub []byte) *bundle.RekorBundle) name.Digest {
		d := pushImage(t, host+"/pca/app:"+tag)
		leaf, sv := ca.issueLeaf(t, s)
		signWithCert(t, d, sv, leaf, []*x509.Certificate{ca.cert, rootCA.cert}, rekor)
		return d
	}
	ok := sign("ok", inter, leafSpec{emails: []string{subject}, uris: []string{"https://ci.example.com/release"}}, nil)
	fromRogue := sign("rogue", rogue, leafSpec{emails: []string{subject}}, nil)
	expired := leafSpec{emails: []string{subject}, notBefore: now.Add(-2 * time.Hour), notAfter: now.Add(-time.Hour)}
	expiredNoLog := sign("expired", inter, expired, nil)
	expiredLogged := sign("expired-logged", inter, expired, ss.rekorBundle(t, now.Add(-90*time.Minute)))
	expiredLoggedLate := sign("expired-logged-late", inter, expired, ss.rekorBundle(t, now))
	// Issued by the trusted root's Fulcio, not the private CA: the trusted root is there for its
	// logs only.
	fromFulcio := pushImage(t, host+"/pca/app:fulcio")
	leaf, sv := ss.fulcio.issueLeaf(t, leafSpec{emails: []string{subject}, ct: ss.ct})
	signWithCert(t, fromFulcio, sv, leaf, []*x509.Certificate{ss.fulcio.cert}, ss.rekorBundle(t, now))

	tests := []struct {
		name          string
		d             name.Digest
		id            IdentitySpec
		intermediates bool
		tlog          bool
		allowed       bool
		reason        string
	}{
		{name: "subject", d: ok, id: IdentitySpec{Subject: subject}, allowed: true},
		{name: "URI subject", d: ok, id: IdentitySpec{Subject: "https://ci.example.com/release"}, allowed: true},
		{name: "intermediates configured", d: ok, id: IdentitySpec{Subject: subject}, intermediates: true, allowed: true},
		{name: "subjectRegExp", d: ok, id: IdentitySpec{SubjectRegExp: `^[a-z]+@example\.com$`}, allowed: true},
		{name: "wrong subject", d: ok, id: IdentitySpec{Subject: "dev@example.com"}, reason: "none of 1 signature(s) verified with this certificate"},
		{name: "subjectRegExp no match", d: ok, id: IdentitySpec{SubjectRegExp: `^ops@`}, reason: "none of 1 signature(s) verified with this certificate"},
		{name: "another CA", d: fromRogue, id: IdentitySpec{Subject: subject}, reason: "x509: certificate signed by unknown authority"},
		{name: "expired, log ignored: fail closed", d: expiredNoLog, id: IdentitySpec{Subject: subject}, reason: "expected a signed timestamp to verify an expired certificate"},
		{name: "expired, logged while valid", d: expiredLogged, id: IdentitySpec{Subject: subject}, intermediates: true, tlog: true, allowed: true},
		{name: "expired, logged after expiry", d: expiredLoggedLate, id: IdentitySpec{Subject: subject}, intermediates: true, tlog: true, reason: "certificate expired before signatures were entered in log"},
		{name: "trusted root's Fulcio is not the private CA", d: fromFulcio, id: IdentitySpec{Subject: subject}, intermediates: true, tlog: true, reason: "leaf certificate verification failed"},
		{name: "expired, log required but absent", d: expiredNoLog, id: IdentitySpec{Subject: subject}, intermediates: true, tlog: true, reason: "no transparency-log proof"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := &CertificateSpec{Roots: rootsFile, IdentitySpec: tc.id}
			if tc.intermediates {
				c.Intermediates = writeFile(t, "intermediates.pem", certsPEM(t, inter.cert))
			}
			s := testSettings
			s.TrustedRoot = ss.trustedRoot
			v := newSettingsVerifier(t, s, RuleSpec{Name: "pca", Images: []string{host + "/pca/**"}, Mode: Enforce,
				Authorities: []AuthoritySpec{{Name: "corp", Certificate: c, IgnoreTransparencyLog: !tc.tlog}}})
			wantDecision(t, verifyOne(t, v, tc.d), tc.allowed, tc.reason)
		})
	}
}
