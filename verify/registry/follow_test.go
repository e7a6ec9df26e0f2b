package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
)

// seen is what a test server was asked.
type seen struct {
	mu   sync.Mutex
	reqs []*http.Request
}

func (s *seen) add(r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reqs = append(s.reqs, r.Clone(context.Background()))
}

func (s *seen) all() []*http.Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*http.Request(nil), s.reqs...)
}

// serve starts a server on ip (a loopback address: all of 127/8 answers on Linux) that records
// its requests and answers them with h.
func serve(t *testing.T, ip string, h http.HandlerFunc) (host string, s *seen) {
	t.Helper()
	l, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	s = &seen{}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.add(r)
		h(w, r)
	}))
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	return l.Addr().String(), s
}

// redirector answers every request with a redirect to where(r).
func redirector(where func(r *http.Request) string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, where(r), http.StatusTemporaryRedirect)
	}
}

func blob(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "blob") }

// hopClient is a follower over a Transport for host, as New builds it.
func hopClient(host string, dns *fakeDNS) http.RoundTripper {
	t := NewTransport(host, nil)
	if dns != nil {
		t.resolver = dns.resolver()
	}
	return follower{t}
}

func get(t *testing.T, rt http.RoundTripper, ctx context.Context, url string, header http.Header) (*http.Response, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := rt.RoundTrip(req)
	if err == nil {
		t.Cleanup(func() { resp.Body.Close() })
	}
	return resp, err
}

// A registry on loopback may send pullgate to another loopback address, a blob store: it gets
// the blob request, and none of the credentials that went to the registry.
func TestFollowKeepsCredentialsHome(t *testing.T) {
	t.Parallel()
	store, stored := serve(t, "127.0.0.2", blob)
	reg, asked := serve(t, "127.0.0.1", redirector(func(r *http.Request) string {
		if strings.HasPrefix(r.URL.Path, "/same/") {
			return "/v2/blob"
		}
		return "http://" + store + "/sha256:abc?X-Amz-Signature=s1"
	}))
	h := http.Header{"Authorization": {"Bearer secret"}, "Cookie": {"session=1"}, "X-Registry-Key": {"k1"}, "Accept": {"application/octet-stream"}, "Range": {"bytes=0-"}}

	resp, err := get(t, hopClient(reg, nil), t.Context(), "http://"+reg+"/v2/team/app/blobs/sha256:abc", h)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET = %v, %v; want the blob", resp, err)
	}
	if got, _ := io.ReadAll(resp.Body); string(got) != "blob" {
		t.Errorf("body %q, want the blob store's", got)
	}
	reqs := stored.all()
	if len(reqs) != 1 {
		t.Fatalf("blob store asked %d times, want once", len(reqs))
	}
	for _, k := range []string{"Authorization", "Cookie", "X-Registry-Key"} {
		if v := reqs[0].Header.Get(k); v != "" {
			t.Errorf("the blob store got %s: %q", k, v)
		}
	}
	for _, k := range []string{"Accept", "Range"} {
		if v := reqs[0].Header.Get(k); v != h.Get(k) {
			t.Errorf("the blob store got %s %q, want %q", k, v, h.Get(k))
		}
	}
	// The answer names the request it followed from, as net/http's do.
	if prev := resp.Request.Response; prev == nil || prev.Request.URL.Host != reg || prev.StatusCode != http.StatusTemporaryRedirect {
		t.Errorf("the blob's request does not lead back to the registry's redirect")
	}

	// A redirect within the registry keeps them.
	if _, err := get(t, hopClient(reg, nil), t.Context(), "http://"+reg+"/same/x", h); err != nil {
		t.Fatal(err)
	}
	last := asked.all()
	if got := last[len(last)-1]; got.URL.Path != "/v2/blob" || got.Header.Get("Authorization") != "Bearer secret" {
		t.Errorf("the registry's own redirect got %s with Authorization %q, want the credentials", got.URL.Path, got.Header.Get("Authorization"))
	}
}

// wantRefused checks that err is a refusal with the message want: err itself when it was
// refused before any dial, or a dial error that wraps it.
func wantRefused(t *testing.T, err error, want string) {
	t.Helper()
	var re *RefusedError
	if !errors.As(err, &re) || re.Error() != want {
		t.Errorf("error %v, want a *RefusedError %q", err, want)
	}
}

// wantRefusedBeforeDial checks that err is a refusal made before any connection was tried.
func wantRefusedBeforeDial(t *testing.T, err error, want string) {
	t.Helper()
	wantRefused(t, err, want)
	var ne *net.OpError
	if errors.As(err, &ne) {
		t.Errorf("error %v came from a dial, want it refused before", err)
	}
}

