package verify

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/opencontainers/go-digest"

	"github.com/pullgate/pullgate/verify/auth"
	"github.com/pullgate/pullgate/verify/hosts"
)

// Resolver turns tags into digests, asking the endpoints containerd would ask.
type Resolver struct {
	hosts   *hosts.Config
	timeout atomic.Int64 // a time.Duration; SetTimeout changes it while pulls run
	logger  *slog.Logger

	flight flight[resolveKey, digest.Digest]

	mu         sync.Mutex
	transports map[transportKey]*cachedTransport
	bases      map[baseKey]*http.Transport
}

// ResolverOption configures a Resolver.
type ResolverOption func(*Resolver)

// WithResolveTimeout bounds one resolution, all endpoints and retries included.
func WithResolveTimeout(d time.Duration) ResolverOption {
	return func(r *Resolver) { r.timeout.Store(int64(d)) }
}

// WithResolveLogger sets where skipped endpoints are reported.
func WithResolveLogger(l *slog.Logger) ResolverOption { return func(r *Resolver) { r.logger = l } }

// NewResolver returns a resolver that reads endpoint configuration from h.
func NewResolver(h *hosts.Config, opts ...ResolverOption) *Resolver {
	r := &Resolver{hosts: h, logger: slog.Default(), transports: map[transportKey]*cachedTransport{}, bases: map[baseKey]*http.Transport{}}
	r.timeout.Store(int64(30 * time.Second))
	for _, o := range opts {
		o(r)
	}
	return r
}

// SetTimeout changes the bound on each resolution from the next one on (a reloaded
// verification.timeout).
func (r *Resolver) SetTimeout(d time.Duration) { r.timeout.Store(int64(d)) }

type resolveKey struct {
	image string
	cred  [32]byte
}

// Resolve returns the digest img's tag points to now, asked with cred. Concurrent calls for the
// same image and credential share one request. A pinned image is returned as is.
func (r *Resolver) Resolve(ctx context.Context, img Image, cred auth.Credential) (digest.Digest, error) {
	if img.Digest != "" {
		return img.Digest, nil
	}
	d, _, err := r.flight.Do(ctx, resolveKey{img.String(), fingerprint(cred)}, func(ctx context.Context) (digest.Digest, error) {
		ctx, cancel := context.WithTimeout(ctx, time.Duration(r.timeout.Load()))
		defer cancel()
		return r.resolve(ctx, img, cred)
	})
	return d, err
}

