package verify

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	protocommon "github.com/sigstore/protobuf-specs/gen/pb-go/common/v1"
	"github.com/sigstore/sigstore-go/pkg/sign"

	"github.com/pullgate/pullgate/verify/auth"
)

// unavailable is the one judge of "may pass": only it may lead to the last-known-good
// fallback, so anything a man in the middle could cause must be a definite answer.
func TestUnavailable(t *testing.T) {
	t.Parallel()
	dial := func(err error) error {
		return &url.Error{Op: "Get", URL: "https://r.example.com/v2/", Err: &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", err)}}
	}
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{name: "connection refused", err: dial(syscall.ECONNREFUSED), want: true},
		{name: "connection reset", err: dial(syscall.ECONNRESET), want: true},
		{name: "host unreachable", err: dial(syscall.EHOSTUNREACH), want: true},
		{name: "network unreachable", err: dial(syscall.ENETUNREACH), want: true},
		{name: "connection closed mid-response", err: &url.Error{Op: "Get", URL: "https://r.example.com/v2/", Err: io.EOF}, want: true},
		{name: "deadline", err: fmt.Errorf("resolve: %w", context.DeadlineExceeded), want: true},
		{name: "temporary DNS failure", err: &url.Error{Op: "Get", Err: &net.DNSError{Err: "server misbehaving", Name: "r.example.com", IsTemporary: true}}, want: true},
		{name: "DNS timeout", err: &net.DNSError{Err: "i/o timeout", Name: "r.example.com", IsTimeout: true}, want: true},
		{name: "503", err: &transport.Error{StatusCode: http.StatusServiceUnavailable}, want: true},
		{name: "500", err: &transport.Error{StatusCode: http.StatusInternalServerError}, want: true},
		{name: "429", err: &transport.Error{StatusCode: http.StatusTooManyRequests}, want: true},
		{name: "no such host", err: &url.Error{Op: "Get", Err: &net.DNSError{Err: "no such host", Name: "r.example.com", IsNotFound: true}}},
		{name: "unknown certificate authority", err: &url.Error{Op: "Get", Err: x509.UnknownAuthorityError{}}},
		{name: "certificate for another host", err: &url.Error{Op: "Get", Err: x509.HostnameError{Host: "r.example.com"}}},
		{name: "pullgate's refusal to downgrade", err: &url.Error{Op: "Get", Err: errors.New("refusing http to r.example.com: the endpoint is configured for https")}},
		{name: "pullgate's refusal of an address", err: dial(errors.New("refusing to connect to link-local or metadata address 169.254.169.254"))},
		{name: "401", err: &transport.Error{StatusCode: http.StatusUnauthorized}},
		{name: "403", err: &transport.Error{StatusCode: http.StatusForbidden}},
		{name: "404", err: &transport.Error{StatusCode: http.StatusNotFound}},
		{name: "a bound", err: &url.Error{Op: "Get", Err: &Denial{"too big"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := unavailable(tc.err); got != tc.want {
				t.Errorf("unavailable(%v) = %t, want %t", tc.err, got, tc.want)
			}
		})
	}
}

// Every way resolution can fail, against real servers on loopback, is one of three kinds.
func TestResolveErrorKinds(t *testing.T) {
	t.Parallel()
	answer := func(code int) func(*testing.T) string {
		return func(t *testing.T) string {
			return newServer(t, func(http.Handler) http.Handler {
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { http.Error(w, "no", code) })
			}).host
		}
	}
	tests := []struct {
		name     string
		registry func(*testing.T) string
		// https serves the registry with TLS and a certificate that the endpoint does not trust.
		https bool
		// mirror, when set, is a mirror tried before the registry.
		mirror func(*testing.T) string
		want   Kind
		text   string
	}{
		{name: "mirror lacks the image, registry unreachable", registry: closedPort, mirror: func(t *testing.T) string { return newServer(t, nil).host }, want: Unavailable},
		{name: "mirror unreachable, registry says not found", registry: func(t *testing.T) string { return newServer(t, nil).host }, mirror: closedPort, want: Failed},
		{name: "503 beyond the retries", registry: answer(http.StatusServiceUnavailable), want: Unavailable},
		{name: "429 beyond the retries", registry: answer(http.StatusTooManyRequests), want: Unavailable},
		{name: "nothing listens", registry: closedPort, want: Unavailable},
		{name: "connection dropped", registry: func(t *testing.T) string {
			return newServer(t, func(http.Handler) http.Handler { return hangUp{} }).host
		}, want: Unavailable},
		{name: "401", registry: answer(http.StatusUnauthorized), want: Failed},
		{name: "tag not found", registry: func(t *testing.T) string { return newServer(t, nil).host }, want: Failed},
		{name: "certificate not trusted", registry: func(t *testing.T) string {
			srv := httptest.NewUnstartedServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
			srv.Config.ErrorLog = log.New(io.Discard, "", 0)
			srv.StartTLS()
			t.Cleanup(srv.Close)
			return strings.TrimPrefix(srv.URL, "https://")
		}, https: true, want: Failed, text: "certificate"},
		{name: "plain HTTP where https is configured", registry: func(t *testing.T) string { return newServer(t, nil).host }, https: true, want: Failed},
		{name: "manifest larger than a registry must accept", registry: func(t *testing.T) string {
			s := newServer(t, stripDigest)
			huge := strings.Repeat(" ", maxManifestSize)
			pushRaw(t, s.reg, "team/app", "v1", `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]`+huge+`}`)
			return s.host
		}, want: Denied, text: "the manifest is larger than 4194304 bytes"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			host := tc.registry(t)
			h := plainHTTP(t, host)
			switch {
			case tc.https:
				h = hostsDir(t, host, fmt.Sprintf("server = %q\n", "https://"+host))
			case tc.mirror != nil:
				h = hostsDir(t, host, fmt.Sprintf("server = %q\n[host.%q]\ncapabilities = [\"pull\", \"resolve\"]\n", "http://"+host, "http://"+tc.mirror(t)))
			}
			d, err := newResolver(h).Resolve(t.Context(), image(host), auth.Credential{Username: "alice", Password: "s3cret"})
			if err == nil {
				t.Fatalf("Resolve = %s, want an error", d)
			}
			if got := KindOf(err); got != tc.want {
				t.Errorf("KindOf(%v) = %d, want %d", err, got, tc.want)
			}
			if !strings.Contains(err.Error(), tc.text) {
				t.Errorf("error %q does not say %q", err, tc.text)
			}
			if strings.Contains(err.Error(), "s3cret") {
				t.Errorf("error %q shows the password", err)
			}
		})
	}
}

