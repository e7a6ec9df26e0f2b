package verify

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/opencontainers/go-digest"

	"github.com/pullgate/pullgate/verify/auth"
	"github.com/pullgate/pullgate/verify/hosts"
)

// request is what a test server saw of one request.
type request struct {
	method, path, authorization string
	header                      http.Header
}

func (r request) String() string { return r.method + " " + r.path }

// recorder is a test server's log of requests.
type recorder struct {
	mu   sync.Mutex
	reqs []request
}

func (rec *recorder) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec.mu.Lock()
		rec.reqs = append(rec.reqs, request{r.Method, r.URL.Path, r.Header.Get("Authorization"), r.Header.Clone()})
		rec.mu.Unlock()
		next.ServeHTTP(w, r)
	})
}

func (rec *recorder) take() []request {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	r := rec.reqs
	rec.reqs = nil
	return r
}

func (rec *recorder) count(method, pathSuffix string) int {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	n := 0
	for _, r := range rec.reqs {
		if r.method == method && strings.HasSuffix(r.path, pathSuffix) {
			n++
		}
	}
	return n
}

// server is an in-process registry on a real loopback socket.
type server struct {
	host string // 127.0.0.1:port
	rec  *recorder
	reg  http.Handler // the registry itself, for seeding without being recorded
}

// newServer serves go-containerregistry's registry, wrapped by wrap (which may be nil), and
// records every request that reaches it.
func newServer(t *testing.T, wrap func(http.Handler) http.Handler) *server {
	t.Helper()
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	h := reg
	if wrap != nil {
		h = wrap(reg)
	}
	rec := &recorder{}
	srv := httptest.NewServer(rec.wrap(h))
	t.Cleanup(srv.Close)
	return &server{host: strings.TrimPrefix(srv.URL, "http://"), rec: rec, reg: reg}
}

// push stores a manifest for repo:tag and returns its digest and body.
func push(t *testing.T, reg http.Handler, repo, tag string) (digest.Digest, []byte) {
	t.Helper()
	body, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest.FromString(repo + tag).String(), "size": 2},
		"layers":        []any{},
		"annotations":   map[string]string{"tag": tag},
	})
	if err != nil {
		t.Fatal(err)
	}
	req := httptest.NewRequest(http.MethodPut, "/v2/"+repo+"/manifests/"+tag, strings.NewReader(string(body)))
	req.Header.Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
	w := httptest.NewRecorder()
	reg.ServeHTTP(w, req)
	if w.Code != http.StatusCreated {
		t.Fatalf("push %s:%s: %d %s", repo, tag, w.Code, w.Body)
	}
	return digest.FromBytes(body), body
}

