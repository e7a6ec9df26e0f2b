package registry

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/pullgate/pullgate/verify/auth"
	"github.com/pullgate/pullgate/verify/hosts"
)

// userAgent is what pullgate calls itself to registries and token services.
const userAgent = "pullgate"

// New returns the transport for the repository scopes (such as "repository:team/app:pull") on
// one registry endpoint, asked with cred. Requests to the endpoint get its scheme
// (go-containerregistry guesses plain HTTP for private and loopback registries), hosts.toml's
// headers and cred: basic, a registry token, or a bearer token from the realm the registry
// names, asked for as the Docker token spec says and kept in tokens. Redirects are followed by
// the rule of this package, and take neither credentials nor headers to another host; https is
// never downgraded. send sends one request: retries and accounting over a Transport.
//
// go-containerregistry's remote package takes the result as complete: it neither wraps it in
// retries of its own nor pings the registry to set up authentication of its own.
func New(ep hosts.Endpoint, cred auth.Credential, scopes []string, tokens *Tokens, send http.RoundTripper) http.RoundTripper {
	inner := send
	if ep.Scheme == "https" {
		inner = httpsOnly{inner}
	}
	if len(ep.Header) > 0 {
		inner = headerTransport{host: ep.Host, header: ep.Header, inner: inner}
	}
	a := &authTransport{host: ep.Host, scheme: ep.Scheme, cred: cred, fp: fingerprint(cred), tokens: tokens,
		scopes: slices.Clone(scopes), next: follower{inner}}
	// A non-bearer challenge makes FromToken wrap a without a request: a *transport.Wrapper,
	// which remote uses as it is.
	w, _ := transport.FromToken(name.Registry{}, authn.Anonymous, a, &transport.Challenge{Scheme: "none"}, nil)
	return w
}

// authTransport authenticates the requests to one registry host.
type authTransport struct {
	host, scheme string
	cred         auth.Credential
	fp           [32]byte
	tokens       *Tokens
	next         http.RoundTripper

	mu     sync.Mutex
	scopes []string
	// ch is the registry's challenge, once it asked for credentials; bound is the class of the
	// address it answered from, boundBy that address: its realm may be no more internal.
	ch      *challenge
	bound   Class
	boundBy netip.Addr
}

// maxScopes bounds the scopes one transport asks for, however many its registry asks for.
const maxScopes = 8

// used is the token a request was sent with.
type used struct {
	key   tokenKey
	token string
}

func (a *authTransport) RoundTrip(in *http.Request) (*http.Response, error) {
	if in.URL.Host != a.host {
		return a.next.RoundTrip(in)
	}
	req := a.prepare(in)
	u, err := a.authorize(req)
	if err != nil {
		return nil, err
	}
	resp, peer, err := roundTripPeer(a.next, req)
	if err != nil || resp.StatusCode != http.StatusUnauthorized || resp.Request == nil || resp.Request.URL.Host != a.host ||
		(in.Body != nil && in.Body != http.NoBody) {
		return resp, err
	}
	if !a.learn(parseChallenges(resp.Header.Values("WWW-Authenticate")), peer, u) {
		return resp, nil
	}
	drain(resp)
	req = a.prepare(in)
	if _, err := a.authorize(req); err != nil {
		return nil, err
	}
	return a.next.RoundTrip(req)
}

// prepare copies in for sending to the registry.
func (a *authTransport) prepare(in *http.Request) *http.Request {
	req := in.Clone(in.Context())
	req.URL.Scheme = a.scheme
	if req.Header.Get("User-Agent") == "" {
		req.Header.Set("User-Agent", userAgent)
	}
	return req
}

