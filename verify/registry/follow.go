package registry

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/netip"
)

// maxRedirects bounds the redirects followed for one request, as net/http does.
const maxRedirects = 10

// follower follows redirects itself, below the authentication layers, so that the http.Client
// of go-containerregistry above never sees one. Each hop is checked by the rule of this
// package before it is sent, and again when it is dialled. A hop to another host gets none of
// the request's credentials: only the headers in crossHostHeaders go with it.
type follower struct{ inner http.RoundTripper }

// crossHostHeaders are the only request headers sent on to another host.
var crossHostHeaders = []string{"Accept", "Range", "User-Agent"}

func (f follower) RoundTrip(req *http.Request) (*http.Response, error) {
	h := hopOf(req.Context())
	bound, boundBy := h.bound, h.boundBy
	for hops := 0; ; hops++ {
		resp, peer, err := roundTripPeer(f.inner, req)
		if err != nil {
			return nil, err
		}
		if c, _ := classify(peer); c < bound {
			bound, boundBy = c, peer
		}
		loc := resp.Header.Get("Location")
		if !redirect(resp.StatusCode) || loc == "" || (req.Method != http.MethodGet && req.Method != http.MethodHead) {
			return resp, nil
		}
		drain(resp)
		if hops == maxRedirects {
			return nil, fmt.Errorf("%s %s: stopped after %d redirects", req.Method, req.URL.Redacted(), maxRedirects)
		}
		u, err := req.URL.Parse(loc)
		if err != nil {
			return nil, fmt.Errorf("redirect from %s: %w", req.URL.Host, err)
		}
		refuse := func(reason string) error {
			to := u.Host
			if to == "" {
				to = u.Redacted()
			}
			return &RefusedError{What: "redirect", From: req.URL.Host, To: to, Reason: reason}
		}
		switch {
		case u.Scheme != "http" && u.Scheme != "https":
			return nil, refuse(fmt.Sprintf("scheme %q", u.Scheme))
		case req.URL.Scheme == "https" && u.Scheme == "http":
			return nil, refuse("https to plain http")
		case u.Host == "":
			return nil, refuse("no host")
		}
		if ip, ok := literal(u.Host); ok {
			if reason := refusal(ip, bound, boundBy); reason != "" {
				return nil, refuse(reason)
			}
		}
		ctx := withHop(req.Context(), hop{what: "redirect", from: req.URL.Host, to: u.Host, bound: bound, boundBy: boundBy})
		next, err := http.NewRequestWithContext(ctx, req.Method, u.String(), nil)
		if err != nil {
			return nil, err
		}
		if u.Host == req.URL.Host {
			next.Header = req.Header.Clone()
		} else {
			for _, k := range crossHostHeaders {
				if v := req.Header.Values(k); len(v) > 0 {
					next.Header[k] = v
				}
			}
		}
		// As net/http does: the response this request follows, so that callers can tell the
		// request a redirect came from.
		next.Response = resp
		req = next
	}
}

func redirect(code int) bool {
	switch code {
	case http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther, http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
		return true
	}
	return false
}

// drain reads a little of a response that is not used, so that its connection can be reused.
func drain(resp *http.Response) {
	_, _ = io.CopyN(io.Discard, resp.Body, 4<<10)
	resp.Body.Close()
}

// roundTripPeer sends req and returns the address of the connection its answer came on (the
// zero Addr if none was seen).
func roundTripPeer(rt http.RoundTripper, req *http.Request) (*http.Response, netip.Addr, error) {
	var peer netip.Addr
	trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) {
		if a, ok := i.Conn.RemoteAddr().(*net.TCPAddr); ok {
			peer = a.AddrPort().Addr().Unmap()
		}
	}}
	resp, err := rt.RoundTrip(req.WithContext(httptrace.WithClientTrace(req.Context(), trace)))
	return resp, peer, err
}
