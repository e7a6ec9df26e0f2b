package harness

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Registry is go-containerregistry's in-process registry on a loopback TCP port, plain HTTP,
// behind real basic or token (bearer) authentication.
type Registry struct {
	Host     string // "127.0.0.1:PORT"
	URL      string // "http://127.0.0.1:PORT"
	Username string // the first user, used by the push helpers
	Password string

	tokenAuth bool
	users     map[string]string

	mu       sync.Mutex
	tokens   map[string]bool
	requests Requests
	onServe  func(*http.Request)
	down     bool

	// Set by WithTokenRealm and WithBlobRedirect.
	realmHost, realmURL string
	storeHost, storeURL string
	storeSecret         string
	upstream            http.Handler
}

// Requests counts what the registry was asked. Requests made by the harness's own push helpers
// are not counted, so tests see only what their subjects did.
type Requests struct {
	// ManifestHEAD and ManifestGET count authorized manifest requests by the reference in the
	// URL: "repo:tag" or "repo@sha256:...".
	ManifestHEAD map[string]int
	ManifestGET  map[string]int
	BlobGET      int // authorized blob GETs, any repository
	// BlobGETs counts authorized blob GETs by "repo@sha256:...".
	BlobGETs     map[string]int
	Unauthorized int // requests answered 401, on /v2/ or /token
	Tokens       int // tokens issued by /token (token mode)
	// TokensBy counts the tokens issued by the requester's User-Agent product, lower case:
	// "pullgate", "containerd".
	TokensBy map[string]int
	// StoreGETs counts the blob GETs the blob store of WithBlobRedirect served, by User-Agent
	// product; StoreCredentials the requests to the store that carried an Authorization header
	// or a cookie.
	StoreGETs        map[string]int
	StoreCredentials int
}

// RegistryOption configures StartRegistry.
type RegistryOption func(*Registry)

// WithUser adds an account; the first one added is Registry.Username. Without any, the registry
// has one user "pullgate" with a random password.
func WithUser(user, password string) RegistryOption {
	return func(r *Registry) {
		if r.Username == "" {
			r.Username, r.Password = user, password
		}
		r.users[user] = password
	}
}

// WithTokenAuth makes the registry answer with a Bearer challenge pointing at its own /token
// endpoint, as Docker Hub and most hosted registries do, instead of asking for basic auth.
func WithTokenAuth() RegistryOption {
	return func(r *Registry) { r.tokenAuth = true }
}

// WithTokenRealm serves the token service of WithTokenAuth on another host, as registries that
// delegate their authentication do, and names it in the registry's challenges. A loopback host
// (on Linux all of 127.0.0.0/8 answers, so "127.0.0.2") gets a listener on a port of its own;
// any other host is only named, as http://HOST/token, and nothing listens there: tests talk to
// loopback only, and use it to check what clients refuse. The push helpers keep using the
// registry's own token endpoint.
func WithTokenRealm(host string) RegistryOption {
	return func(r *Registry) { r.realmHost = host }
}

// WithBlobRedirect makes the registry answer authorized blob GETs (not the push helpers') with a
// 307 to a blob store on host, with a signed URL as object stores give, the way registries
// backed by S3 or GCS do. The store serves blobs to any request that has the signature and
// counts them in StoreGETs. As with WithTokenRealm, a host that is not loopback is only named.
func WithBlobRedirect(host string) RegistryOption {
	return func(r *Registry) { r.storeHost = host }
}

// setupHeader marks the push helpers' requests so that they are not counted.
const setupHeader = "X-Pullgate-Harness-Setup"

// realm is the basic-auth realm and the bearer-token service name.
const realm = "pullgate-test"

