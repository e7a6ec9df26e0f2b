package registry

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/pullgate/pullgate/verify/auth"
	"github.com/pullgate/pullgate/verify/hosts"
)

// clientCert makes a self-signed client certificate.
func clientCert(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "node"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// tlsOn starts a TLS server on ip that asks for (but does not require) a client certificate,
// and records whether each request came with one.
func tlsOn(t *testing.T, ip string, h http.HandlerFunc) (srv *httptest.Server, certs func() []bool) {
	t.Helper()
	l, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen []bool
	srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, len(r.TLS.PeerCertificates) > 0)
		mu.Unlock()
		h(w, r)
	}))
	srv.Listener.Close()
	srv.Listener = l
	srv.TLS = &tls.Config{ClientAuth: tls.RequestClientCert}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv, func() []bool {
		mu.Lock()
		defer mu.Unlock()
		return append([]bool(nil), seen...)
	}
}

// hosts.toml's client certificate is for the endpoint: a blob store it redirects to is not
// shown it, nor sent hosts.toml's headers.
func TestClientCertificateStaysWithEndpoint(t *testing.T) {
	t.Parallel()
	// On 127.0.0.1 too, for httptest's certificate: another port is another host.
	store, storeCerts := tlsOn(t, "127.0.0.1", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Registry-Key") != "" {
			t.Errorf("the store got X-Registry-Key %q", r.Header.Get("X-Registry-Key"))
		}
		blob(w, r)
	})
	reg, regCerts := tlsOn(t, "127.0.0.1", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Registry-Key") != "k1" {
			t.Errorf("the registry got X-Registry-Key %q, want hosts.toml's", r.Header.Get("X-Registry-Key"))
		}
		http.Redirect(w, r, store.URL+"/blob", http.StatusTemporaryRedirect)
	})
	pool := x509.NewCertPool()
	pool.AddCert(reg.Certificate())
	pool.AddCert(store.Certificate())
	host := reg.Listener.Addr().String()
	ep := hosts.Endpoint{Scheme: "https", Host: host, Header: http.Header{"X-Registry-Key": {"k1"}},
		TLS: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{clientCert(t)}}}
	rt := New(ep, auth.Credential{}, []string{"repository:team/app:pull"}, NewTokens(8), NewTransport(host, ep.TLS))

	code, err := fetchManifest(t, rt, host, "team/app")
	if err != nil || code != http.StatusOK {
		t.Fatalf("GET: %d, %v", code, err)
	}
	if got := regCerts(); len(got) != 1 || !got[0] {
		t.Errorf("the registry saw a client certificate: %v, want it", got)
	}
	if got := storeCerts(); len(got) != 1 || got[0] {
		t.Errorf("the store saw a client certificate: %v, want none", got)
	}
}
