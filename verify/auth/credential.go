// Package auth reads registry credentials from node files and matches them to images the way
// kubelet's credential provider does.
package auth

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
)

const redacted = "<redacted>"

// Credential is one registry credential, as kubelet's AuthConfig or a docker config file carries it.
//
// Every way of printing a Credential (fmt verbs, slog, encoding/json) shows the user name and
// which secrets are set, never their values. fmt cannot reach the methods of a Credential held in
// an unexported struct field, so do not print structs that hold one.
type Credential struct {
	Username string
	Password string
	// IdentityToken is an OAuth2 refresh token (docker "identitytoken").
	IdentityToken string
	// RegistryToken is a bearer token sent to the registry as is (docker "registrytoken").
	RegistryToken string
}

var (
	_ fmt.Stringer   = Credential{}
	_ fmt.GoStringer = Credential{}
	_ fmt.Formatter  = Credential{}
	_ slog.LogValuer = Credential{}
)

// IsZero reports whether c carries no credential at all, that is, anonymous access.
func (c Credential) IsZero() bool { return c == Credential{} }

// String returns e.g. `{username: "alice", password: <redacted>}`; only the fields that are set
// appear, and "anonymous" for the zero Credential.
func (c Credential) String() string {
	if c.IsZero() {
		return "anonymous"
	}
	var b strings.Builder
	b.WriteByte('{')
	for i, f := range c.fields() {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(f.name)
		b.WriteString(": ")
		if f.secret {
			b.WriteString(redacted)
		} else {
			fmt.Fprintf(&b, "%q", f.value)
		}
	}
	b.WriteByte('}')
	return b.String()
}

// GoString is what %#v prints.
func (c Credential) GoString() string { return "auth.Credential" + c.String() }

// Format makes every fmt verb go through String or GoString: without it, verbs that are not
// string verbs (%d, %t, ...) would print the struct's fields one by one, secrets included.
func (c Credential) Format(f fmt.State, verb rune) {
	if verb == 'v' && f.Flag('#') {
		fmt.Fprint(f, c.GoString())
		return
	}
	fmt.Fprint(f, c.String())
}

// LogValue is a group of the user name and "<redacted>" for each secret that is set.
func (c Credential) LogValue() slog.Value {
	if c.IsZero() {
		return slog.StringValue("anonymous")
	}
	var attrs []slog.Attr
	for _, f := range c.fields() {
		v := f.value
		if f.secret {
			v = redacted
		}
		attrs = append(attrs, slog.String(f.name, v))
	}
	return slog.GroupValue(attrs...)
}

// MarshalJSON keeps secrets out of anything that serialises a Credential, such as a log handler
// that ignores LogValuer or a debug dump.
func (c Credential) MarshalJSON() ([]byte, error) {
	m := make(map[string]string, 4)
	for _, f := range c.fields() {
		v := f.value
		if f.secret {
			v = redacted
		}
		m[f.name] = v
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false) // the caller's encoder decides on escaping "<redacted>"
	if err := enc.Encode(m); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

type field struct {
	name, value string
	secret      bool
}

// fields lists the fields of c that are set, in a fixed order.
func (c Credential) fields() []field {
	all := []field{
		{"username", c.Username, false},
		{"password", c.Password, true},
		{"identitytoken", c.IdentityToken, true},
		{"registrytoken", c.RegistryToken, true},
	}
	set := all[:0]
	for _, f := range all {
		if f.value != "" {
			set = append(set, f)
		}
	}
	return set
}
