package registry

import (
	"reflect"
	"strings"
	"testing"
)

// FuzzChallenge: parseChallenges never panics, returns only well-formed challenges (lowercase
// token names, values a quoted-string can hold, within the bounds), and what it returns
// survives being written out and parsed again unchanged.
func FuzzChallenge(f *testing.F) {
	for _, s := range []string{
		`Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull"`,
		`Basic realm="Registry Realm", Bearer realm="https://r/token"`,
		`Bearer realm="https://r/t\"o\\ken",error="insufficient_scope"`,
		`Negotiate YIIBhgYGKwYBBQUCoIIBejCCAXag==, Basic`,
		`  BEARER   Realm = "x" ,  Service=svc `,
		`, ,Bearer realm="a",, ,`,
		`Bearer realm="unterminated`,
		"Bearer realm=\"a\x00b\"",
		`Bearer a=b, c=d, Basic e=f`,
	} {
		f.Add(s, "")
	}
	f.Add(`Basic realm="x"`, `Bearer realm="y"`)
	f.Fuzz(func(t *testing.T, v1, v2 string) {
		cs := parseChallenges([]string{v1, v2})
		if len(cs) > maxChallenges {
			t.Fatalf("%d challenges, more than %d", len(cs), maxChallenges)
		}
		parts := make([]string, len(cs))
		for i, c := range cs {
			if c.scheme == "" || c.scheme != strings.ToLower(c.scheme) || !isToken(c.scheme) {
				t.Fatalf("scheme %q", c.scheme)
			}
			if len(c.params) > maxParams {
				t.Fatalf("%d parameters, more than %d", len(c.params), maxParams)
			}
			for k, v := range c.params {
				if k != strings.ToLower(k) || !isToken(k) {
					t.Fatalf("parameter name %q", k)
				}
				for j := 0; j < len(v); j++ {
					if !isQuotedPairChar(v[j]) {
						t.Fatalf("parameter %s holds %q", k, v[j])
					}
				}
			}
			parts[i] = c.String()
		}
		// Written out one challenge per header value, and all in one value: the same again.
		if again := parseChallenges(parts); !reflect.DeepEqual(again, cs) && len(cs) > 0 {
			t.Fatalf("parsed %q as %v; written out as %q that parses as %v", []string{v1, v2}, cs, parts, again)
		}
		if one := parseChallenges([]string{strings.Join(parts, ", ")}); !reflect.DeepEqual(one, cs) && len(cs) > 0 {
			t.Fatalf("parsed %q as %v; written out as %q that parses as %v", []string{v1, v2}, cs, strings.Join(parts, ", "), one)
		}
	})
}

func isToken(s string) bool {
	for i := 0; i < len(s); i++ {
		if !isTokenChar(s[i]) {
			return false
		}
	}
	return s != ""
}