// StartRegistry starts a registry that is closed when the test ends.
func StartRegistry(t T, opts ...RegistryOption) *Registry {
	t.Helper()
	r := &Registry{users: map[string]string{}, tokens: map[string]bool{}}
	for _, o := range opts {
		o(r)
	}
	if r.Username == "" {
		WithUser("pullgate", randomHex(8))(r)
	}
	r.Reset()

	upstream := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	r.upstream = upstream
	mux := http.NewServeMux()
	mux.HandleFunc("/token", r.serveToken)
	mux.Handle("/v2/", r.authenticate(upstream))
	srv := httptest.NewServer(r.outage(mux)) // listens on 127.0.0.1:0
	t.Cleanup(srv.Close)
	r.URL = srv.URL
	r.Host = strings.TrimPrefix(srv.URL, "http://")
	if r.realmHost != "" {
		realmMux := http.NewServeMux()
		realmMux.HandleFunc("/token", r.serveToken)
		r.realmURL = serveOn(t, r.realmHost, r.outage(realmMux)) + "/token"
	}
	if r.storeHost != "" {
		r.storeSecret = randomHex(8)
		r.storeURL = serveOn(t, r.storeHost, r.outage(http.HandlerFunc(r.serveStore)))
	}
	return r
}

// Requests returns a snapshot of the counters.
func (r *Registry) Requests() Requests {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.requests
	s.ManifestHEAD = maps.Clone(s.ManifestHEAD)
	s.ManifestGET = maps.Clone(s.ManifestGET)
	s.BlobGETs = maps.Clone(s.BlobGETs)
	s.TokensBy = maps.Clone(s.TokensBy)
	s.StoreGETs = maps.Clone(s.StoreGETs)
	return s
}

// OnServe makes the registry call f before serving each authorized request that it counts
// (not the push helpers' own, so f may use them), for example to move a tag at a chosen moment.
// nil removes it.
func (r *Registry) OnServe(f func(*http.Request)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.onServe = f
}

// SetDown makes the registry drop every connection, as a registry that is stopped or out of
// reach does, until SetDown(false). The push helpers still reach it.
func (r *Registry) SetDown(down bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.down = down
}

func (r *Registry) outage(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		down := r.down
		r.mu.Unlock()
		if down && req.Header.Get(setupHeader) == "" {
			if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
				conn.Close()
			}
			return
		}
		next.ServeHTTP(w, req)
	})
}

// Reset sets all counters to zero.
func (r *Registry) Reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.requests = Requests{ManifestHEAD: map[string]int{}, ManifestGET: map[string]int{}, BlobGETs: map[string]int{}}
	r.requests.TokensBy, r.requests.StoreGETs = map[string]int{}, map[string]int{}
}

func (r *Registry) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		setup := req.Header.Get(setupHeader) != ""
		if !r.authorized(req) {
			if !setup {
				r.count(func(c *Requests) { c.Unauthorized++ })
			}
			r.challenge(w, req)
			return
		}
		if !setup {
			r.countServed(req)
			r.mu.Lock()
			onServe := r.onServe
			r.mu.Unlock()
			if onServe != nil {
				onServe(req)
			}
		}
		if !setup && r.redirectBlob(w, req) {
			return
		}
		next.ServeHTTP(w, req)
	})
}

func (r *Registry) authorized(req *http.Request) bool {
	h := req.Header.Get("Authorization")
	if r.tokenAuth {
		tok, ok := strings.CutPrefix(h, "Bearer ")
		r.mu.Lock()
		defer r.mu.Unlock()
		return ok && r.tokens[tok]
	}
	user, pass, ok := req.BasicAuth()
	return ok && r.checkUser(user, pass)
}

func (r *Registry) checkUser(user, pass string) bool {
	want, ok := r.users[user]
	return ok && want == pass
}

func (r *Registry) challenge(w http.ResponseWriter, req *http.Request) {
	if r.tokenAuth {
		c := fmt.Sprintf(`Bearer realm="%s/token",service="%s"`, r.URL, realm)
		if r.realmURL != "" && req.Header.Get(setupHeader) == "" { // the push helpers use the registry's own
			c = fmt.Sprintf(`Bearer realm="%s",service="%s"`, r.realmURL, realm)
		}
		if repo, _, _ := splitPath(req.URL.Path); repo != "" {
			action := "pull"
			if req.Method != http.MethodGet && req.Method != http.MethodHead {
				action = "pull,push"
			}
			c += fmt.Sprintf(`,scope="repository:%s:%s"`, repo, action)
		}
		w.Header().Set("WWW-Authenticate", c)
	} else {
		w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Basic realm=%q`, realm))
	}
	writeUnauthorized(w)
}

func writeUnauthorized(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusUnauthorized)
	_, _ = io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":null}]}`)
}

