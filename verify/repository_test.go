package verify

import (
	"fmt"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/pullgate/pullgate/verify/auth"
)

// Signatures are read with the pull's credentials, so only from the registry itself: never
// from a mirror, nor from a hosts.toml server on another host, which would get the
// credentials.
func TestSignaturesReadFromTheRegistryOnly(t *testing.T) {
	t.Parallel()
	reg, other := newServer(t, nil), newServer(t, nil)
	key := newTestKey(t)
	d := pushImage(t, reg.host+"/team/app:v1")
	key.sign(t, d, d)
	reg.rec.take()
	cred := auth.Credential{Username: "alice", Password: "s3cret"}
	tests := []struct {
		name  string
		hosts string
		// refused is part of the error when signatures cannot be read where hosts.toml says.
		refused string
	}{
		{name: "registry itself", hosts: fmt.Sprintf("server = %q\n", "http://"+reg.host)},
		{name: "mirror first", hosts: fmt.Sprintf("server = %q\n[host.%q]\ncapabilities = [\"pull\", \"resolve\"]\n", "http://"+reg.host, "http://"+other.host)},
		{name: "server on another host", hosts: fmt.Sprintf("server = %q\n", "http://"+other.host), refused: "signatures are read from the registry itself"},
		{name: "server with a path", hosts: fmt.Sprintf("server = %q\n", "http://"+reg.host+"/prefix"), refused: "signatures are read from the registry itself"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := NewVerifier(mustPolicy(t, keyRule("apps", []string{reg.host + "/team/**"}, Enforce, key)), newResolver(hostsDir(t, reg.host, tc.hosts)))
			img, err := ParseImage(d.String())
			if err != nil {
				t.Fatal(err)
			}
			dec, err := v.Verify(t.Context(), Request{Image: img, Digest: digest.Digest(d.DigestStr()), Credential: cred})
			switch {
			case tc.refused == "" && (err != nil || !dec.Allowed):
				t.Errorf("Verify = %+v, %v; want allowed", dec, err)
			case tc.refused != "" && (err == nil || !strings.Contains(err.Error(), tc.refused)):
				t.Errorf("Verify = %+v, %v; want refused: %s", dec, err, tc.refused)
			}
			if reqs := other.rec.take(); len(reqs) != 0 {
				t.Errorf("signatures were asked of %s, not the registry: %v", other.host, reqs)
			}
			reg.rec.take()
		})
	}
}
