package verify

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/sigstore/cosign/v2/pkg/oci/static"
	sigpayload "github.com/sigstore/sigstore/pkg/signature/payload"
)

// fuzzDigest is the digest the fuzzed payloads and statements are checked against.
const fuzzDigest = "sha256:4b7dd2f1e1e1ad2bc7a6b7f9d4f2b8d0c5e6a7f8091a2b3c4d5e6f708192a3b4"

const fuzzRepo = "registry.example.com/claims/app"

// fuzzImage is the image a fuzzed ref names, or fuzzRepo's when ref is no reference.
func fuzzImage(ref string) Image {
	if img, err := ParseImage(ref); err == nil {
		return img
	}
	img, _ := ParseImage(fuzzRepo)
	return img
}

// FuzzClaimVerifier checks the reading of cosign simple-signing payloads, which anyone who can
// push to a repository can write (only the signature over them is trusted):
//   - claimVerifier never panics;
//   - a payload it accepts names the digest, as cosign's own decoding of the payload reads it,
//     and a container-signature type, again as cosign reads it: pullgate's reading of the
//     critical section and cosign's agree;
//   - it carries no critical field besides identity, image and type (in any spelling of
//     "critical" that encoding/json would take);
//   - with bindRepository, its docker-reference names the image's repository;
//   - the payload cosign itself writes for ref@digest is always accepted for ref's image, when
//     pullgate takes ref for a reference.
func FuzzClaimVerifier(f *testing.F) {
	for _, s := range []struct {
		payload string
		bind    bool
		ref     string
	}{
		{`{"critical":{"identity":{"docker-reference":"` + fuzzRepo + `"},"image":{"docker-manifest-digest":"` + fuzzDigest + `"},"type":"cosign container image signature"},"optional":null}`, true, fuzzRepo},
		{`{"critical":{"identity":{"docker-reference":"` + fuzzRepo + `"},"image":{"docker-manifest-digest":"` + fuzzDigest + `"},"type":"cosign container image signature"},"optional":null}`, true, "registry.example.com/claims/copy"},
		{`{"critical":{"identity":{"docker-reference":"` + fuzzRepo + `"},"image":{"docker-manifest-digest":"` + fuzzDigest + `"},"type":"atomic container signature"},"optional":{"a":"b"}}`, false, fuzzRepo},
		// TestKeySignatureClaims: an unknown critical field.
		{`{"critical":{"identity":{"docker-reference":"` + fuzzRepo + `"},"image":{"docker-manifest-digest":"` + fuzzDigest + `"},"type":"cosign container image signature","x-must-understand":{"expires":"2000-01-01"}},"optional":null}`, false, fuzzRepo},
		// Another digest.
		{`{"critical":{"identity":{"docker-reference":"` + fuzzRepo + `"},"image":{"docker-manifest-digest":"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"},"type":"cosign container image signature"},"optional":null}`, false, fuzzRepo},
		{`{"critical":{"identity":{"docker-reference":"nginx"},"image":{"docker-manifest-digest":"` + fuzzDigest + `"},"type":"cosign container image signature"}}`, true, "docker.io/library/nginx:1.27"},
		{`{"critical":{"image":{"docker-manifest-digest":"` + fuzzDigest + `"},"type":"other"}}`, false, fuzzRepo},
		{`{"critical":{"image":{"docker-manifest-digest":"` + fuzzDigest + `"},"type":"cosign container image signature"},"Critical":null}`, false, fuzzRepo},
		{`{"Critical":{"IMAGE":{"Docker-Manifest-Digest":"` + fuzzDigest + `"},"type":"cosign container image signature"}}`, false, fuzzRepo},
		{`{}`, false, ""}, {`null`, true, ""}, {``, false, ""},
	} {
		f.Add([]byte(s.payload), s.bind, s.ref)
	}
	h, err := v1.NewHash(fuzzDigest)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, payload []byte, bind bool, ref string) {
		img := fuzzImage(ref)
		sig, err := static.NewSignature(payload, "c2lnbmF0dXJl")
		if err != nil {
			t.Fatal(err)
		}
		if err := claimVerifier(bind, img)(sig, h, nil); err == nil {
			var ss sigpayload.SimpleContainerImage
			if err := json.Unmarshal(payload, &ss); err != nil {
				t.Fatalf("accepted %q, which cosign's payload type does not read: %v", payload, err)
			}
			if got := ss.Critical.Image.DockerManifestDigest; got != h.String() {
				t.Fatalf("accepted %q, which names digest %q", payload, got)
			}
			if typ := ss.Critical.Type; typ != "cosign container image signature" && typ != "atomic container signature" {
				t.Fatalf("accepted %q, whose type reads as %q", payload, typ)
			}
			if bind {
				signed, err := ParseImage(ss.Critical.Identity.DockerReference)
				if err != nil || signed.Name() != img.Name() {
					t.Fatalf("accepted %q for %s with bindRepository, but it names %q", payload, img.Name(), ss.Critical.Identity.DockerReference)
				}
			}
			for _, crit := range criticalObjects(t, payload) {
				for k := range crit {
					if k != "identity" && k != "image" && k != "type" {
						t.Fatalf("accepted %q with the unknown critical field %q", payload, k)
					}
				}
			}
		}

		// What cosign writes for a reference is accepted for its image.
		if named, err := name.ParseReference(ref, name.StrictValidation); err == nil {
			d, err := name.NewDigest(named.Context().Name() + "@" + fuzzDigest)
			if err != nil {
				return
			}
			signed, err := ParseImage(d.String())
			if err != nil {
				return
			}
			// Older cosign names the repository, newer the reference signed; a reference
			// pullgate refuses (go-containerregistry takes tags such as ".0" that
			// distribution/reference refuses, and no registry stores) never binds.
			claims := []string{""}
			if _, err := ParseImage(named.String()); err == nil {
				claims = append(claims, named.String())
			}
			for _, claimed := range claims {
				good, err := sigpayload.Cosign{Image: d, ClaimedIdentity: claimed, Annotations: map[string]any{"ref": ref}}.MarshalJSON()
				if err != nil {
					t.Fatal(err)
				}
				sig, _ := static.NewSignature(good, "c2lnbmF0dXJl")
				if err := claimVerifier(true, signed)(sig, h, nil); err != nil {
					t.Fatalf("cosign's own payload %s for %s rejected: %v", good, signed.Name(), err)
				}
			}
		}
	})
}