// serveToken implements the token endpoint of the distribution token-auth spec: GET with basic
// credentials (docker, go-containerregistry), and the OAuth2 password grant by POST, which
// containerd tries first when it has a password.
func (r *Registry) serveToken(w http.ResponseWriter, req *http.Request) {
	var user, pass string
	var ok bool
	switch req.Method {
	case http.MethodGet:
		user, pass, ok = req.BasicAuth()
	case http.MethodPost:
		ok = req.ParseForm() == nil && req.PostForm.Get("grant_type") == "password"
		user, pass = req.PostForm.Get("username"), req.PostForm.Get("password")
	default:
		w.WriteHeader(http.StatusMethodNotAllowed)
		return
	}
	setup := req.Header.Get(setupHeader) != ""
	if !r.tokenAuth || !ok || !r.checkUser(user, pass) {
		if !setup {
			r.count(func(c *Requests) { c.Unauthorized++ })
		}
		writeUnauthorized(w)
		return
	}
	tok := randomHex(16)
	r.mu.Lock()
	r.tokens[tok] = true
	if !setup {
		r.requests.Tokens++
		r.requests.TokensBy[agent(req)]++
	}
	r.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"token": tok, "access_token": tok, "expires_in": 300})
}

func (r *Registry) countServed(req *http.Request) {
	repo, kind, ref := splitPath(req.URL.Path)
	key := repo + ":" + ref
	if strings.Contains(ref, ":") {
		key = repo + "@" + ref
	}
	r.count(func(c *Requests) {
		switch {
		case kind == "manifests" && req.Method == http.MethodHead:
			c.ManifestHEAD[key]++
		case kind == "manifests" && req.Method == http.MethodGet:
			c.ManifestGET[key]++
		case kind == "blobs" && req.Method == http.MethodGet:
			c.BlobGET++
			c.BlobGETs[key]++
		}
	})
}

func (r *Registry) count(f func(*Requests)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f(&r.requests)
}

// splitPath splits "/v2/<repo>/<kind>/<ref>" where kind is manifests, blobs or tags. Repository
// names may contain slashes, so the last kind segment wins.
func splitPath(path string) (repo, kind, ref string) {
	p, ok := strings.CutPrefix(path, "/v2/")
	if !ok {
		return "", "", ""
	}
	for _, k := range []string{"/manifests/", "/blobs/", "/tags/"} {
		if i := strings.LastIndex(p, k); i > 0 {
			return p[:i], strings.Trim(k, "/"), p[i+len(k):]
		}
	}
	return "", "", ""
}

// PushRandomImage pushes a small random image for the host's platform (linux/GOARCH, which
// containerd's CRI plugin requires) as repo:tag and returns it.
func (r *Registry) PushRandomImage(t T, repo, tag string) v1.Image {
	t.Helper()
	img := randomImage(t, "linux", runtime.GOARCH)
	if err := remote.Write(r.tag(t, repo, tag), img, r.remoteOptions()...); err != nil {
		t.Fatalf("push %s/%s:%s: %v", r.Host, repo, tag, err)
	}
	return img
}

// PushIndex pushes an index with one random image per platform ("os/arch") as repo:tag.
func (r *Registry) PushIndex(t T, repo, tag string, platforms ...string) v1.ImageIndex {
	t.Helper()
	var adds []mutate.IndexAddendum
	for _, p := range platforms {
		goos, arch, ok := strings.Cut(p, "/")
		if !ok {
			t.Fatalf("platform %q: want os/arch", p)
		}
		adds = append(adds, mutate.IndexAddendum{
			Add:        randomImage(t, goos, arch),
			Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: goos, Architecture: arch}},
		})
	}
	idx := mutate.AppendManifests(empty.Index, adds...)
	if err := remote.WriteIndex(r.tag(t, repo, tag), idx, r.remoteOptions()...); err != nil {
		t.Fatalf("push index %s/%s:%s: %v", r.Host, repo, tag, err)
	}
	return idx
}

