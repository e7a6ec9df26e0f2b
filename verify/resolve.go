package verify

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"github.com/pullgate/pullgate/verify/flight"
	"log/slog"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/opencontainers/go-digest"

	"github.com/pullgate/pullgate/verify/auth"
	"github.com/pullgate/pullgate/verify/hosts"
	"github.com/pullgate/pullgate/verify/registry"
)

// Resolver turns tags into digests, asking the endpoints containerd would ask.
type Resolver struct {
	hosts   *hosts.Config
	timeout atomic.Int64 // a time.Duration; SetTimeout changes it while pulls run
	logger  *slog.Logger

	flight flight.Group[resolveKey, digest.Digest]

	tokens *registry.Tokens

	mu         sync.Mutex
	transports *lru[transportKey, cachedTransport]
	bases      *lru[baseKey, *registry.Transport]
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
	r := &Resolver{hosts: h, logger: slog.Default(), tokens: registry.NewTokens(maxTokens),
		transports: newLRU[transportKey, cachedTransport](maxTransports, nil),
		// A pool dropped may still serve a cached transport; it keeps no idle connections.
		bases: newLRU(maxBases, func(_ baseKey, t *registry.Transport) { t.CloseIdleConnections() })}
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
	var (
		errs []error
		last error
		// tried keeps an endpoint listed twice (a [host] table for the server itself) from
		// being asked twice.
		tried = map[string]bool{}
	)
	for _, ep := range eps {
		if !ep.Resolve || tried[ep.Scheme+"://"+ep.Host] {
			continue
		}
		if ep.OverridePath != "" {
			r.logger.Warn("skipping registry endpoint with override_path", "registry", img.Registry, "endpoint", ep.Host)
			continue
		}
		tried[ep.Scheme+"://"+ep.Host] = true
		c := cred
		if ep.Mirror {
			// Credentials belong to the image's registry, never to a mirror.
			c = auth.Credential{}
		}
		d, err := r.resolveAt(ctx, ep, img, c)
		if err == nil {
			return d, nil
		}
		last = err
		errs = append(errs, fmt.Errorf("%s: %w", ep.Host, err))
		if ctx.Err() != nil {
			break
		}
	}
	if len(errs) == 0 {
		return "", &RegistryError{Image: img, Err: errors.New("no endpoint can resolve tags; check the registry's hosts.toml")}
	}
	// The last endpoint tried, the registry itself unless the deadline came first, says whether
	// the trouble may pass: a mirror that lacks the image says nothing of the registry.
	return "", &RegistryError{Image: img, Unavailable: unavailable(last), Err: errors.Join(errs...)}
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
	rt := r.transport(ep, ref.Context(), cred)
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
	rt := r.transport(ep, repo, cred)
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

// transportTTL bounds how long an authenticated transport is reused: it knows how its registry
// asks for credentials, so that a warm pull costs one HEAD rather than a 401 and a HEAD. Its
// bearer tokens live in the resolver's token cache, for their own lifetime.
const transportTTL = 5 * time.Minute

// Bounds on what a resolver keeps: any registry and repository named in a pod spec adds a
// transport, each endpoint and TLS configuration (a changed hosts.toml makes a new one) a
// connection pool, each scope and credential a token. The least recently used go first.
const (
	maxTransports = 1024
	maxBases      = 256
	maxTokens     = 1024
)

// transport returns an authenticated round tripper for one repository on one endpoint.
func (r *Resolver) transport(ep hosts.Endpoint, repo name.Repository, cred auth.Credential) http.RoundTripper {
	key := transportKey{ep.Scheme, ep.Host, repo.RepositoryStr(), ep.TLS, fingerprint(cred)}
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if c, ok := r.transports.get(key); ok && now.Before(c.expires) {
		return c.rt
	}
	send := transport.NewRetry(recordTransport{budgetTransport{r.base(ep)}}, transport.WithRetryStatusCodes(http.StatusRequestTimeout, http.StatusTooManyRequests,
		http.StatusInternalServerError, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout))
	rt := registry.New(ep, cred, []string{repo.Scope(transport.PullScope)}, r.tokens, send)
	r.transports.add(key, cachedTransport{rt: rt, expires: now.Add(transportTTL)})
	return rt
}

type baseKey struct {
	scheme, host string
	tls          any
}

// base returns the shared connection pool for an endpoint. r.mu is held.
func (r *Resolver) base(ep hosts.Endpoint) *registry.Transport {
	key := baseKey{ep.Scheme, ep.Host, ep.TLS}
	if t, ok := r.bases.get(key); ok {
		return t
	}
	t := registry.NewTransport(ep.Host, ep.TLS)
	r.bases.add(key, t)
	return t
}

// fingerprint identifies a credential in memory without keeping it as a map key.
func fingerprint(c auth.Credential) [32]byte {
	return sha256.Sum256([]byte(c.Username + "\x00" + c.Password + "\x00" + c.IdentityToken + "\x00" + c.RegistryToken))
}