// authorize sets req's Authorization from what the registry asked for so far.
func (a *authTransport) authorize(req *http.Request) (used, error) {
	if a.cred.RegistryToken != "" {
		req.Header.Set("Authorization", "Bearer "+a.cred.RegistryToken)
		return used{}, nil
	}
	a.mu.Lock()
	ch, scopes, bound, boundBy := a.ch, slices.Clone(a.scopes), a.bound, a.boundBy
	a.mu.Unlock()
	switch {
	case ch == nil:
	case ch.scheme == "basic":
		if a.cred.Username != "" || a.cred.Password != "" {
			req.SetBasicAuth(a.cred.Username, a.cred.Password)
		}
	case ch.scheme == "bearer":
		sorted := slices.Clone(scopes)
		slices.Sort(sorted)
		key := tokenKey{realm: ch.params["realm"], service: ch.params["service"], scopes: strings.Join(sorted, " "), cred: a.fp}
		tok, err := a.tokens.get(req.Context(), key, func(ctx context.Context) (string, time.Duration, error) {
			return a.fetch(ctx, ch, scopes, bound, boundBy)
		})
		if err != nil {
			return used{}, err
		}
		req.Header.Set("Authorization", "Bearer "+tok)
		return used{key, tok}, nil
	}
	return used{}, nil
}