// Tag points repo:tag at the manifest or index repo@digest, which must already be pushed.
func (r *Registry) Tag(t T, repo, tag string, digest v1.Hash) {
	t.Helper()
	src, err := name.NewDigest(fmt.Sprintf("%s/%s@%s", r.Host, repo, digest), name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	desc, err := remote.Get(src, r.remoteOptions()...)
	if err != nil {
		t.Fatalf("get %s: %v", src, err)
	}
	if err := remote.Tag(r.tag(t, repo, tag), desc, r.remoteOptions()...); err != nil {
		t.Fatalf("tag %s as %s: %v", src, tag, err)
	}
}

func (r *Registry) tag(t T, repo, tag string) name.Tag {
	t.Helper()
	ref, err := name.NewTag(fmt.Sprintf("%s/%s:%s", r.Host, repo, tag), name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

func (r *Registry) remoteOptions() []remote.Option {
	return []remote.Option{
		remote.WithAuth(&authn.Basic{Username: r.Username, Password: r.Password}),
		remote.WithTransport(setupTransport{http.DefaultTransport}),
	}
}

// setupTransport marks requests as the harness's own, so that they are not counted.
type setupTransport struct{ next http.RoundTripper }

func (s setupTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	req = req.Clone(req.Context())
	req.Header.Set(setupHeader, "1")
	return s.next.RoundTrip(req)
}

func randomImage(t T, goos, arch string) v1.Image {
	t.Helper()
	img, err := random.Image(512, 2)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = goos, arch
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never returns an error
	return hex.EncodeToString(b)
}

// DockerConfig writes dir/config.json, a docker config file holding the registry's credentials
// as a node keeps them, and returns its path.
func (r *Registry) DockerConfig(t T, dir string) string {
	t.Helper()
	b, err := r.dockerConfig()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "config.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// dockerConfig is a Docker config.json with the registry's credentials.
func (r *Registry) dockerConfig() ([]byte, error) {
	return json.Marshal(map[string]any{"auths": map[string]any{
		r.Host: map[string]string{"auth": base64.StdEncoding.EncodeToString([]byte(r.Username + ":" + r.Password))},
	}})
}

// serveOn serves h on host: on a port of its own when host is a loopback address, and
// otherwise nowhere. It returns the server's URL.
func serveOn(t T, host string, h http.Handler) string {
	t.Helper()
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return "http://" + host
	}
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatalf("listen on %s: %v", host, err)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.URL
}

// redirectBlob answers a blob GET with a redirect to the blob store, when there is one.
func (r *Registry) redirectBlob(w http.ResponseWriter, req *http.Request) bool {
	repo, kind, ref := splitPath(req.URL.Path)
	if r.storeURL == "" || kind != "blobs" || req.Method != http.MethodGet {
		return false
	}
	http.Redirect(w, req, fmt.Sprintf("%s/blobs/%s/%s?X-Signature=%s", r.storeURL, repo, ref, r.storeSecret), http.StatusTemporaryRedirect)
	return true
}

// serveStore is the blob store: /blobs/REPO/DIGEST with the signature the registry gave.
func (r *Registry) serveStore(w http.ResponseWriter, req *http.Request) {
	if req.Header.Get("Authorization") != "" || req.Header.Get("Cookie") != "" {
		r.count(func(c *Requests) { c.StoreCredentials++ })
	}
	p, ok := strings.CutPrefix(req.URL.Path, "/blobs/")
	i := strings.LastIndex(p, "/")
	if !ok || i < 0 || req.URL.Query().Get("X-Signature") != r.storeSecret || (req.Method != http.MethodGet && req.Method != http.MethodHead) {
		http.Error(w, "AccessDenied", http.StatusForbidden)
		return
	}
	if req.Method == http.MethodGet {
		r.count(func(c *Requests) { c.StoreGETs[agent(req)]++ })
	}
	r.upstream.ServeHTTP(w, httptest.NewRequest(req.Method, "/v2/"+p[:i]+"/blobs/"+p[i+1:], nil))
}

// agent is the product of a request's User-Agent, lower case: "containerd" for
// "containerd/v2.4.2".
func agent(req *http.Request) string {
	ua := req.Header.Get("User-Agent")
	if i := strings.IndexAny(ua, "/ "); i >= 0 {
		ua = ua[:i]
	}
	return strings.ToLower(ua)
}
