package harness

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/sigstore/cosign/v2/pkg/oci"
	"github.com/sigstore/cosign/v2/pkg/oci/mutate"
	ociremote "github.com/sigstore/cosign/v2/pkg/oci/remote"
	"github.com/sigstore/cosign/v2/pkg/oci/static"
	"github.com/sigstore/cosign/v2/pkg/types"
	"github.com/sigstore/sigstore-go/pkg/sign"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/sigstore/sigstore/pkg/signature/dsse"
	sigpayload "github.com/sigstore/sigstore/pkg/signature/payload"
	"google.golang.org/protobuf/encoding/protojson"
)

// Key is an ECDSA P-256 key pair made for one test, like `cosign generate-key-pair` makes.
type Key struct {
	signer signature.SignerVerifier
	// PublicPEM is the public key as a policy's key authority takes it.
	PublicPEM []byte
}

// NewKey generates a key pair.
func NewKey(t T) *Key {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sv, err := signature.LoadECDSASignerVerifier(priv, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	pem, err := cryptoutils.MarshalPublicKeyToPEM(priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	return &Key{signer: sv, PublicPEM: pem}
}

// Sign attaches a cosign signature by key to repo@digest (simple-signing payload under the
// sha256-HEX.sig tag), as `cosign sign --key --tlog-upload=false` does. The registry's own
// requests for it are not counted.
func (r *Registry) Sign(t T, key *Key, repo string, digest v1.Hash) {
	t.Helper()
	d := r.digest(t, repo, digest)
	pl, err := sigpayload.Cosign{Image: d}.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := key.signer.SignMessage(bytes.NewReader(pl))
	if err != nil {
		t.Fatal(err)
	}
	sig, err := static.NewSignature(pl, base64.StdEncoding.EncodeToString(raw))
	if err != nil {
		t.Fatal(err)
	}
	r.attach(t, d, func(se oci.SignedEntity) (oci.SignedEntity, error) {
		return mutate.AttachSignatureToEntity(se, sig)
	}, ociremote.WriteSignatures)
}

// Attest attaches an in-toto attestation of predicateType with predicate, for repo@digest and
// signed by key in a DSSE envelope, under the sha256-HEX.att tag, as `cosign attest --key
// --tlog-upload=false` does. The registry's own requests for it are not counted.
func (r *Registry) Attest(t T, key *Key, repo string, digest v1.Hash, predicateType string, predicate any) {
	t.Helper()
	d := r.digest(t, repo, digest)
	statement, err := json.Marshal(map[string]any{
		"_type":         "https://in-toto.io/Statement/v0.1",
		"predicateType": predicateType,
		"subject":       []any{map[string]any{"name": d.Context().Name(), "digest": map[string]string{digest.Algorithm: digest.Hex}}},
		"predicate":     predicate,
	})
	if err != nil {
		t.Fatal(err)
	}
	envelope, err := dsse.WrapSigner(key.signer, types.IntotoPayloadType).SignMessage(bytes.NewReader(statement))
	if err != nil {
		t.Fatal(err)
	}
	att, err := static.NewAttestation(envelope,
		static.WithLayerMediaType(types.DssePayloadType),
		static.WithAnnotations(map[string]string{"predicateType": predicateType}))
	if err != nil {
		t.Fatal(err)
	}
	r.attach(t, d, func(se oci.SignedEntity) (oci.SignedEntity, error) {
		return mutate.AttachAttestationToEntity(se, att)
	}, ociremote.WriteAttestations)
}

// attach adds to what is already attached to d and writes the result, with the push helpers'
// credentials and uncounted transport.
func (r *Registry) attach(t T, d name.Digest, add func(oci.SignedEntity) (oci.SignedEntity, error),
	write func(name.Repository, oci.SignedEntity, ...ociremote.Option) error) {
	t.Helper()
	opt := ociremote.WithRemoteOptions(r.remoteOptions()...)
	se, err := ociremote.SignedEntity(d, opt)
	if err != nil {
		t.Fatalf("get %s: %v", d, err)
	}
	if se, err = add(se); err != nil {
		t.Fatalf("attach to %s: %v", d, err)
	}
	if err := write(d.Repository, se, opt); err != nil {
		t.Fatalf("write what is attached to %s: %v", d, err)
	}
}

func (r *Registry) digest(t T, repo string, digest v1.Hash) name.Digest {
	t.Helper()
	d, err := name.NewDigest(fmt.Sprintf("%s/%s@%s", r.Host, repo, digest), name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// BundleKey is a key pair for sigstore bundles, made with sigstore-go.
type BundleKey struct {
	keypair *sign.EphemeralKeypair
	// PublicPEM is the public key as a policy's key authority takes it.
	PublicPEM []byte
}

// NewBundleKey generates an ECDSA P-256 key pair.
func NewBundleKey(t T) *BundleKey {
	t.Helper()
	kp, err := sign.NewEphemeralKeypair(nil)
	if err != nil {
		t.Fatal(err)
	}
	pem, err := kp.GetPublicKeyPem()
	if err != nil {
		t.Fatal(err)
	}
	return &BundleKey{keypair: kp, PublicPEM: []byte(pem)}
}

// SignBundle attaches a sigstore bundle signature by key to repo@digest as cosign v3 does: a
// DSSE in-toto statement about the digest, attached through the OCI referrers API.
func (r *Registry) SignBundle(t T, key *BundleKey, repo string, digest v1.Hash) {
	t.Helper()
	const predicateType = "https://sigstore.dev/cosign/sign/v1"
	d := r.digest(t, repo, digest)
	statement, err := json.Marshal(map[string]any{
		"_type":         "https://in-toto.io/Statement/v1",
		"subject":       []map[string]any{{"digest": map[string]string{digest.Algorithm: digest.Hex}}},
		"predicateType": predicateType,
		"predicate":     map[string]any{},
	})
	if err != nil {
		t.Fatal(err)
	}
	b, err := sign.Bundle(&sign.DSSEData{Data: statement, PayloadType: "application/vnd.in-toto+json"}, key.keypair, sign.BundleOptions{})
	if err != nil {
		t.Fatal(err)
	}
	bundleJSON, err := protojson.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	if err := ociremote.WriteAttestationNewBundleFormat(d, bundleJSON, predicateType, ociremote.WithRemoteOptions(r.remoteOptions()...)); err != nil {
		t.Fatalf("attach bundle to %s: %v", d, err)
	}
}

// SignBlobBundle attaches a sigstore bundle by key holding a bare message signature over the
// manifest of repo@digest, what `cosign sign-blob --bundle` of the manifest's bytes makes: the
// same key, but no statement that it signs this image.
func (r *Registry) SignBlobBundle(t T, key *BundleKey, repo string, digest v1.Hash) {
	t.Helper()
	d := r.digest(t, repo, digest)
	desc, err := remote.Get(d, r.remoteOptions()...)
	if err != nil {
		t.Fatalf("get %s: %v", d, err)
	}
	b, err := sign.Bundle(&sign.PlainData{Data: desc.Manifest}, key.keypair, sign.BundleOptions{})
	if err != nil {
		t.Fatal(err)
	}
	bundleJSON, err := protojson.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	if err := ociremote.WriteAttestationNewBundleFormat(d, bundleJSON, "", ociremote.WithRemoteOptions(r.remoteOptions()...)); err != nil {
		t.Fatalf("attach bundle to %s: %v", d, err)
	}
}
