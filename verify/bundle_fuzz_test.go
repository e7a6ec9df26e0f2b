package verify

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	protocommon "github.com/sigstore/protobuf-specs/gen/pb-go/common/v1"
	"github.com/sigstore/sigstore-go/pkg/bundle"
	"github.com/sigstore/sigstore-go/pkg/sign"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// fuzzSigningKey is a fixed P-256 key, so that the bundles one fuzzing process signs as seeds
// verify in every other.
const fuzzSigningKey = `-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgdThEDQaY+wFYnORD
4fCwYPIvbPLc1KM/eQ3D7PPbLj+hRANCAATRK91PobQMnWPMCP60rSJQt3xC/yyf
2J2Ht929HIJSwY3Fe+3vZzI6A5kUOG/0CLE2NS6Wa/+unXGW7NI8Wp+Y
-----END PRIVATE KEY-----
`

// fuzzManifest stands for the image whose digest the fuzzed bundles are checked against.
var fuzzManifest = []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}`)

// fixedKeypair is a sign.Keypair over fuzzSigningKey.
type fixedKeypair struct{ key *ecdsa.PrivateKey }

func (k fixedKeypair) GetHashAlgorithm() protocommon.HashAlgorithm {
	return protocommon.HashAlgorithm_SHA2_256
}
func (k fixedKeypair) GetSigningAlgorithm() protocommon.PublicKeyDetails {
	return protocommon.PublicKeyDetails_PKIX_ECDSA_P256_SHA_256
}
func (k fixedKeypair) GetHint() []byte                { return nil }
func (k fixedKeypair) GetKeyAlgorithm() string        { return "ECDSA" }
func (k fixedKeypair) GetPublicKey() crypto.PublicKey { return &k.key.PublicKey }
func (k fixedKeypair) GetPublicKeyPem() (string, error) {
	b, err := cryptoutils.MarshalPublicKeyToPEM(&k.key.PublicKey)
	return string(b), err
}
func (k fixedKeypair) SignData(_ context.Context, data []byte) ([]byte, []byte, error) {
	h := sha256.Sum256(data)
	sig, err := ecdsa.SignASN1(nil, k.key, h[:])
	return sig, h[:], err
}

func loadFixedKeypair(tb testing.TB) fixedKeypair {
	tb.Helper()
	block, _ := pem.Decode([]byte(fuzzSigningKey))
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		tb.Fatal(err)
	}
	return fixedKeypair{key.(*ecdsa.PrivateKey)}
}

// fuzzAuthority is a key authority over the fixed key, without a transparency log, compiled
// as the configuration's would be.
func fuzzAuthority(tb testing.TB, kp fixedKeypair) *authority {
	tb.Helper()
	pub, err := kp.GetPublicKeyPem()
	if err != nil {
		tb.Fatal(err)
	}
	p, err := CompilePolicy([]RuleSpec{{
		Name: "bundles", Images: []string{"registry.example.com/**"}, Mode: Enforce,
		Authorities: []AuthoritySpec{{Name: "release", Key: &KeySpec{Data: pub}, IgnoreTransparencyLog: true}},
	}}, Deny, Settings{Timeout: time.Minute, MaxSignatures: 8, MaxBytes: 1 << 20})
	if err != nil {
		tb.Fatal(err)
	}
	return p.rules[0].authorities[0]
}

func fuzzSignBundle(tb testing.TB, content sign.Content, kp fixedKeypair) []byte {
	tb.Helper()
	b, err := sign.Bundle(content, kp, sign.BundleOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	js, err := protojson.Marshal(b)
	if err != nil {
		tb.Fatal(err)
	}
	return js
}

// FuzzParseBundle checks what pullgate does with a sigstore bundle layer fetched from a
// referrer, which anyone who can push to the repository can write:
//   - parseBundle never panics, and gives either a bundle or an error, never both;
//   - the predicate type it classifies the bundle by is the one its DSSE statement claims (or
//     says it is no in-toto statement), and a message signature is classified as a signature;
//   - a bundle it reads encodes and reads again to the same bundle and classification;
//   - verification with a key authority never panics, and a bundle that verifies covers the
//     digest: a statement naming it, or a message digest equal to it; as an image signature
//     it counts only if it is cosign's statement.
func FuzzParseBundle(f *testing.F) {
	kp := loadFixedKeypair(f)
	a := fuzzAuthority(f, kp)
	sum := sha256.Sum256(fuzzManifest)
	h := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
	statement := func(subject, predicateType string) []byte {
		b, _ := json.Marshal(map[string]any{
			"_type":         "https://in-toto.io/Statement/v1",
			"subject":       []map[string]any{{"name": fuzzRepo, "digest": map[string]string{"sha256": subject}}},
			"predicateType": predicateType,
			"predicate":     map[string]any{},
		})
		return b
	}
	// The bundles of bundle_test.go: signed statements, an attestation, message signatures, junk.
	f.Add(fuzzSignBundle(f, &sign.DSSEData{Data: statement(h.Hex, cosignSignPredicate), PayloadType: bundle.IntotoMediaType}, kp))
	f.Add(fuzzSignBundle(f, &sign.DSSEData{Data: statement(strings.Repeat("0", 64), cosignSignPredicate), PayloadType: bundle.IntotoMediaType}, kp))
	f.Add(fuzzSignBundle(f, &sign.DSSEData{Data: statement(h.Hex, "https://slsa.dev/provenance/v1"), PayloadType: bundle.IntotoMediaType}, kp))
	f.Add(fuzzSignBundle(f, &sign.DSSEData{Data: statement(h.Hex, ""), PayloadType: bundle.IntotoMediaType}, kp))
	f.Add(fuzzSignBundle(f, &sign.DSSEData{Data: statement(h.Hex, cosignSignPredicate), PayloadType: "text/plain"}, kp))
	f.Add(fuzzSignBundle(f, &sign.PlainData{Data: fuzzManifest}, kp))
	f.Add(fuzzSignBundle(f, &sign.PlainData{Data: []byte("another manifest")}, kp))
	f.Add([]byte(`{"mediaType": "not a bundle"}`))
	f.Add([]byte(`{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json"}`))
	f.Add([]byte(`{"mediaType":"application/vnd.dev.sigstore.bundle+json;version=0.1","verificationMaterial":{"publicKey":{"hint":""},"tlogEntries":[]},"messageSignature":{"messageDigest":{"algorithm":"SHA2_256","digest":""},"signature":""}}`))
	f.Add([]byte(`{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","verificationMaterial":{"certificate":{"rawBytes":""}},"dsseEnvelope":{"payload":"","payloadType":"application/vnd.in-toto+json","signatures":[]}}`))
	f.Add([]byte(``))
	f.Fuzz(func(t *testing.T, raw []byte) {
		const name = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
		sb := parseBundle(name, raw)
		if sb == nil || (sb.b == nil) == (sb.err == nil) {
			t.Fatalf("parseBundle(%q) = %+v: want a bundle or an error", raw, sb)
		}
		if sb.err != nil {
			if sb.predicateType != "" || !strings.Contains(sb.err.Error(), name) {
				t.Fatalf("parseBundle(%q): error %v with predicate type %q", raw, sb.err, sb.predicateType)
			}
			return
		}
		env := sb.b.GetDsseEnvelope()
		switch {
		case env == nil && sb.predicateType != "":
			t.Fatalf("bundle without an envelope classified as predicate type %q", sb.predicateType)
		case env == nil && !sb.signature():
			t.Fatal("message signature bundle not classified as a signature")
		case env != nil && env.PayloadType != bundle.IntotoMediaType && sb.predicateType != "unknown payload type "+env.PayloadType:
			t.Fatalf("envelope of payload type %q classified as %q", env.PayloadType, sb.predicateType)
		case env != nil && env.PayloadType == bundle.IntotoMediaType:
			var st inTotoStatement
			if err := json.Unmarshal(env.Payload, &st); err == nil && st.PredicateType != sb.predicateType {
				t.Fatalf("statement of predicate type %q classified as %q", st.PredicateType, sb.predicateType)
			}
		}

		js, err := sb.b.MarshalJSON()
		if err != nil {
			t.Fatalf("bundle read from %q does not encode: %v", raw, err)
		}
		again := parseBundle(name, js)
		if again.err != nil || !proto.Equal(again.b.Bundle, sb.b.Bundle) || again.predicateType != sb.predicateType {
			t.Fatalf("bundle read from %q encodes to %s, which reads back as %+v", raw, js, again)
		}

		st, err := verifyBundle(a, sb.b, h)
		if err != nil {
			return
		}
		switch env := sb.b.GetDsseEnvelope(); {
		case env != nil:
			if st == nil || env.PayloadType != bundle.IntotoMediaType {
				t.Fatalf("envelope of payload type %q verified with statement %+v", env.PayloadType, st)
			}
			covered := false
			for _, s := range st.Subject {
				covered = covered || s.Digest["sha256"] == h.Hex
			}
			if !covered {
				t.Fatalf("statement %s verified for %s without naming it", env.Payload, h)
			}
		default:
			ms := sb.b.GetMessageSignature()
			if st != nil || ms == nil || !bytes.Equal(ms.GetMessageDigest().GetDigest(), sum[:]) {
				t.Fatalf("message signature %+v verified for %s", ms, h)
			}
		}
		res := verifyBundleSignatures(a, AuthorityResult{Name: a.name}, 0, []sigstoreBundle{*sb}, h, &rule{}, fuzzImage(fuzzRepo))
		if res.Verified != (sb.signature() && st != nil && st.PredicateType == cosignSignPredicate) {
			t.Fatalf("bundle of predicate type %q (statement %+v): verified as an image signature = %v", sb.predicateType, st, res.Verified)
		}
	})
}