// criticalObjects returns the objects encoding/json decodes into a field tagged "critical":
// those under every top-level key that equals "critical" case-insensitively.
func criticalObjects(t *testing.T, payload []byte) []map[string]json.RawMessage {
	dec := json.NewDecoder(bytes.NewReader(payload))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil
	}
	var out []map[string]json.RawMessage
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			t.Fatalf("accepted %q, which is no JSON object: %v", payload, err)
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			t.Fatalf("accepted %q, which is no JSON object: %v", payload, err)
		}
		if k, _ := tok.(string); strings.EqualFold(k, "critical") {
			var m map[string]json.RawMessage
			if json.Unmarshal(v, &m) == nil {
				out = append(out, m)
			}
		}
	}
	return out
}

// FuzzStatement checks the reading of in-toto statements: from a DSSE envelope under the .att
// tag (statement) and from a sigstore bundle's envelope (bundleStatement):
//   - neither panics;
//   - statement reads what the envelope's base64 payload holds, and a statement it reads
//     survives a JSON round trip;
//   - a statement verifyBundle reads has the predicate type fetchBundle classified the bundle
//     by, so a bundle cannot be counted as an attestation and verified as a signature;
//   - checkBundleSignature accepts only cosign's signing predicate and, with bindRepository,
//     only a statement whose first named subject with the digest names the image's repository;
//   - evalStatement accepts a statement for its own predicate type and no other.
func FuzzStatement(f *testing.F) {
	alg, hexDigest, _ := strings.Cut(fuzzDigest, ":")
	for _, s := range []struct {
		st   string
		bind bool
		ref  string
	}{
		// inTotoJSON in bundle_test.go: cosign v3's statement, a subject without a name.
		{`{"_type":"https://in-toto.io/Statement/v1","subject":[{"digest":{"` + alg + `":"` + hexDigest + `"}}],"predicateType":"` + cosignSignPredicate + `","predicate":{}}`, false, fuzzRepo},
		{`{"_type":"https://in-toto.io/Statement/v1","subject":[{"digest":{"` + alg + `":"` + hexDigest + `"}}],"predicateType":"` + cosignSignPredicate + `","predicate":{}}`, true, fuzzRepo},
		// attest in attestation_test.go: a named subject and a vulnerability scan.
		{`{"_type":"https://in-toto.io/Statement/v0.1","predicateType":"` + vulnType + `","subject":[{"name":"` + fuzzRepo + `","digest":{"sha256":"` + hexDigest + `"}}],"predicate":{"scanner":{"uri":"pkg:github/aquasecurity/trivy","result":{"summary":{"CRITICAL":0,"HIGH":3}}}}}`, false, fuzzRepo},
		{`{"_type":"https://in-toto.io/Statement/v1","predicateType":"` + cosignSignPredicate + `","subject":[{"name":"` + fuzzRepo + `","digest":{"sha256":"` + hexDigest + `"}}],"predicate":{}}`, true, fuzzRepo},
		{`{"_type":"https://in-toto.io/Statement/v1","predicateType":"` + cosignSignPredicate + `","subject":[{"name":"registry.example.com/other","digest":{"sha256":"` + hexDigest + `"}},{"name":"` + fuzzRepo + `","digest":{"sha256":"` + hexDigest + `"}}],"predicate":{}}`, true, fuzzRepo},
		{`{"predicateType":"https://slsa.dev/provenance/v1","predicate":{"buildType":"https://example.com/build"}}`, false, ""},
		{`{"predicateType":"","predicate":null,"subject":5}`, true, ""},
		{`{"predicateType":5}`, false, ""}, {`[]`, false, ""}, {`null`, false, ""},
	} {
		f.Add([]byte(s.st), []byte(`{"payloadType":"application/vnd.in-toto+json","payload":"`+base64.StdEncoding.EncodeToString([]byte(s.st))+`","signatures":[{"keyid":"","sig":"c2ln"}]}`), s.bind, s.ref)
	}
	f.Add([]byte(`{}`), []byte(`{"payload":"not base64"}`), false, "")
	f.Add([]byte(`{}`), []byte(`{"payload":5}`), false, "")
	h, err := v1.NewHash(fuzzDigest)
	if err != nil {
		f.Fatal(err)
	}
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, st, env []byte, bind bool, ref string) {
		img := fuzzImage(ref)

		// The .att envelope, as fetched, and one around st.
		if att, err := static.NewAttestation(env); err == nil {
			if got, err := statement(att); err == nil {
				roundTrip(t, got)
			}
		}
		wrapped, err := json.Marshal(map[string]string{"payload": base64.StdEncoding.EncodeToString(st)})
		if err != nil {
			t.Fatal(err)
		}
		att, err := static.NewAttestation(wrapped)
		if err != nil {
			t.Fatal(err)
		}
		got, err := statement(att)
		var want inTotoStatement
		if werr := json.Unmarshal(st, &want); (err == nil) != (werr == nil) {
			t.Fatalf("statement(%q): %v, but the payload decodes with error %v", st, err, werr)
		} else if err == nil {
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("statement(%q) = %+v, want %+v", st, got, want)
			}
			roundTrip(t, got)
			if ok, _ := evalStatement(ctx, &attestation{predicateType: got.PredicateType}, got); !ok {
				t.Fatalf("statement of type %q does not satisfy a spec for that type", got.PredicateType)
			}
			if ok, why := evalStatement(ctx, &attestation{predicateType: got.PredicateType + "x"}, got); ok || why != "signed "+got.PredicateType {
				t.Fatalf("statement of type %q satisfies a spec for another type (%q)", got.PredicateType, why)
			}
		}

		// A bundle's statement: what fetchBundle classifies by, then what verifyBundle reads.
		var bst bundleStatement
		if err := json.Unmarshal(st, &bst); err != nil {
			return
		}
		var early inTotoStatement
		if err := json.Unmarshal(st, &early); err != nil || early.PredicateType != bst.PredicateType {
			t.Fatalf("statement %q verified as predicate type %q, classified as %q (%v)", st, bst.PredicateType, early.PredicateType, err)
		}
		if sig := (sigstoreBundle{predicateType: early.PredicateType}).signature(); sig != (bst.PredicateType == "" || bst.PredicateType == cosignSignPredicate) {
			t.Fatalf("statement of type %q classified as signature=%v", bst.PredicateType, sig)
		}
		if checkBundleSignature(nil, h, bind, img) == nil {
			t.Fatal("a message signature counts as an image signature")
		}
		if err := checkBundleSignature(&bst, h, bind, img); err == nil {
			if bst.PredicateType != cosignSignPredicate {
				t.Fatalf("statement of type %q accepted as an image signature", bst.PredicateType)
			}
			if bind {
				named := false
				for _, s := range bst.Subject {
					if s.Digest[h.Algorithm] != h.Hex || s.Name == "" {
						continue
					}
					signed, err := ParseImage(s.Name)
					if err != nil || signed.Name() != img.Name() {
						t.Fatalf("statement %q accepted for %s, but its first subject with the digest is %q", st, img.Name(), s.Name)
					}
					named = true
					break
				}
				if !named {
					t.Fatalf("statement %q accepted for %s with bindRepository, but names no subject with the digest", st, img.Name())
				}
			}
		} else if bst.PredicateType == cosignSignPredicate && !bind {
			t.Fatalf("cosign's statement rejected without bindRepository: %v", err)
		}
	})
}

// roundTrip checks that a statement pullgate read encodes and decodes to itself.
func roundTrip(t *testing.T, st inTotoStatement) {
	t.Helper()
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatalf("statement %+v does not encode: %v", st, err)
	}
	var again inTotoStatement
	if err := json.Unmarshal(b, &again); err != nil || !reflect.DeepEqual(again, st) {
		t.Fatalf("statement %+v encodes to %s, which decodes to %+v (%v)", st, b, again, err)
	}
}
