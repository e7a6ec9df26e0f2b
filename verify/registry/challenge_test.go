package registry

import (
	"reflect"
	"testing"
)

func TestParseChallenges(t *testing.T) {
	t.Parallel()
	bearer := func(params ...string) challenge {
		c := challenge{scheme: "bearer", params: map[string]string{}}
		for i := 0; i+1 < len(params); i += 2 {
			c.params[params[i]] = params[i+1]
		}
		return c
	}
	basic := challenge{scheme: "basic", params: map[string]string{"realm": "Registry Realm"}}
	tests := []struct {
		name   string
		values []string
		want   []challenge
	}{
		{"docker hub", []string{`Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull"`},
			[]challenge{bearer("realm", "https://auth.docker.io/token", "service", "registry.docker.io", "scope", "repository:library/nginx:pull")}},
		{"spaces and case", []string{`  BEARER   Realm = "https://r/token" ,  Service=svc `},
			[]challenge{bearer("realm", "https://r/token", "service", "svc")}},
		{"insufficient scope", []string{`Bearer realm="https://r/token",service="s",scope="repository:a:pull repository:b:pull",error="insufficient_scope"`},
			[]challenge{bearer("realm", "https://r/token", "service", "s", "scope", "repository:a:pull repository:b:pull", "error", "insufficient_scope")}},
		{"two in one value", []string{`Basic realm="Registry Realm", Bearer realm="https://r/token"`},
			[]challenge{basic, bearer("realm", "https://r/token")}},
		{"two values", []string{`Basic realm="Registry Realm"`, `Bearer realm="https://r/token"`},
			[]challenge{basic, bearer("realm", "https://r/token")}},
		{"escapes", []string{`Bearer realm="https://r/t\"o\\ken"`}, []challenge{bearer("realm", `https://r/t"o\ken`)}},
		{"comma in a quoted value", []string{`Bearer scope="repository:a:pull,push",realm="https://r/token"`},
			[]challenge{bearer("scope", "repository:a:pull,push", "realm", "https://r/token")}},
		{"first of a repeated parameter", []string{`Bearer realm="https://good/token",realm="http://169.254.169.254/"`},
			[]challenge{bearer("realm", "https://good/token")}},
		{"token68", []string{`Negotiate YIIBhgYGKwYBBQUCoIIBejCCAXag==, Bearer realm="https://r/token"`},
			[]challenge{{scheme: "negotiate", params: map[string]string{}}, bearer("realm", "https://r/token")}},
		{"scheme alone", []string{`Basic`}, []challenge{{scheme: "basic", params: map[string]string{}}}},
		{"empty list elements", []string{`, ,Bearer realm="https://r/token",, ,`}, []challenge{bearer("realm", "https://r/token")}},
		{"unterminated quote keeps what came before", []string{`Basic realm="x", Bearer realm="https://r/tok`},
			[]challenge{{scheme: "basic", params: map[string]string{"realm": "x"}}}},
		{"control character in a quoted value", []string{"Bearer realm=\"a\x00b\""}, nil},
		{"a malformed one is dropped", []string{`Bearer realm="https://good/token", service=`}, nil},
		{"garbage", []string{`"realm"=x`, `=`, ``}, nil},
	}
	for _, tt := range tests {
		if got := parseChallenges(tt.values); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s: parseChallenges(%q) = %v, want %v", tt.name, tt.values, got, tt.want)
		}
	}
}

func TestChallengeString(t *testing.T) {
	t.Parallel()
	c := challenge{scheme: "bearer", params: map[string]string{"realm": `https://r/"t"`, "service": `a\b`}}
	if got, want := c.String(), `bearer realm="https://r/\"t\"", service="a\\b"`; got != want {
		t.Errorf("String() = %s, want %s", got, want)
	}
}
