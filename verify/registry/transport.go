package registry

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"syscall"
	"time"
)

// hop is where a request goes that the registry sent pullgate to (a redirect or a token
// realm), carried in the request's context down to the dialer.
type hop struct {
	what     string     // "redirect" or "token realm"
	from, to string     // host[:port] that sent pullgate, and the one it sent it to
	bound    Class      // the most internal class that may be dialled
	boundBy  netip.Addr // the address that set bound
}

type hopKey struct{}

// registryHop is what a request without a hop is: to the registry's endpoint itself, which may
// be anything but a forbidden address.
var registryHop = hop{what: "connection", bound: Loopback}

func withHop(ctx context.Context, h hop) context.Context { return context.WithValue(ctx, hopKey{}, h) }

func hopOf(ctx context.Context) hop {
	if h, ok := ctx.Value(hopKey{}).(hop); ok {
		return h
	}
	return registryHop
}

// Transport is the connection pool for one registry endpoint and everywhere it sends pullgate.
// Every connection is checked when it is dialled, against the address it actually reaches: a
// name that resolves to a forbidden address, or to one more internal than the request's hop
// allows (DNS rebinding included), is refused before any packet is sent. Connections are pooled
// by the class they were allowed for, so a connection dialled for the registry is never reused
// for a redirect that may go less far; and by whether they reach the endpoint's own host, the
// only one that gets the endpoint's client certificate.
type Transport struct {
	host     string
	template *http.Transport
	resolver *net.Resolver // nil: the system's; tests set their own

	mu    sync.Mutex
	pools map[poolKey]*http.Transport
}

type poolKey struct {
	bound   Class
	foreign bool // not the endpoint's host
}

var _ http.RoundTripper = (*Transport)(nil)

// NewTransport returns the pool for the endpoint host (host[:port]) with its TLS configuration
// (CAs, client certificate, skip_verify; nil for the defaults). It never uses a proxy: the
// address rule is about where connections go.
func NewTransport(host string, tlsConfig *tls.Config) *Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.Proxy = nil
	t.MaxIdleConnsPerHost = 16
	if tlsConfig != nil {
		t.TLSClientConfig = tlsConfig
	}
	return &Transport{host: host, template: t, pools: map[poolKey]*http.Transport{}}
}

// RoundTrip sends req through the pool its hop allows.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	return t.pool(poolKey{hopOf(req.Context()).bound, req.URL.Host != t.host}).RoundTrip(req)
}

// CloseIdleConnections closes the idle connections of every pool.
func (t *Transport) CloseIdleConnections() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, p := range t.pools {
		p.CloseIdleConnections()
	}
}

func (t *Transport) pool(k poolKey) *http.Transport {
	t.mu.Lock()
	defer t.mu.Unlock()
	if p, ok := t.pools[k]; ok {
		return p
	}
	p := t.template.Clone()
	if k.foreign && p.TLSClientConfig != nil && (len(p.TLSClientConfig.Certificates) > 0 || p.TLSClientConfig.GetClientCertificate != nil) {
		c := p.TLSClientConfig.Clone()
		c.Certificates, c.GetClientCertificate = nil, nil
		p.TLSClientConfig = c
	}
	d := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second, Resolver: t.resolver,
		ControlContext: func(ctx context.Context, _, address string, _ syscall.RawConn) error {
			return checkDial(ctx, k.bound, address)
		}}
	p.DialContext = d.DialContext
	t.pools[k] = p
	return p
}

// checkDial refuses a connection to address (the IP and port about to be connected to) that the
// pool's bound does not allow. The hop in ctx (values of the request that made the dial) only
// names what is refused.
func checkDial(ctx context.Context, bound Class, address string) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return err
	}
	h := hopOf(ctx)
	if reason := refusal(ap.Addr(), bound, h.boundBy); reason != "" {
		to := address
		if h.to != "" {
			to = h.to + " (" + ap.Addr().String() + ")"
		}
		return &RefusedError{What: h.what, From: h.from, To: to, Reason: reason}
	}
	return nil
}
