package verify

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/sigstore/cosign/v2/pkg/oci/mutate"
	ociremote "github.com/sigstore/cosign/v2/pkg/oci/remote"
	"github.com/sigstore/cosign/v2/pkg/oci/static"
	"github.com/sigstore/sigstore/pkg/signature/dsse"
)

const vulnType = "https://cosign.sigstore.dev/attestation/vuln/v1"

// attest attaches an in-toto statement about d, in a DSSE envelope signed with k, as
// `cosign attest --key` does.
func (k testKey) attest(t *testing.T, d name.Digest, predicateType string, predicate any) {
	t.Helper()
	st, err := json.Marshal(map[string]any{
		"_type":         "https://in-toto.io/Statement/v0.1",
		"predicateType": predicateType,
		"subject":       []map[string]any{{"name": d.Context().String(), "digest": map[string]string{"sha256": d.DigestStr()[len("sha256:"):]}}},
		"predicate":     predicate,
	})
	if err != nil {
		t.Fatal(err)
	}
	env, err := dsse.WrapSigner(k.signer, "application/vnd.in-toto+json").SignMessage(bytes.NewReader(st))
	if err != nil {
		t.Fatal(err)
	}
	att, err := static.NewAttestation(env)
	if err != nil {
		t.Fatal(err)
	}
	se, err := ociremote.SignedEntity(d)
	if err != nil {
		t.Fatal(err)
	}
	se, err = mutate.AttachAttestationToEntity(se, att)
	if err != nil {
		t.Fatal(err)
	}
	if err := ociremote.WriteAttestations(d.Repository, se); err != nil {
		t.Fatal(err)
	}
}

func scan(critical int) map[string]any {
	return map[string]any{"scanner": map[string]any{"uri": "pkg:github/aquasecurity/trivy", "result": map[string]any{"summary": map[string]any{"CRITICAL": critical, "HIGH": 3}}}}
}

func TestVerifyAttestations(t *testing.T) {
	t.Parallel()
	host := testRegistry(t)
	key, stranger := newTestKey(t), newTestKey(t)
	image := func(tag string, att func(d name.Digest)) name.Digest {
		d := pushImage(t, host+"/att/app:"+tag)
		key.sign(t, d, d)
		if att != nil {
			att(d)
		}
		return d
	}
	clean := image("clean", func(d name.Digest) { key.attest(t, d, vulnType, scan(0)) })
	critical := image("critical", func(d name.Digest) { key.attest(t, d, vulnType, scan(2)) })
	otherType := image("othertype", func(d name.Digest) { key.attest(t, d, "https://slsa.dev/provenance/v1", map[string]any{}) })
	none := image("none", nil)
	strangers := image("stranger", func(d name.Digest) { stranger.attest(t, d, vulnType, scan(0)) })
	both := image("both", func(d name.Digest) {
		key.attest(t, d, vulnType, scan(0))
		key.attest(t, d, "https://slsa.dev/provenance/v1", map[string]any{"buildType": "https://example.com/build"})
	})
	// An attestation for another image, copied next to this one: its subject does not match.
	copied := image("copied", func(d name.Digest) {
		key.attest(t, d, vulnType, scan(0))
	})
	copiedTo := pushImage(t, host+"/att/app:copiedto")
	key.sign(t, copiedTo, copiedTo)
	copyAttestations(t, copied, copiedTo)

	vuln := AttestationSpec{Name: "no-critical", PredicateType: vulnType, Condition: "predicate.scanner.result.summary.CRITICAL == 0"}
	provenance := AttestationSpec{Name: "provenance", PredicateType: "https://slsa.dev/provenance/v1", Condition: `predicate.buildType.startsWith("https://example.com/")`}
	tests := []struct {
		name    string
		d       name.Digest
		atts    []AttestationSpec
		allowed bool
		reason  string
	}{
		{name: "condition true", d: clean, atts: []AttestationSpec{vuln}, allowed: true},
		{name: "no condition", d: clean, atts: []AttestationSpec{{Name: "scanned", PredicateType: vulnType}}, allowed: true},
		{name: "condition false", d: critical, atts: []AttestationSpec{vuln}, reason: "attestation no-critical: want predicate type " + vulnType + " with its condition true, found: condition is false"},
		{name: "missing predicate type", d: otherType, atts: []AttestationSpec{vuln}, reason: "attestation no-critical: want predicate type " + vulnType + " with its condition true, found: signed https://slsa.dev/provenance/v1"},
		{name: "no attestation", d: none, atts: []AttestationSpec{vuln}, reason: "attestation no-critical: no attestation found"},
		{name: "signed by a key that is not an authority", d: strangers, atts: []AttestationSpec{vuln}, reason: "is signed by the rule's authorities"},
		{name: "all attestations hold", d: both, atts: []AttestationSpec{vuln, provenance}, allowed: true},
		{name: "one of two missing", d: clean, atts: []AttestationSpec{vuln, provenance}, reason: "attestation provenance:"},
		{name: "subject of another image", d: copiedTo, atts: []AttestationSpec{vuln}, reason: "attestation no-critical: none of 1 attestation(s)"},
		{name: "condition on a missing field", d: otherType, atts: []AttestationSpec{{Name: "typed", PredicateType: "https://slsa.dev/provenance/v1", Condition: "predicate.scanner.result.summary.CRITICAL == 0"}}, reason: "condition could not be evaluated"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := keyRule("att", []string{host + "/att/**"}, Enforce, key)
			r.Attestations = tc.atts
			wantDecision(t, verifyOne(t, newTestVerifier(t, r), tc.d), tc.allowed, tc.reason)
		})
	}
}

// copyAttestations copies src's attestation manifest to dst's attestation tag.
func copyAttestations(t *testing.T, src, dst name.Digest) {
	t.Helper()
	from, err := ociremote.AttestationTag(src)
	if err != nil {
		t.Fatal(err)
	}
	to, err := ociremote.AttestationTag(dst)
	if err != nil {
		t.Fatal(err)
	}
	copyManifest(t, from, to)
}
