package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/pullgate/pullgate/verify/auth"
	"github.com/pullgate/pullgate/verify/hosts"
)

// tokenFixture is a registry on 127.0.0.1 that wants bearer tokens from a token service on
// 127.0.0.2, as with a registry that delegates its authentication to another internal host.
type tokenFixture struct {
	reg, realm         string // host:port
	regSeen, realmSeen *seen

	mu        sync.Mutex
	granted   map[string][]string // token: scopes
	n         int
	lifetime  int  // expires_in; 0 leaves it out
	oauth     bool // the token service takes the OAuth2 refresh-token grant
	accessKey bool // the token comes as access_token, as OAuth2 has it
}

const (
	user, password = "alice", "s3cret"
	identityToken  = "refresh-me"
	registryToken  = "registry-token-1"
)

func newTokenFixture(t *testing.T) *tokenFixture {
	t.Helper()
	f := &tokenFixture{granted: map[string][]string{}, lifetime: 300, oauth: true}
	f.realm, f.realmSeen = serve(t, "127.0.0.2", f.serveToken)
	f.reg, f.regSeen = serve(t, "127.0.0.1", f.serveRegistry(func(*http.Request) string { return "http://" + f.realm + "/token" }))
	return f
}

func (f *tokenFixture) serveToken(w http.ResponseWriter, r *http.Request) {
	var scopes []string
	switch r.Method {
	case http.MethodGet:
		if u, p, ok := r.BasicAuth(); !ok || u != user || p != password {
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}`, http.StatusUnauthorized)
			return
		}
		scopes = r.URL.Query()["scope"]
	case http.MethodPost:
		if !f.oauth {
			http.NotFound(w, r)
			return
		}
		if r.ParseForm() != nil || r.PostForm.Get("grant_type") != "refresh_token" || r.PostForm.Get("refresh_token") != identityToken {
			http.Error(w, `{"error":"invalid_grant"}`, http.StatusBadRequest)
			return
		}
		scopes = strings.Fields(r.PostForm.Get("scope"))
	}
	f.mu.Lock()
	f.n++
	tok := fmt.Sprintf("tok-%d", f.n)
	f.granted[tok] = scopes
	body := map[string]any{"token": tok}
	if f.accessKey {
		body = map[string]any{"access_token": tok}
	}
	if f.lifetime != 0 {
		body["expires_in"] = f.lifetime
	}
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(body)
}

// serveRegistry answers /v2/REPO/manifests/REF for a token that grants REPO's pull scope, and
// challenges for it otherwise.
func (f *tokenFixture) serveRegistry(realm func(*http.Request) string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		repo, _, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/v2/"), "/manifests/")
		scope := "repository:" + repo + ":pull"
		tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		f.mu.Lock()
		ok := tok == registryToken || slices.Contains(f.granted[tok], scope)
		f.mu.Unlock()
		if !ok {
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm=%q,service="test-registry",scope=%q`, realm(r), scope))
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"token required"}]}`, http.StatusUnauthorized)
			return
		}
		io.WriteString(w, "manifest of "+repo)
	}
}

func (f *tokenFixture) revokeAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	clear(f.granted)
}

// client is the transport New makes for repo on the fixture's registry.
func client(host, repo string, cred auth.Credential, tokens *Tokens) http.RoundTripper {
	ep := hosts.Endpoint{Scheme: "http", Host: host}
	return New(ep, cred, []string{"repository:" + repo + ":pull"}, tokens, NewTransport(host, nil))
}

func fetchManifest(t *testing.T, rt http.RoundTripper, host, repo string) (int, error) {
	t.Helper()
	// go-containerregistry guesses http for loopback; New sets the endpoint's scheme anyway.
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://"+host+"/v2/"+repo+"/manifests/v1", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := rt.RoundTrip(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}

func wantOK(t *testing.T, rt http.RoundTripper, host, repo string) {
	t.Helper()
	if code, err := fetchManifest(t, rt, host, repo); err != nil || code != http.StatusOK {
		t.Fatalf("GET %s manifest: %d, %v; want 200", repo, code, err)
	}
}

// A password becomes a token at a realm on another loopback address: the realm gets the
// password, the registry only the token.
func TestAuthTokenFromInternalRealm(t *testing.T) {
	t.Parallel()
	f := newTokenFixture(t)
	wantOK(t, client(f.reg, "team/app", auth.Credential{Username: user, Password: password}, NewTokens(8)), f.reg, "team/app")

	treqs := f.realmSeen.all()
	if len(treqs) != 1 {
		t.Fatalf("token service asked %d times, want once", len(treqs))
	}
	q := treqs[0].URL.Query()
	if u, p, _ := treqs[0].BasicAuth(); u != user || p != password || q.Get("service") != "test-registry" || q.Get("scope") != "repository:team/app:pull" {
		t.Errorf("token request %s with user %q: want the credential, the service and the scope", treqs[0].URL, u)
	}
	for _, r := range f.regSeen.all() {
		if a := r.Header.Get("Authorization"); a != "" && a != "Bearer tok-1" {
			t.Errorf("the registry got Authorization %q, want only the token", a)
		}
		if ua := r.Header.Get("User-Agent"); ua != userAgent {
			t.Errorf("the registry got User-Agent %q", ua)
		}
	}
}

// A token is reused for its lifetime by every transport with the same realm, service, scope and
// credential; any of them different asks again.
func TestAuthTokenReuse(t *testing.T) {
	t.Parallel()
	f := newTokenFixture(t)
	tokens := NewTokens(8)
	now := time.Now()
	tokens.now = func() time.Time { return now }
	alice := auth.Credential{Username: user, Password: password}
	asked := func() int { return len(f.realmSeen.all()) }

	rt := client(f.reg, "team/app", alice, tokens)
	for range 20 {
		wantOK(t, rt, f.reg, "team/app")
	}
	if n := asked(); n != 1 {
		t.Errorf("20 requests asked for %d tokens, want 1", n)
	}
	if n := len(f.regSeen.all()); n != 21 {
		t.Errorf("20 requests made %d to the registry, want 21 (one 401 first)", n)
	}
	for range 5 {
		wantOK(t, client(f.reg, "team/app", alice, tokens), f.reg, "team/app")
	}
	if n := asked(); n != 1 {
		t.Errorf("new transports asked for %d tokens in all, want the first one reused", n)
	}

	wantOK(t, client(f.reg, "team/other", alice, tokens), f.reg, "team/other")
	if n := asked(); n != 2 {
		t.Errorf("another scope: %d tokens asked for, want 2", n)
	}
	code, err := fetchManifest(t, client(f.reg, "team/app", auth.Credential{Username: user, Password: "wrong"}, tokens), f.reg, "team/app")
	var te *transport.Error
	if code != 0 || !errors.As(err, &te) || te.StatusCode != http.StatusUnauthorized {
		t.Errorf("a wrong password gave %d, %v; want the token service's 401", code, err)
	}
	if n := asked(); n != 3 {
		t.Errorf("another credential: %d tokens asked for, want 3", n)
	}

	// Used for nine tenths of its lifetime, then asked for again before it is sent.
	now = now.Add(269 * time.Second)
	wantOK(t, rt, f.reg, "team/app")
	if n := asked(); n != 3 {
		t.Errorf("at 269 s of 300: %d tokens asked for, want 3", n)
	}
	now = now.Add(2 * time.Second)
	before := len(f.regSeen.all())
	wantOK(t, rt, f.reg, "team/app")
	if n := asked(); n != 4 {
		t.Errorf("at 271 s of 300: %d tokens asked for, want 4", n)
	}
	if n := len(f.regSeen.all()) - before; n != 1 {
		t.Errorf("a renewed token cost %d requests to the registry, want 1", n)
	}
}

// Without expires_in a token lives 60 seconds, as the Docker token spec says.
func TestAuthTokenDefaultLifetime(t *testing.T) {
	t.Parallel()
	f := newTokenFixture(t)
	f.lifetime = 0
	f.accessKey = true
	tokens := NewTokens(8)
	now := time.Now()
	tokens.now = func() time.Time { return now }
	rt := client(f.reg, "team/app", auth.Credential{Username: user, Password: password}, tokens)
	wantOK(t, rt, f.reg, "team/app")
	now = now.Add(50 * time.Second)
	wantOK(t, rt, f.reg, "team/app")
	now = now.Add(5 * time.Second)
	wantOK(t, rt, f.reg, "team/app")
	if n := len(f.realmSeen.all()); n != 2 {
		t.Errorf("%d tokens asked for over 55 s, want 2", n)
	}
}

// Concurrent requests with nothing cached ask for one token.
func TestAuthTokenShared(t *testing.T) {
	t.Parallel()
	f := newTokenFixture(t)
	tokens := NewTokens(8)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			wantOK(t, client(f.reg, "team/app", auth.Credential{Username: user, Password: password}, tokens), f.reg, "team/app")
		})
	}
	wg.Wait()
	if n := len(f.realmSeen.all()); n != 1 {
		t.Errorf("8 concurrent pulls asked for %d tokens, want 1", n)
	}
}

func TestAuthIdentityToken(t *testing.T) {
	t.Parallel()
	t.Run("oauth2", func(t *testing.T) {
		t.Parallel()
		f := newTokenFixture(t)
		wantOK(t, client(f.reg, "team/app", auth.Credential{IdentityToken: identityToken}, NewTokens(8)), f.reg, "team/app")
		treqs := f.realmSeen.all()
		if len(treqs) != 1 || treqs[0].Method != http.MethodPost {
			t.Fatalf("token service got %d requests, want one POST", len(treqs))
		}
		// The form was checked by the service; the request carries no basic credentials.
		if _, _, ok := treqs[0].BasicAuth(); ok {
			t.Error("the OAuth2 request carried basic credentials")
		}
	})
	t.Run("falls back to GET", func(t *testing.T) {
		t.Parallel()
		f := newTokenFixture(t)
		f.oauth = false
		wantOK(t, client(f.reg, "team/app", auth.Credential{Username: user, Password: password, IdentityToken: identityToken}, NewTokens(8)), f.reg, "team/app")
		var methods []string
		for _, r := range f.realmSeen.all() {
			methods = append(methods, r.Method)
		}
		if !slices.Equal(methods, []string{http.MethodPost, http.MethodGet}) {
			t.Errorf("token service got %v, want POST then GET", methods)
		}
	})
}

// A registry token goes to the registry as it is, and the token service is never asked.
func TestAuthRegistryToken(t *testing.T) {
	t.Parallel()
	f := newTokenFixture(t)
	rt := client(f.reg, "team/app", auth.Credential{RegistryToken: registryToken}, NewTokens(8))
	wantOK(t, rt, f.reg, "team/app")
	wantOK(t, rt, f.reg, "team/app")
	if n := len(f.realmSeen.all()); n != 0 {
		t.Errorf("token service asked %d times", n)
	}
	if n := len(f.regSeen.all()); n != 2 {
		t.Errorf("registry asked %d times, want 2", n)
	}
}

// A 401 naming a scope the token lacks gets a token with that scope too; a 401 for a token
// the registry no longer takes gets a new one.
func TestAuthScopeRefresh(t *testing.T) {
	t.Parallel()
	f := newTokenFixture(t)
	rt := client(f.reg, "team/app", auth.Credential{Username: user, Password: password}, NewTokens(8))
	wantOK(t, rt, f.reg, "team/app")
	wantOK(t, rt, f.reg, "base/image") // as for a manifest whose layers live in another repository
	treqs := f.realmSeen.all()
	if len(treqs) != 2 {
		t.Fatalf("token service asked %d times, want 2", len(treqs))
	}
	if got := treqs[1].URL.Query()["scope"]; !slices.Equal(got, []string{"repository:base/image:pull", "repository:team/app:pull"}) {
		t.Errorf("second token asked for scopes %v, want the new one first and the old", got)
	}
	wantOK(t, rt, f.reg, "team/app")

	f.revokeAll()
	wantOK(t, rt, f.reg, "team/app")
	if n := len(f.realmSeen.all()); n != 3 {
		t.Errorf("after the registry dropped its tokens: %d asked for, want 3", n)
	}
	// A registry that keeps refusing is answered with its 401, after one new token.
	refusing := func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="http://%s/token",service="test-registry",scope="repository:team/app:pull"`, f.realm))
		w.WriteHeader(http.StatusUnauthorized)
	}
	reg, seenReg := serve(t, "127.0.0.1", refusing)
	code, err := fetchManifest(t, client(reg, "team/app", auth.Credential{Username: user, Password: password}, NewTokens(8)), reg, "team/app")
	if err != nil || code != http.StatusUnauthorized || len(seenReg.all()) != 2 {
		t.Errorf("a registry that refuses every token: %d, %v after %d requests; want its 401 after 2", code, err, len(seenReg.all()))
	}
}