func (r *Resolver) resolve(ctx context.Context, img Image, cred auth.Credential) (digest.Digest, error) {
	eps, err := r.hosts.Endpoints(img.Registry)
	if err != nil {
		return "", &RegistryError{Image: img, Err: err}
	}
	var errs []error
	for _, ep := range eps {
		if !ep.Resolve {
			continue
		}
		if ep.OverridePath != "" {
			r.logger.Warn("skipping registry endpoint with override_path", "registry", img.Registry, "endpoint", ep.Host)
			continue
		}
		c := cred
		if ep.Mirror {
			// Credentials belong to the image's registry, never to a mirror.
			c = auth.Credential{}
		}
		d, err := r.resolveAt(ctx, ep, img, c)
		if err == nil {
			return d, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", ep.Host, err))
		if ctx.Err() != nil {
			break
		}
	}
	if len(errs) == 0 {
		return "", &RegistryError{Image: img, Err: errors.New("no endpoint can resolve tags; check the registry's hosts.toml")}
	}
	return "", registryError(img, errors.Join(errs...))
}

func (r *Resolver) resolveAt(ctx context.Context, ep hosts.Endpoint, img Image, cred auth.Credential) (digest.Digest, error) {
	var opts []name.Option
	if ep.Scheme == "http" {
		opts = append(opts, name.Insecure)
	}
	reg, err := name.NewRegistry(ep.Host, opts...)
	if err != nil {
		return "", err
	}
	ref := reg.Repo(img.Repository).Tag(img.Tag)
	rt, err := r.transport(ctx, ep, reg, ref.Context(), cred)
	if err != nil {
		return "", err
	}
	desc, err := remote.Head(ref, remote.WithContext(ctx), remote.WithTransport(rt))
	if err == nil {
		return digest.Digest(desc.Digest.String()), nil
	}
	var (
		te *transport.Error
		ue *url.Error
	)
	if errors.As(err, &te) || errors.As(err, &ue) {
		return "", err
	}
	// The registry answered without a usable Docker-Content-Digest: hash the manifest itself,
	// no larger than a registry must accept.
	ctx = withBudget(ctx, maxManifestSize, "the manifest is larger than %d bytes, the most a registry must accept")
	full, err := remote.Get(ref, remote.WithContext(ctx), remote.WithTransport(rt))
	if err != nil {
		return "", err
	}
	return digest.Digest(full.Digest.String()), nil
}

// Repository returns the image's repository on the registry itself (never a mirror:
// signatures are read where they were written) and options that reach it with cred.
func (r *Resolver) Repository(ctx context.Context, img Image, cred auth.Credential) (name.Repository, []remote.Option, error) {
	eps, err := r.hosts.Endpoints(img.Registry)
	if err != nil {
		return name.Repository{}, nil, &RegistryError{Image: img, Err: err}
	}
	ep := eps[len(eps)-1]
	if ep.Mirror || ep.OverridePath != "" {
		return name.Repository{}, nil, &RegistryError{Image: img, Err: fmt.Errorf("hosts.toml for %s sends the registry's own traffic to %s%s; signatures are read from the registry itself", img.Registry, ep.Host, ep.OverridePath)}
	}
	var opts []name.Option
	if ep.Scheme == "http" {
		opts = append(opts, name.Insecure)
	}
	reg, err := name.NewRegistry(ep.Host, opts...)
	if err != nil {
		return name.Repository{}, nil, err
	}
	repo := reg.Repo(img.Repository)
	rt, err := r.transport(ctx, ep, reg, repo, cred)
	if err != nil {
		return name.Repository{}, nil, registryError(img, err)
	}
	return repo, []remote.Option{remote.WithContext(ctx), remote.WithTransport(rt)}, nil
}

// maxManifestSize is the largest manifest the OCI distribution spec has registries accept.
const maxManifestSize = 4 << 20

type transportKey struct {
	scheme, host, repo string
	tls                any
	cred               [32]byte
}

type cachedTransport struct {
	rt      http.RoundTripper
	expires time.Time
}

// transportTTL bounds how long an authenticated transport (and its bearer token, which it renews
// on 401) is reused, so that a warm pull costs one HEAD rather than a ping, a token and a HEAD.
const transportTTL = 5 * time.Minute

// transport returns an authenticated round tripper for one repository on one endpoint.
func (r *Resolver) transport(ctx context.Context, ep hosts.Endpoint, reg name.Registry, repo name.Repository, cred auth.Credential) (http.RoundTripper, error) {
	key := transportKey{ep.Scheme, ep.Host, repo.RepositoryStr(), ep.TLS, fingerprint(cred)}
	now := time.Now()
	r.mu.Lock()
	if c, ok := r.transports[key]; ok && now.Before(c.expires) {
		r.mu.Unlock()
		return c.rt, nil
	}
	r.mu.Unlock()

	inner := transport.NewRetry(recordTransport{budgetTransport{r.base(ep)}}, transport.WithRetryStatusCodes(http.StatusRequestTimeout, http.StatusTooManyRequests,
		http.StatusInternalServerError, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout))
	if ep.Scheme == "https" {
		inner = httpsOnly{inner}
	}
	if len(ep.Header) > 0 {
		inner = headerTransport{host: ep.Host, header: ep.Header, inner: inner}
	}
	rt, err := transport.NewWithContext(ctx, reg, cred.Authenticator(), inner, []string{repo.Scope(transport.PullScope)})
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	if len(r.transports) > 4096 {
		for k, c := range r.transports {
			if now.After(c.expires) {
				delete(r.transports, k)
			}
		}
	}
	r.transports[key] = &cachedTransport{rt: rt, expires: now.Add(transportTTL)}
	r.mu.Unlock()
	return rt, nil
}

type baseKey struct {
	scheme, host string
	tls          any
}

// maxBases bounds the connection pools kept, one per endpoint and TLS configuration.
const maxBases = 256

// base returns the shared connection pool for an endpoint.
func (r *Resolver) base(ep hosts.Endpoint) http.RoundTripper {
	key := baseKey{ep.Scheme, ep.Host, ep.TLS}
	r.mu.Lock()
	defer r.mu.Unlock()
	if t, ok := r.bases[key]; ok {
		return t
	}
	if len(r.bases) >= maxBases {
		// Each change of a hosts.toml makes new TLS settings and so a new pool: drop the old.
		for k, t := range r.bases {
			t.CloseIdleConnections()
			delete(r.bases, k)
		}
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.Proxy = nil
	t.DialContext = (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second, Control: refuseLinkLocal}).DialContext
	if ep.TLS != nil {
		t.TLSClientConfig = ep.TLS
	}
	t.MaxIdleConnsPerHost = 16
	r.bases[key] = t
	return t
}

// refuseLinkLocal keeps registry traffic, and the credentials it carries to registries and
// their token realms, away from link-local addresses, where cloud metadata services live.
// Checked at dial time, so a name that resolves there is caught too.
func refuseLinkLocal(network, address string, _ syscall.RawConn) error {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return err
	}
	ip := net.ParseIP(host)
	if ip != nil && (ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() || ip.Equal(alibabaMetadata) || ip.Equal(awsMetadataIPv6)) {
		return fmt.Errorf("refusing to connect to link-local or metadata address %s", host)
	}
	return nil
}

var (
	alibabaMetadata = net.ParseIP("100.100.100.200")
	awsMetadataIPv6 = net.ParseIP("fd00:ec2::254")
)

// httpsOnly refuses plain HTTP on an https endpoint. go-containerregistry falls back to http for
// registries on loopback and private addresses, which would let anyone on the path downgrade the
// connection and read the credentials.
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

// fingerprint identifies a credential in memory without keeping it as a map key.
func fingerprint(c auth.Credential) [32]byte {
	return sha256.Sum256([]byte(c.Username + "\x00" + c.Password + "\x00" + c.IdentityToken + "\x00" + c.RegistryToken))
}