// Fetching signatures: a definite answer fails the check, unavailability may pass, and bounds
// deny (see TestVerifyBounds for each bound).
func TestVerifyErrorKinds(t *testing.T) {
	t.Parallel()
	sigs := func(code int) func(http.Handler) http.Handler {
		return func(h http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if strings.HasSuffix(r.URL.Path, ".sig") && r.Method != http.MethodPut {
					http.Error(w, "no", code)
					return
				}
				h.ServeHTTP(w, r)
			})
		}
	}
	tests := []struct {
		name   string
		wrap   func(http.Handler) http.Handler
		signed bool
		want   Kind
	}{
		{name: "503", wrap: sigs(http.StatusServiceUnavailable), want: Unavailable},
		{name: "429", wrap: sigs(http.StatusTooManyRequests), want: Unavailable},
		{name: "403", wrap: sigs(http.StatusForbidden), want: Failed},
		{name: "connection dropped", wrap: func(h http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if strings.HasSuffix(r.URL.Path, ".sig") && r.Method != http.MethodPut {
					hangUp{}.ServeHTTP(w, r)
					return
				}
				h.ServeHTTP(w, r)
			})
		}, want: Unavailable},
		// The signature manifest comes, its layer (the signed payload) does not: the signature
		// was not read, which says nothing about whether it verifies.
		{name: "signature layer 503", wrap: func(h http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if strings.Contains(r.URL.Path, "/blobs/") && r.Method == http.MethodGet {
					http.Error(w, "no", http.StatusServiceUnavailable)
					return
				}
				h.ServeHTTP(w, r)
			})
		}, signed: true, want: Unavailable},
	}
	key := newTestKey(t)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			host := testRegistryWith(t, tc.wrap)
			d := pushImage(t, host+"/kinds/app:v1")
			if tc.signed {
				key.sign(t, d, d)
			}
			v := newTestVerifier(t, keyRule("kinds", []string{host + "/kinds/**"}, Enforce, key))
			dec, err := v.Verify(t.Context(), pullRequest(t, d, ""))
			if err == nil || dec.Allowed {
				t.Fatalf("Verify = %+v, %v; want an error", dec, err)
			}
			if got := KindOf(err); got != tc.want {
				t.Errorf("KindOf(%v) = %d, want %d", err, got, tc.want)
			}
		})
	}
}

// hangUp closes the connection without an answer, as a registry going down does.
type hangUp struct{}

func (hangUp) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	conn, _, err := w.(http.Hijacker).Hijack()
	if err == nil {
		conn.Close()
	}
}

// pushRaw stores body as the manifest repo:tag, whatever it holds.
func pushRaw(t *testing.T, reg http.Handler, repo, tag, body string) {
	t.Helper()
	req := httptest.NewRequest(http.MethodPut, "/v2/"+repo+"/manifests/"+tag, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
	w := httptest.NewRecorder()
	reg.ServeHTTP(w, req)
	if w.Code != http.StatusCreated {
		t.Fatalf("push %s:%s: %d %s", repo, tag, w.Code, w.Body)
	}
}

// A deadline that passes while signatures are read is no verdict on the image, even where the
// reading went on without what the deadline cut off: here the second of two sigstore bundles,
// whose fetch is dropped while the first (by another key) was read.
func TestVerifyDeadlineIsNoDenial(t *testing.T) {
	t.Parallel()
	var armed atomic.Bool
	var blobs atomic.Int64
	host := referrersRegistry(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if armed.Load() && r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") && blobs.Add(1) == 2 {
				<-r.Context().Done() // until pullgate gives up
				return
			}
			h.ServeHTTP(w, r)
		})
	})
	_, keyFile := ephemeralKey(t, protocommon.PublicKeyDetails_PKIX_ECDSA_P256_SHA_256)
	other, _ := ephemeralKey(t, protocommon.PublicKeyDetails_PKIX_ECDSA_P256_SHA_256)
	d := pushImage(t, host+"/slow/app:v1")
	for range 2 {
		attachBundle(t, d, signStatement(t, d, other, sign.BundleOptions{}), cosignSignPredicate)
	}
	armed.Store(true)
	s := testSettings
	s.Timeout = time.Second
	v := newSettingsVerifier(t, s, bundleKeyRule(host+"/slow/*", keyFile, true))
	dec, err := v.Verify(t.Context(), pullRequest(t, d, ""))
	if err == nil || KindOf(err) != Unavailable || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Verify = %+v, %v; want the deadline, as unavailability", dec, err)
	}
}
