package verify

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"

	"github.com/pullgate/pullgate/verify/auth"
	"github.com/pullgate/pullgate/verify/hosts"
	"github.com/pullgate/pullgate/verify/registry"
)

// TestTransportsBounded: every registry and repository a pod spec names adds a transport; the
// cache keeps the ones in use and drops the least recently used beyond its bound.
func TestTransportsBounded(t *testing.T) {
	t.Parallel()
	r := newResolver(hosts.New(t.TempDir()))
	ep := hosts.Endpoint{Scheme: "https", Host: "registry.example.com"}
	reg, err := name.NewRegistry(ep.Host)
	if err != nil {
		t.Fatal(err)
	}
	cred := auth.Credential{Username: "alice", Password: "s3cret"}
	kept := r.transport(ep, reg.Repo("kept"), cred)
	dropped := r.transport(ep, reg.Repo("app/0"), cred)
	for i := range maxTransports + 100 {
		r.transport(ep, reg.Repo(fmt.Sprintf("app/%d", i+1)), cred)
		if i%64 == 0 && r.transport(ep, reg.Repo("kept"), cred) != kept {
			t.Fatalf("after %d more repositories the transport in use was dropped", i)
		}
	}
	if n := r.transports.len(); n != maxTransports {
		t.Errorf("%d transports cached, want the bound %d", n, maxTransports)
	}
	if r.transport(ep, reg.Repo("app/0"), cred) == dropped {
		t.Error("the least recently used transport was kept")
	}
	for i := range maxBases + 10 {
		r.transport(hosts.Endpoint{Scheme: "https", Host: fmt.Sprintf("r%d.example.com", i)}, reg.Repo("app"), cred)
	}
	if n := r.bases.len(); n != maxBases {
		t.Errorf("%d connection pools kept, want the bound %d", n, maxBases)
	}
}

// listenOn serves h on ip, a loopback address other than 127.0.0.1.
func listenOn(t *testing.T, ip string, h http.Handler) string {
	t.Helper()
	l, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	return l.Addr().String()
}

// A registry on loopback that delegates its authentication to a token service on another
// loopback address (go-containerregistry refuses such realms) is resolved, and the token is
// reused by the next resolution.
func TestResolveTokenRealmOnAnotherLoopbackAddress(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	asked := 0
	realm := listenOn(t, "127.0.0.2", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != "alice" || p != "s3cret" {
			http.Error(w, "bad credentials", http.StatusUnauthorized)
			return
		}
		mu.Lock()
		asked++
		mu.Unlock()
		io.WriteString(w, `{"token": "tok-internal", "expires_in": 300}`)
	}))
	s := newServer(t, func(h http.Handler) http.Handler { return bearerAuth("http://"+realm+"/token", "tok-internal", h) })
	want, _ := push(t, s.reg, "team/app", "v1")
	r := newResolver(plainHTTP(t, s.host))
	cred := auth.Credential{Username: "alice", Password: "s3cret"}
	for range 3 {
		if got, err := r.Resolve(t.Context(), image(s.host), cred); err != nil || got != want {
			t.Fatalf("Resolve = %s, %v; want %s", got, err, want)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if asked != 1 {
		t.Errorf("three resolutions asked for %d tokens, want 1", asked)
	}
}

// A refused realm is a definite answer: a *registry.RefusedError inside a RegistryError that is
// not Unavailable.
func TestResolveRefusedRealmIsDefinite(t *testing.T) {
	t.Parallel()
	s := newServer(t, func(h http.Handler) http.Handler { return bearerAuth("http://169.254.169.254/token", "never", h) })
	push(t, s.reg, "team/app", "v1")
	_, err := newResolver(plainHTTP(t, s.host)).Resolve(t.Context(), image(s.host), auth.Credential{Username: "alice", Password: "s3cret"})
	var refused *registry.RefusedError
	if !errors.As(err, &refused) || refused.What != "token realm" || refused.To != "169.254.169.254" {
		t.Fatalf("Resolve error = %v, want a refused token realm", err)
	}
	var re *RegistryError
	if !errors.As(err, &re) || re.Unavailable {
		t.Errorf("error %v: want a RegistryError that is not Unavailable", err)
	}
	if want := "refusing token realm from " + s.host + " to 169.254.169.254: link-local/metadata address"; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not say %q", err, want)
	}
}

// Blobs that the registry redirects to a store on another loopback address are fetched with
// the repository's options, the store gets no credentials, and the blob is kept as evidence
// under the registry's own request.
func TestRepositoryFollowsBlobRedirect(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var storeAuth []string
	var s *server
	store := listenOn(t, "127.0.0.2", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		storeAuth = append(storeAuth, r.Header.Get("Authorization"))
		mu.Unlock()
		s.reg.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/v2/team/app/blobs/"+strings.TrimPrefix(r.URL.Path, "/"), nil))
	}))
	s = newServer(t, func(h http.Handler) http.Handler {
		return basicAuth("alice", "s3cret", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if d, ok := strings.CutPrefix(r.URL.Path, "/v2/team/app/blobs/"); ok && r.Method == http.MethodGet {
				http.Redirect(w, r, "http://"+store+"/"+d+"?sig=s1", http.StatusTemporaryRedirect)
				return
			}
			h.ServeHTTP(w, r)
		}))
	})
	content := "signature layer"
	d := digest.FromString(content)
	w := httptest.NewRecorder()
	s.reg.ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/v2/team/app/blobs/uploads/?digest="+d.String(), strings.NewReader(content)))
	if w.Code != http.StatusCreated {
		t.Fatalf("upload: %d %s", w.Code, w.Body)
	}

	rec := new(evidenceRecorder)
	ctx := withRecorder(t.Context(), rec)
	r := newResolver(plainHTTP(t, s.host))
	repo, opts, err := r.Repository(ctx, image(s.host), auth.Credential{Username: "alice", Password: "s3cret"})
	if err != nil {
		t.Fatal(err)
	}
	layer, err := remote.Layer(repo.Digest(d.String()), opts...)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := layer.Compressed()
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || string(got) != content {
		t.Fatalf("blob = %q, %v; want %q", got, err, content)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(storeAuth) == 0 {
		t.Fatal("the store was never asked")
	}
	for _, a := range storeAuth {
		if a != "" {
			t.Errorf("the store got Authorization %q", a)
		}
	}
	key := "GET " + s.host + "/v2/team/app/blobs/" + d.String()
	if got := rec.responses[key]; string(got.Body) != content {
		t.Errorf("evidence for %s = %q, want the blob (evidence: %v)", key, got.Body, len(rec.responses))
	}
}