// hostsDir writes hosts.toml for registry into a new certs.d directory.
func hostsDir(t *testing.T, registry, content string) *hosts.Config {
	t.Helper()
	root := t.TempDir()
	dir := filepath.Join(root, registry)
	if h, port, err := net.SplitHostPort(registry); err == nil {
		dir = filepath.Join(root, h+"_"+port+"_") // containerd's name for host:port
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "hosts.toml"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return hosts.New(root)
}

// plainHTTP is the hosts.toml for a registry served over plain HTTP at its own address.
func plainHTTP(t *testing.T, registry string) *hosts.Config {
	return hostsDir(t, registry, fmt.Sprintf("server = %q\n", "http://"+registry))
}

func newResolver(h *hosts.Config) *Resolver {
	return NewResolver(h, WithResolveLogger(slog.New(slog.DiscardHandler)))
}

func basicAuth(user, pass string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != user || p != pass {
			w.Header().Set("WWW-Authenticate", `Basic realm="registry"`)
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`, http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func image(registry string) Image {
	return Image{Registry: registry, Repository: "team/app", Tag: "v1"}
}

func TestResolveTag(t *testing.T) {
	t.Parallel()
	s := newServer(t, nil)
	want, _ := push(t, s.reg, "team/app", "v1")
	push(t, s.reg, "team/app", "v2")
	r := newResolver(plainHTTP(t, s.host))

	got, err := r.Resolve(t.Context(), image(s.host), auth.Credential{})
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("Resolve = %s, want %s", got, want)
	}
	if n := s.rec.count(http.MethodHead, "/v2/team/app/manifests/v1"); n != 1 {
		t.Errorf("%d HEADs of the manifest, want 1: %v", n, s.rec.take())
	}

	// Warm: one HEAD and nothing else.
	s.rec.take()
	if got, err = r.Resolve(t.Context(), image(s.host), auth.Credential{}); err != nil || got != want {
		t.Fatalf("second Resolve = %s, %v; want %s", got, err, want)
	}
	if reqs := s.rec.take(); len(reqs) != 1 || reqs[0].String() != "HEAD /v2/team/app/manifests/v1" {
		t.Errorf("a warm resolve sent %v, want one HEAD", reqs)
	}
}

// stripDigest removes Docker-Content-Digest from every response, as some registries do on HEAD.
func stripDigest(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		next.ServeHTTP(stripWriter{w}, r)
	})
}

type stripWriter struct{ http.ResponseWriter }

func (s stripWriter) WriteHeader(code int) {
	s.Header().Del("Docker-Content-Digest")
	s.ResponseWriter.WriteHeader(code)
}

func (s stripWriter) Write(b []byte) (int, error) {
	s.Header().Del("Docker-Content-Digest")
	return s.ResponseWriter.Write(b)
}

func TestResolveWithoutDigestHeader(t *testing.T) {
	t.Parallel()
	s := newServer(t, stripDigest)
	_, body := push(t, s.reg, "team/app", "v1")
	r := newResolver(plainHTTP(t, s.host))

	got, err := r.Resolve(t.Context(), image(s.host), auth.Credential{})
	if err != nil {
		t.Fatal(err)
	}
	if want := digest.Digest(fmt.Sprintf("sha256:%x", sha256.Sum256(body))); got != want {
		t.Errorf("Resolve = %s, want the manifest's sha256 %s", got, want)
	}
	if h, g := s.rec.count(http.MethodHead, "/manifests/v1"), s.rec.count(http.MethodGet, "/manifests/v1"); h != 1 || g != 1 {
		t.Errorf("%d HEAD and %d GET of the manifest, want one of each", h, g)
	}
}

func TestResolveDigestReference(t *testing.T) {
	t.Parallel()
	s := newServer(t, nil)
	d, _ := push(t, s.reg, "team/app", "v1")
	r := newResolver(plainHTTP(t, s.host))
	img := Image{Registry: s.host, Repository: "team/app", Digest: d}

	got, err := r.Resolve(t.Context(), img, auth.Credential{Username: "u", Password: "p"})
	if err != nil || got != d {
		t.Fatalf("Resolve = %s, %v; want %s", got, err, d)
	}
	if reqs := s.rec.take(); len(reqs) != 0 {
		t.Errorf("a digest reference sent %v", reqs)
	}
}

func TestResolveBasicAuth(t *testing.T) {
	t.Parallel()
	s := newServer(t, func(h http.Handler) http.Handler { return basicAuth("alice", "s3cret", h) })
	want, _ := push(t, s.reg, "team/app", "v1")
	tests := []struct {
		name string
		cred auth.Credential
		ok   bool
	}{
		{name: "right credential", cred: auth.Credential{Username: "alice", Password: "s3cret"}, ok: true},
		{name: "wrong password", cred: auth.Credential{Username: "alice", Password: "guess"}},
		{name: "anonymous", cred: auth.Credential{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := newResolver(plainHTTP(t, s.host))
			got, err := r.Resolve(t.Context(), image(s.host), tt.cred)
			if tt.ok {
				if err != nil || got != want {
					t.Fatalf("Resolve = %s, %v; want %s", got, err, want)
				}
				return
			}
			if err == nil {
				t.Fatalf("Resolve = %s, want an error", got)
			}
			var re *RegistryError
			if !errors.As(err, &re) || re.Unavailable {
				t.Errorf("error %v: want a *RegistryError that is not Unavailable", err)
			}
			var te *transport.Error
			if !errors.As(err, &te) || te.StatusCode != http.StatusUnauthorized {
				t.Errorf("error %v does not unwrap to a 401 *transport.Error", err)
			}
			if strings.Contains(err.Error(), tt.cred.Password) && tt.cred.Password != "" {
				t.Errorf("error %q shows the password", err)
			}
		})
	}
}

// tokenServer is a token service that gives token for user:pass.
func tokenServer(t *testing.T, user, pass, token string) (realm string, rec *recorder) {
	t.Helper()
	rec = &recorder{}
	srv := httptest.NewServer(rec.wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != user || p != pass {
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}`, http.StatusUnauthorized)
			return
		}
		if r.URL.Query().Get("scope") != "repository:team/app:pull" || r.URL.Query().Get("service") != "test-registry" {
			http.Error(w, "unexpected scope or service: "+r.URL.RawQuery, http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"token": %q, "expires_in": 300}`, token)
	})))
	t.Cleanup(srv.Close)
	// A realm on a loopback IP is refused as an internal address unless it is the registry's;
	// "localhost" is a name and reaches the same server.
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(srv.URL, "http://"))
	return "http://localhost:" + port + "/token", rec
}

func bearerAuth(realm, token string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+token {
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm=%q,service="test-registry",scope="repository:team/app:pull"`, realm))
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"token required"}]}`, http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func TestResolveTokenAuth(t *testing.T) {
	t.Parallel()
	realm, tokens := tokenServer(t, "alice", "s3cret", "tok-123")
	s := newServer(t, func(h http.Handler) http.Handler { return bearerAuth(realm, "tok-123", h) })
	want, _ := push(t, s.reg, "team/app", "v1")
	r := newResolver(plainHTTP(t, s.host))
	cred := auth.Credential{Username: "alice", Password: "s3cret"}

	got, err := r.Resolve(t.Context(), image(s.host), cred)
	if err != nil || got != want {
		t.Fatalf("Resolve = %s, %v; want %s", got, err, want)
	}
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte("alice:s3cret"))
	for _, req := range s.rec.take() {
		if req.authorization != "" && req.authorization != "Bearer tok-123" {
			t.Errorf("registry got %s with Authorization %q", req, req.authorization)
		}
	}
	treqs := tokens.take()
	if len(treqs) != 1 || treqs[0].authorization != basic {
		t.Errorf("token service got %v, want one request with the credential", treqs)
	}

	// Warm: the token is reused, and the registry is not pinged again.
	got, err = r.Resolve(t.Context(), image(s.host), cred)
	if err != nil || got != want {
		t.Fatalf("second Resolve = %s, %v; want %s", got, err, want)
	}
	if reqs := s.rec.take(); len(reqs) != 1 || reqs[0].String() != "HEAD /v2/team/app/manifests/v1" || reqs[0].authorization != "Bearer tok-123" {
		t.Errorf("a warm resolve sent %v to the registry, want one HEAD with the token", reqs)
	}
	if treqs := tokens.take(); len(treqs) != 0 {
		t.Errorf("a warm resolve asked for a token again: %v", treqs)
	}

	// Another credential is not served from the first one's transport.
	_, err = r.Resolve(t.Context(), image(s.host), auth.Credential{Username: "alice", Password: "wrong"})
	var te *transport.Error
	if !errors.As(err, &te) || te.StatusCode != http.StatusUnauthorized {
		t.Errorf("a wrong credential gave %v, want a 401 from the token service", err)
	}
	var re *RegistryError
	if !errors.As(err, &re) || re.Unavailable {
		t.Errorf("a wrong credential gave %v, want a *RegistryError that is not Unavailable", err)
	}
}

func TestResolveRefusesLinkLocalRealm(t *testing.T) {
	t.Parallel()
	s := newServer(t, func(h http.Handler) http.Handler {
		return bearerAuth("http://169.254.169.254/token", "never", h)
	})
	push(t, s.reg, "team/app", "v1")
	r := newResolver(plainHTTP(t, s.host))

	_, err := r.Resolve(t.Context(), image(s.host), auth.Credential{Username: "alice", Password: "s3cret"})
	if err == nil || !strings.Contains(err.Error(), "link-local") {
		t.Fatalf("Resolve error = %v, want the link-local realm refused", err)
	}
}

// TestResolveRefusesLinkLocalEndpoint checks the dialer itself: an endpoint on a metadata
// address is never dialled (the address rule itself is tested in verify/registry).
func TestResolveRefusesLinkLocalEndpoint(t *testing.T) {
	t.Parallel()
	h := hostsDir(t, "registry.example.com", "server = \"http://169.254.169.254\"\n")
	_, err := newResolver(h).Resolve(t.Context(), image("registry.example.com"), auth.Credential{Username: "alice", Password: "s3cret"})
	if err == nil || !strings.Contains(err.Error(), "refusing connection to 169.254.169.254:80: link-local/metadata address") {
		t.Fatalf("Resolve error = %v, want the dial to 169.254.169.254 refused", err)
	}
}

func TestResolveUnavailable(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		registry    func(t *testing.T) *server
		unavailable bool
		status      int
		minRequests int
	}{
		{
			name: "503 after retries",
			registry: func(t *testing.T) *server {
				return newServer(t, func(http.Handler) http.Handler {
					return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
						http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
					})
				})
			},
			unavailable: true,
			status:      http.StatusServiceUnavailable,
			minRequests: 2,
		},
		{
			name:        "closed port",
			registry:    func(t *testing.T) *server { return &server{host: closedPort(t), rec: &recorder{}} },
			unavailable: true,
		},
		{
			name: "tag not found",
			registry: func(t *testing.T) *server {
				s := newServer(t, nil)
				push(t, s.reg, "team/app", "v2")
				return s
			},
			status: http.StatusNotFound,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := tt.registry(t)
			r := newResolver(plainHTTP(t, s.host))
			d, err := r.Resolve(t.Context(), image(s.host), auth.Credential{})
			var re *RegistryError
			if !errors.As(err, &re) {
				t.Fatalf("Resolve = %s, %v; want a *RegistryError", d, err)
			}
			if re.Unavailable != tt.unavailable {
				t.Errorf("Unavailable = %t, want %t: %v", re.Unavailable, tt.unavailable, err)
			}
			if re.Image != image(s.host) {
				t.Errorf("error names %v, want %v", re.Image, image(s.host))
			}
			var te *transport.Error
			if tt.status != 0 && (!errors.As(err, &te) || te.StatusCode != tt.status) {
				t.Errorf("error %v does not unwrap to a %d *transport.Error", err, tt.status)
			}
			if n := len(s.rec.take()); n < tt.minRequests {
				t.Errorf("registry got %d requests, want at least %d (retries)", n, tt.minRequests)
			}
		})
	}
}

func TestResolveMirrors(t *testing.T) {
	t.Parallel()
	cred := auth.Credential{Username: "alice", Password: "s3cret"}
	tests := []struct {
		name string
		// mirror is the hosts.toml entry for the mirror, given its address.
		mirror       func(addr string) string
		mirrorHasTag bool
		mirrorDown   bool
		fromMirror   bool // the digest comes from the mirror
		mirrorAsked  bool
	}{
		{
			name: "mirror first",
			mirror: func(a string) string {
				return fmt.Sprintf("[host.%q]\ncapabilities = [\"pull\", \"resolve\"]\n", "http://"+a)
			},
			mirrorHasTag: true,
			fromMirror:   true,
			mirrorAsked:  true,
		},
		{
			name: "falls back when the mirror lacks the tag",
			mirror: func(a string) string {
				return fmt.Sprintf("[host.%q]\ncapabilities = [\"pull\", \"resolve\"]\n", "http://"+a)
			},
			mirrorAsked: true,
		},
		{
			name: "falls back when the mirror is down",
			mirror: func(a string) string {
				return fmt.Sprintf("[host.%q]\ncapabilities = [\"pull\", \"resolve\"]\n", "http://"+a)
			},
			mirrorDown: true,
		},
		{
			name:         "pull-only mirror is not asked",
			mirror:       func(a string) string { return fmt.Sprintf("[host.%q]\ncapabilities = [\"pull\"]\n", "http://"+a) },
			mirrorHasTag: true,
		},
		{
			name: "mirror with override_path is skipped",
			mirror: func(a string) string {
				return fmt.Sprintf("[host.%q]\noverride_path = true\n", "http://"+a+"/custom/v2")
			},
			mirrorHasTag: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			reg := newServer(t, func(h http.Handler) http.Handler { return basicAuth("alice", "s3cret", h) })
			fromRegistry, _ := push(t, reg.reg, "team/app", "v1")
			mirror := newServer(t, nil)
			// The mirror has a different manifest under the same tag, to tell who answered.
			fromMirror := fromRegistry
			if tt.mirrorHasTag {
				fromMirror, _ = push(t, mirror.reg, "team/app", "v1-mirror")
				pushAs(t, mirror.reg, "team/app", "v1-mirror", "v1")
			}
			mirrorAddr := mirror.host
			if tt.mirrorDown {
				mirrorAddr = closedPort(t)
			}
			h := hostsDir(t, reg.host, fmt.Sprintf("server = %q\n\n%s", "http://"+reg.host, tt.mirror(mirrorAddr)))
			r := newResolver(h)

			got, err := r.Resolve(t.Context(), image(reg.host), cred)
			if err != nil {
				t.Fatal(err)
			}
			want := fromRegistry
			if tt.fromMirror {
				want = fromMirror
			}
			if got != want {
				t.Errorf("Resolve = %s, want %s (from mirror: %t)", got, want, tt.fromMirror)
			}
			mreqs := mirror.rec.take()
			for _, req := range mreqs {
				if req.authorization != "" {
					t.Errorf("mirror got %s with Authorization %q", req, req.authorization)
				}
			}
			if asked := len(mreqs) > 0; asked != tt.mirrorAsked {
				t.Errorf("mirror asked = %t, want %t: %v", asked, tt.mirrorAsked, mreqs)
			}
			if rreqs := reg.rec.take(); tt.fromMirror && len(rreqs) > 0 {
				t.Errorf("registry asked although the mirror answered: %v", rreqs)
			}
		})
	}
}

// pushAs stores the manifest of repo:from under repo:to as well.
func pushAs(t *testing.T, reg http.Handler, repo, from, to string) {
	t.Helper()
	w := httptest.NewRecorder()
	reg.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/v2/"+repo+"/manifests/"+from, nil))
	if w.Code != http.StatusOK {
		t.Fatalf("get %s:%s: %d", repo, from, w.Code)
	}
	req := httptest.NewRequest(http.MethodPut, "/v2/"+repo+"/manifests/"+to, w.Body)
	req.Header.Set("Content-Type", w.Header().Get("Content-Type"))
	w = httptest.NewRecorder()
	reg.ServeHTTP(w, req)
	if w.Code != http.StatusCreated {
		t.Fatalf("push %s:%s: %d", repo, to, w.Code)
	}
}

func TestResolveHostsHeader(t *testing.T) {
	t.Parallel()
	s := newServer(t, nil)
	push(t, s.reg, "team/app", "v1")
	h := hostsDir(t, s.host, fmt.Sprintf("server = %q\n[header]\n  x-registry-key = \"k1\"\n", "http://"+s.host))
	if _, err := newResolver(h).Resolve(t.Context(), image(s.host), auth.Credential{}); err != nil {
		t.Fatal(err)
	}
	for _, req := range s.rec.take() {
		if got := req.header.Get("X-Registry-Key"); got != "k1" {
			t.Errorf("%s: X-Registry-Key = %q, want the header from hosts.toml", req, got)
		}
	}
}

// hosts.toml's headers often carry secrets: the token realm, another host, never gets them.
func TestResolveHostsHeaderStaysWithEndpoint(t *testing.T) {
	t.Parallel()
	realm, tokens := tokenServer(t, "alice", "s3cret", "tok-123")
	s := newServer(t, func(h http.Handler) http.Handler { return bearerAuth(realm, "tok-123", h) })
	push(t, s.reg, "team/app", "v1")
	h := hostsDir(t, s.host, fmt.Sprintf("server = %q\n[header]\n  x-registry-key = \"k1\"\n", "http://"+s.host))
	if _, err := newResolver(h).Resolve(t.Context(), image(s.host), auth.Credential{Username: "alice", Password: "s3cret"}); err != nil {
		t.Fatal(err)
	}
	reqs := tokens.take()
	if len(reqs) == 0 {
		t.Fatal("the token realm was never asked")
	}
	for _, req := range reqs {
		if got := req.header.Get("X-Registry-Key"); got != "" {
			t.Errorf("token realm got %s with X-Registry-Key %q", req, got)
		}
	}
}

func TestResolveTLS(t *testing.T) {
	t.Parallel()
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	want, _ := push(t, reg, "team/app", "v1")
	srv := httptest.NewUnstartedServer(reg)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the case without the CA fails the handshake
	srv.StartTLS()
	t.Cleanup(srv.Close)
	addr := strings.TrimPrefix(srv.URL, "https://")
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		file string
		ok   bool
	}{
		{name: "with the ca", file: fmt.Sprintf("server = %q\nca = %q\n", "https://"+addr, caFile), ok: true},
		{name: "skip_verify", file: fmt.Sprintf("server = %q\nskip_verify = true\n", "https://"+addr), ok: true},
		{name: "without the ca", file: fmt.Sprintf("server = %q\n", "https://"+addr)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := newResolver(hostsDir(t, addr, tt.file)).Resolve(t.Context(), image(addr), auth.Credential{})
			if tt.ok && (err != nil || got != want) {
				t.Errorf("Resolve = %s, %v; want %s", got, err, want)
			}
			if !tt.ok && err == nil {
				t.Errorf("Resolve = %s, want a certificate error", got)
			}
		})
	}
}

// TestResolveNoDowngrade: go-containerregistry falls back to plain HTTP for loopback and private
// addresses; an endpoint configured for https must not be asked, or sent credentials, in clear.
func TestResolveNoDowngrade(t *testing.T) {
	t.Parallel()
	s := newServer(t, func(h http.Handler) http.Handler { return basicAuth("alice", "s3cret", h) })
	push(t, s.reg, "team/app", "v1")
	h := hostsDir(t, s.host, fmt.Sprintf("server = %q\n", "https://"+s.host))

	d, err := newResolver(h).Resolve(t.Context(), image(s.host), auth.Credential{Username: "alice", Password: "s3cret"})
	if err == nil {
		t.Errorf("Resolve = %s over plain HTTP, want an error", d)
	}
	if reqs := s.rec.take(); len(reqs) != 0 {
		t.Errorf("an https endpoint was asked over plain HTTP: %v", reqs)
	}
}

func TestResolveConcurrentShareOneRequest(t *testing.T) {
	t.Parallel()
	arrived := make(chan struct{}, 1)
	release := make(chan struct{})
	s := newServer(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodHead && strings.HasSuffix(r.URL.Path, "/manifests/v1") {
				select {
				case arrived <- struct{}{}:
				default:
				}
				<-release
			}
			h.ServeHTTP(w, r)
		})
	})
	// Unblock handlers before the server closes, also when the test fails early.
	releaseAll := sync.OnceFunc(func() { close(release) })
	t.Cleanup(releaseAll)
	want, _ := push(t, s.reg, "team/app", "v1")
	r := newResolver(plainHTTP(t, s.host))
	img := image(s.host)

	// The first caller starts the request and then gives up; the others must not notice.
	firstCtx, cancelFirst := context.WithCancel(t.Context())
	firstErr := make(chan error, 1)
	go func() {
		_, err := r.Resolve(firstCtx, img, auth.Credential{})
		firstErr <- err
	}()
	<-arrived

	const n = 49
	type result struct {
		d   digest.Digest
		err error
	}
	results := make(chan result, n)
	for range n {
		go func() {
			d, err := r.Resolve(t.Context(), img, auth.Credential{})
			results <- result{d, err}
		}()
	}
	// Wait until every caller waits on the one call.
	key := resolveKey{img.String(), fingerprint(auth.Credential{})}
	for {
		if r.flight.Waiting(key) == n+1 {
			break
		}
		if h := s.rec.count(http.MethodHead, "/manifests/v1"); h > 1 {
			t.Fatalf("concurrent resolves sent %d HEADs, want 1", h)
		}
		runtime.Gosched()
	}

	cancelFirst()
	if err := <-firstErr; !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled caller got %v, want context.Canceled", err)
	}
	releaseAll()
	for range n {
		res := <-results
		if res.err != nil || res.d != want {
			t.Errorf("Resolve = %s, %v; want %s", res.d, res.err, want)
		}
	}
	if h := s.rec.count(http.MethodHead, "/manifests/v1"); h != 1 {
		t.Errorf("%d concurrent resolves sent %d HEADs, want 1", n+1, h)
	}
}