func TestAuthBasic(t *testing.T) {
	t.Parallel()
	reg, seenReg := serve(t, "127.0.0.1", func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != user || p != password {
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		io.WriteString(w, "ok")
	})
	rt := client(reg, "team/app", auth.Credential{Username: user, Password: password}, NewTokens(8))
	wantOK(t, rt, reg, "team/app")
	wantOK(t, rt, reg, "team/app")
	if n := len(seenReg.all()); n != 3 {
		t.Errorf("registry asked %d times, want 3 (a 401, then the credentials at once)", n)
	}
	code, err := fetchManifest(t, client(reg, "team/app", auth.Credential{}, NewTokens(8)), reg, "team/app")
	if err != nil || code != http.StatusUnauthorized {
		t.Errorf("anonymous: %d, %v; want the registry's 401", code, err)
	}
}

func TestAuthRefusesRealm(t *testing.T) {
	t.Parallel()
	t.Run("link-local", func(t *testing.T) {
		t.Parallel()
		for _, realm := range []string{"http://169.254.169.254/token", "http://[::ffff:169.254.169.254]:8080/token", "http://100.100.100.200/token"} {
			f := &tokenFixture{granted: map[string][]string{}}
			reg, _ := serve(t, "127.0.0.1", f.serveRegistry(func(*http.Request) string { return realm }))
			_, err := fetchManifest(t, client(reg, "team/app", auth.Credential{Username: user, Password: password}, NewTokens(8)), reg, "team/app")
			host := strings.TrimSuffix(strings.TrimPrefix(realm, "http://"), "/token")
			wantRefusedBeforeDial(t, err, fmt.Sprintf("refusing token realm from %s to %s: link-local/metadata address", reg, host))
		}
	})
	t.Run("a name for the metadata address", func(t *testing.T) {
		t.Parallel()
		dns := startDNS(t)
		dns.set("auth.test", "169.254.169.254")
		f := &tokenFixture{granted: map[string][]string{}}
		reg, _ := serve(t, "127.0.0.1", f.serveRegistry(func(*http.Request) string { return "http://auth.test/token" }))
		tr := NewTransport(reg, nil)
		tr.resolver = dns.resolver()
		rt := New(hosts.Endpoint{Scheme: "http", Host: reg}, auth.Credential{Username: user, Password: password}, []string{"repository:team/app:pull"}, NewTokens(8), tr)
		_, err := fetchManifest(t, rt, reg, "team/app")
		wantRefused(t, err, fmt.Sprintf("refusing token realm from %s to auth.test (169.254.169.254): link-local/metadata address", reg))
	})
	t.Run("plain http for an https registry", func(t *testing.T) {
		t.Parallel()
		f := newTokenFixture(t)
		srv := httptest.NewTLSServer(f.serveRegistry(func(*http.Request) string { return "http://" + f.realm + "/token" }))
		t.Cleanup(srv.Close)
		host := strings.TrimPrefix(srv.URL, "https://")
		rt := New(hosts.Endpoint{Scheme: "https", Host: host}, auth.Credential{Username: user, Password: password}, []string{"repository:team/app:pull"}, NewTokens(8),
			NewTransport(host, srv.Client().Transport.(*http.Transport).TLSClientConfig))
		_, err := fetchManifest(t, rt, host, "team/app")
		wantRefusedBeforeDial(t, err, fmt.Sprintf("refusing token realm from %s to %s: plain http for an https registry", host, f.realm))
		if n := len(f.realmSeen.all()); n != 0 {
			t.Errorf("the realm was asked %d times", n)
		}
	})
}

