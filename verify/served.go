package verify

import (
	"encoding/json"

	"github.com/opencontainers/go-digest"

	"github.com/pullgate/pullgate/verify/auth"
)

// Served records that img's registry served it at dg to cred. While the registry is down, a
// pull of a digest the node holds is answered from the node's store only for a credential the
// registry served that digest to before (ServedTo): kubelet pulls again to have a pod's own pull
// secret checked, and an outage must not let a credential through that the registry never
// accepted.
func (v *Verifier) Served(img Image, dg digest.Digest, cred auth.Credential) {
	if v.state == nil || v.state.ReadOnly() || dg == "" {
		return
	}
	if err := v.state.PutAccess(img.Name(), dg.String(), secret(cred), v.now()); err != nil {
		v.logger.Error("which credential the registry served the image to was not stored; while its registry is down, a pull of it with that credential is refused", "image", img.Name(), "digest", dg, "error", err)
	}
}

// ServedTo tells whether img's registry served it at dg to one of creds, or to anyone without a
// credential, when last asked.
func (v *Verifier) ServedTo(img Image, dg digest.Digest, creds []auth.Credential) bool {
	if v.state == nil {
		return false
	}
	secrets := make([][]byte, len(creds))
	for i, c := range creds {
		secrets[i] = secret(c)
	}
	return v.state.Served(img.Name(), dg.String(), secrets)
}

// secret is what identifies a credential, for the state to fingerprint; nil for anonymous
// access.
func secret(c auth.Credential) []byte {
	if c.IsZero() {
		return nil
	}
	b, _ := json.Marshal([]string{c.Username, c.Password, c.IdentityToken, c.RegistryToken})
	return b
}