// learn takes what a 401 from the registry asks for, and reports whether the request is worth
// sending again: the registry asked for something not sent yet (credentials, a scope), or
// refused a token that may have expired early.
func (a *authTransport) learn(cs []challenge, peer netip.Addr, u used) bool {
	if a.cred.RegistryToken != "" {
		return false
	}
	c, ok := pick(cs)
	if !ok {
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	old := a.ch
	a.ch = &c
	a.bound, _ = classify(peer)
	a.boundBy = peer
	if c.scheme == "basic" {
		return (old == nil || old.scheme != "basic") && (a.cred.Username != "" || a.cred.Password != "")
	}
	added := a.addScopes(c.params["scope"])
	switch {
	case old == nil || old.scheme != c.scheme || old.params["realm"] != c.params["realm"] || old.params["service"] != c.params["service"]:
		return true
	case added:
		return true
	case u.token != "":
		a.tokens.forget(u.key, u.token)
		return true
	}
	return false
}

// addScopes adds the scopes of a challenge (space-separated) that a does not ask for yet, in
// front, as some registries read only the first; it reports whether there were any.
func (a *authTransport) addScopes(scope string) bool {
	var added []string
	for _, s := range strings.Fields(scope) {
		if !slices.Contains(a.scopes, s) && !slices.Contains(added, s) && len(a.scopes)+len(added) < maxScopes {
			added = append(added, s)
		}
	}
	a.scopes = append(added, a.scopes...)
	return len(added) > 0
}

// pick returns the challenge pullgate answers: Bearer with a realm before Basic.
func pick(cs []challenge) (challenge, bool) {
	for _, c := range cs {
		if c.scheme == "bearer" && c.params["realm"] != "" {
			return c, true
		}
	}
	for _, c := range cs {
		if c.scheme == "basic" {
			return c, true
		}
	}
	return challenge{}, false
}

// maxTokenBody bounds a token response, as go-containerregistry does.
const maxTokenBody = 64 << 10

// fetch asks ch's realm for a token for scopes, and returns it with its lifetime. The realm may
// be no more internal than bound, the class of the registry's address (boundBy).
func (a *authTransport) fetch(ctx context.Context, ch *challenge, scopes []string, bound Class, boundBy netip.Addr) (string, time.Duration, error) {
	realm := ch.params["realm"]
	u, err := url.Parse(realm)
	if err != nil || u.Host == "" {
		return "", 0, fmt.Errorf("registry %s names a malformed token realm %q", a.host, realm)
	}
	refuse := func(reason string) error {
		return &RefusedError{What: "token realm", From: a.host, To: u.Host, Reason: reason}
	}
	switch {
	case u.Scheme != "https" && u.Scheme != "http":
		return "", 0, refuse(fmt.Sprintf("scheme %q", u.Scheme))
	case a.scheme == "https" && u.Scheme == "http":
		return "", 0, refuse("plain http for an https registry")
	}
	if ip, ok := literal(u.Host); ok {
		if reason := refusal(ip, bound, boundBy); reason != "" {
			return "", 0, refuse(reason)
		}
	}
	ctx = withHop(ctx, hop{what: "token realm", from: a.host, to: u.Host, bound: bound, boundBy: boundBy})
	service := ch.params["service"]
	var resp *http.Response
	if a.cred.IdentityToken != "" {
		resp, err = a.send(a.oauthRequest(ctx, u, service, scopes))
		if err == nil && (resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusMethodNotAllowed) {
			// Not every token service speaks OAuth2; every one takes a GET.
			drain(resp)
			resp, err = a.send(a.getRequest(ctx, u, service, scopes))
		}
	} else {
		resp, err = a.send(a.getRequest(ctx, u, service, scopes))
	}
	if err != nil {
		return "", 0, fmt.Errorf("token from %s: %w", u.Host, err)
	}
	defer resp.Body.Close()
	if err := transport.CheckError(resp, http.StatusOK); err != nil {
		return "", 0, fmt.Errorf("token from %s: %w", u.Host, err)
	}
	var body struct {
		Token       string `json:"token"`
		AccessToken string `json:"access_token"`
		ExpiresIn   int64  `json:"expires_in"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxTokenBody)).Decode(&body); err != nil {
		return "", 0, fmt.Errorf("token from %s: %w", u.Host, err)
	}
	tok := cmp.Or(body.Token, body.AccessToken)
	if tok == "" {
		return "", 0, fmt.Errorf("token from %s: the answer holds no token", u.Host)
	}
	life := time.Duration(min(max(body.ExpiresIn, 0), int64(maxTokenLifetime/time.Second))) * time.Second
	return tok, life, nil
}

func (a *authTransport) send(req *http.Request, err error) (*http.Response, error) {
	if err != nil {
		return nil, err
	}
	req.Header.Set("User-Agent", userAgent)
	return a.next.RoundTrip(req)
}

// getRequest is the token spec's GET, with basic credentials when there are any.
func (a *authTransport) getRequest(ctx context.Context, realm *url.URL, service string, scopes []string) (*http.Request, error) {
	u := *realm
	q := u.Query()
	if service != "" {
		q.Set("service", service)
	}
	for _, s := range scopes {
		q.Add("scope", s)
	}
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	if a.cred.Username != "" || a.cred.Password != "" {
		req.SetBasicAuth(a.cred.Username, a.cred.Password)
	}
	return req, nil
}

// oauthRequest is the OAuth2 refresh-token grant for an identity token.
func (a *authTransport) oauthRequest(ctx context.Context, realm *url.URL, service string, scopes []string) (*http.Request, error) {
	form := url.Values{
		"grant_type":    {"refresh_token"},
		"refresh_token": {a.cred.IdentityToken},
		"client_id":     {userAgent},
	}
	if service != "" {
		form.Set("service", service)
	}
	if len(scopes) > 0 {
		form.Set("scope", strings.Join(scopes, " "))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, realm.String(), strings.NewReader(form.Encode()))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return req, nil
}

// fingerprint identifies a credential in a cache key without keeping it there.
func fingerprint(c auth.Credential) [32]byte {
	return sha256.Sum256([]byte(c.Username + "\x00" + c.Password + "\x00" + c.IdentityToken + "\x00" + c.RegistryToken))
}

// httpsOnly refuses plain HTTP on an https endpoint, whatever asks for it: go-containerregistry
// falls back to http for registries on loopback and private addresses, which would let anyone on
// the path downgrade the connection and read the credentials.
type httpsOnly struct{ inner http.RoundTripper }

func (h httpsOnly) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme != "https" {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, fmt.Errorf("refusing %s to %s: the endpoint is configured for https", req.URL.Scheme, req.URL.Host)
	}
	return h.inner.RoundTrip(req)
}

// headerTransport adds hosts.toml's headers to requests for the endpoint itself, never to the
// token realms or blob stores it sends clients to: such headers often carry secrets.
type headerTransport struct {
	host   string
	header http.Header
	inner  http.RoundTripper
}

func (h headerTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Host != h.host {
		return h.inner.RoundTrip(req)
	}
	req = req.Clone(req.Context())
	for k, v := range h.header {
		req.Header[k] = v
	}
	return h.inner.RoundTrip(req)
}