func TestFollowRefuses(t *testing.T) {
	t.Parallel()
	dns := startDNS(t)
	dns.set("metadata.test", "169.254.169.254")
	dns.set("home.test", "127.0.0.1")
	store, stored := serve(t, "127.0.0.2", blob)

	tests := []struct {
		name     string
		location string
		want     string // the error, with REG for the registry's host
		dialled  bool   // refused when dialled, rather than before
	}{
		{"metadata literal", "http://169.254.169.254/latest/meta-data/", "refusing redirect from REG to 169.254.169.254: link-local/metadata address", false},
		{"link-local with a port", "http://169.254.0.2:8080/blob", "refusing redirect from REG to 169.254.0.2:8080: link-local/metadata address", false},
		{"IPv4-mapped metadata", "http://[::ffff:169.254.169.254]/", "refusing redirect from REG to [::ffff:169.254.169.254]: link-local/metadata address", false},
		{"IPv6 link-local", "http://[fe80::1]:80/", "refusing redirect from REG to [fe80::1]:80: link-local/metadata address", false},
		{"alibaba metadata", "http://100.100.100.200/latest/meta-data/", "refusing redirect from REG to 100.100.100.200: link-local/metadata address", false},
		{"a name for the metadata address, refused when dialled", "http://metadata.test/latest/meta-data/", "refusing redirect from REG to metadata.test (169.254.169.254): link-local/metadata address", true},
		{"another scheme", "file:///etc/passwd", `refusing redirect from REG to file:///etc/passwd: scheme "file"`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			reg, _ := serve(t, "127.0.0.1", redirector(func(*http.Request) string { return tt.location }))
			_, err := get(t, hopClient(reg, dns), t.Context(), "http://"+reg+"/v2/team/app/blobs/sha256:abc", nil)
			if tt.dialled {
				wantRefused(t, err, strings.ReplaceAll(tt.want, "REG", reg))
			} else {
				wantRefusedBeforeDial(t, err, strings.ReplaceAll(tt.want, "REG", reg))
			}
		})
	}

	t.Run("https to http", func(t *testing.T) {
		t.Parallel()
		srv := httptest.NewTLSServer(redirector(func(*http.Request) string { return "http://" + store + "/blob" }))
		t.Cleanup(srv.Close)
		tlsHost := strings.TrimPrefix(srv.URL, "https://")
		tr := NewTransport(tlsHost, srv.Client().Transport.(*http.Transport).TLSClientConfig)
		_, err := get(t, follower{tr}, t.Context(), "https://"+tlsHost+"/v2/team/app/blobs/sha256:abc", http.Header{"Authorization": {"Bearer secret"}})
		wantRefusedBeforeDial(t, err, fmt.Sprintf("refusing redirect from %s to %s: https to plain http", tlsHost, store))
		if n := len(stored.all()); n != 0 {
			t.Errorf("the plain-http target was asked %d times", n)
		}
	})

	t.Run("too many redirects", func(t *testing.T) {
		t.Parallel()
		reg, _ := serve(t, "127.0.0.1", redirector(func(r *http.Request) string { return r.URL.Path + "x" }))
		_, err := get(t, hopClient(reg, nil), t.Context(), "http://"+reg+"/v2/", nil)
		if err == nil || !strings.Contains(err.Error(), "stopped after 10 redirects") {
			t.Errorf("error %v, want the redirects bounded", err)
		}
	})
}

// A chain of redirects is bounded by the least internal address along it: that a name
// resolves to a loopback address does not let a hop that may only go public or private reach
// it, not even over a connection the registry's own traffic left open; and the check is made
// when dialling, whatever the name resolved to before.
func TestFollowDialTimeBound(t *testing.T) {
	t.Parallel()
	dns := startDNS(t)
	target, asked := serve(t, "127.0.0.2", blob)
	_, port, _ := net.SplitHostPort(target)
	dns.set("store.test", "127.0.0.2")
	rt := hopClient("registry.test", dns)
	if _, err := get(t, rt, t.Context(), "http://store.test:"+port+"/blob", nil); err != nil {
		t.Fatalf("a loopback registry's own traffic to loopback: %v", err)
	}

	// As if the registry had answered from a private or a public address.
	for _, bound := range []Class{Public, Private} {
		by := map[Class]string{Public: "203.0.113.5", Private: "10.0.0.5"}[bound]
		ctx := withHop(t.Context(), hop{what: "redirect", from: "registry.test", to: "store.test:" + port, bound: bound, boundBy: netip.MustParseAddr(by)})
		_, err := get(t, rt, ctx, "http://store.test:"+port+"/blob", nil)
		wantRefused(t, err, fmt.Sprintf("refusing redirect from registry.test to store.test:%s (127.0.0.2): loopback address, more internal than %s (%s)", port, by, bound))
	}
	// The connection the registry's own request left idle is not reused for them.
	if n := len(asked.all()); n != 1 {
		t.Fatalf("the loopback target was asked %d times, want once", n)
	}

	// DNS rebinding: the name that led to loopback leads to the metadata address when next dialled.
	dns.set("store.test", "169.254.169.254")
	rt.(follower).inner.(*Transport).CloseIdleConnections()
	_, err := get(t, rt, t.Context(), "http://store.test:"+port+"/blob", nil)
	wantRefused(t, err, "refusing connection to 169.254.169.254:"+port+": link-local/metadata address")
}