// Credentials go to the registry's host only, whatever else a caller asks the transport for.
func TestAuthOnlyToRegistry(t *testing.T) {
	t.Parallel()
	f := newTokenFixture(t)
	other, seenOther := serve(t, "127.0.0.3", blob)
	rt := client(f.reg, "team/app", auth.Credential{Username: user, Password: password}, NewTokens(8))
	wantOK(t, rt, f.reg, "team/app")
	req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, "http://"+other+"/x", nil)
	resp, err := rt.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if r := seenOther.all(); len(r) != 1 || r[0].Header.Get("Authorization") != "" {
		t.Errorf("another host got %d requests, with Authorization %q", len(r), r[0].Header.Get("Authorization"))
	}
}

func TestTokensBounded(t *testing.T) {
	t.Parallel()
	c := NewTokens(3)
	now := time.Now()
	c.now = func() time.Time { return now }
	for i := range 10 {
		key := tokenKey{realm: "r", scopes: fmt.Sprint(i)}
		tok, err := c.get(t.Context(), key, func(context.Context) (string, time.Duration, error) {
			return fmt.Sprint("t", i), time.Duration(100+i) * time.Second, nil
		})
		if err != nil || tok != fmt.Sprint("t", i) {
			t.Fatalf("get %d = %q, %v", i, tok, err)
		}
		if c.len() > 3 {
			t.Fatalf("%d tokens held, want at most 3", c.len())
		}
	}
	// The ones that live longest are kept.
	for i := 7; i < 10; i++ {
		tok, _ := c.get(t.Context(), tokenKey{realm: "r", scopes: fmt.Sprint(i)}, func(context.Context) (string, time.Duration, error) {
			return "fetched again", time.Minute, nil
		})
		if tok != fmt.Sprint("t", i) {
			t.Errorf("token %d was dropped", i)
		}
	}
	// Failures are not kept.
	key := tokenKey{realm: "failing"}
	if _, err := c.get(t.Context(), key, func(context.Context) (string, time.Duration, error) { return "", 0, io.ErrUnexpectedEOF }); err == nil {
		t.Fatal("want the error")
	}
	if tok, err := c.get(t.Context(), key, func(context.Context) (string, time.Duration, error) { return "ok", time.Minute, nil }); err != nil || tok != "ok" {
		t.Errorf("after a failure: %q, %v; want it asked again", tok, err)
	}
}
