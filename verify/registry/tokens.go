package registry

import (
	"context"
	"errors"
	"sync"
	"time"
)

// Tokens is a bounded cache of bearer tokens, shared by every transport that uses it, so that
// a token is asked for once and reused for its lifetime by every pull of the same scope with the
// same credential. Concurrent requests for the same token share one request to the realm.
type Tokens struct {
	max int
	now func() time.Time

	mu      sync.Mutex
	entries map[tokenKey]*tokenEntry
}

// tokenKey names a token: what the realm was asked, and by whom.
type tokenKey struct {
	realm, service string
	scopes         string // sorted, space-separated
	cred           [32]byte
}

type tokenEntry struct {
	done    chan struct{} // closed once the fields below are set
	token   string
	expires time.Time
	err     error
}

// Token lifetimes: the Docker token spec's default when a realm gives none, and a bound on what
// a realm may ask for, so that a revoked credential does not live on in a token for long.
const (
	defaultTokenLifetime = 60 * time.Second
	maxTokenLifetime     = time.Hour
)

// NewTokens returns a cache that holds at most size tokens (at least one).
func NewTokens(size int) *Tokens {
	return &Tokens{max: max(size, 1), now: time.Now, entries: map[tokenKey]*tokenEntry{}}
}

// get returns the token for key, from the cache while it lives or else from fetch, which
// returns a token and its lifetime. A token is used for nine tenths of its lifetime, counted
// from when it was asked for. Failures are not kept.
func (c *Tokens) get(ctx context.Context, key tokenKey, fetch func(context.Context) (string, time.Duration, error)) (string, error) {
	for {
		c.mu.Lock()
		e, ok := c.entries[key]
		if ok {
			select {
			case <-e.done:
				if c.now().Before(e.expires) {
					c.mu.Unlock()
					return e.token, nil
				}
				delete(c.entries, key)
				ok = false
			default:
			}
		}
		if ok {
			// Another request is asking for it.
			c.mu.Unlock()
			select {
			case <-e.done:
			case <-ctx.Done():
				return "", ctx.Err()
			}
			if e.err == nil {
				return e.token, nil
			}
			if (errors.Is(e.err, context.Canceled) || errors.Is(e.err, context.DeadlineExceeded)) && ctx.Err() == nil {
				continue // it gave up; this request has not
			}
			return "", e.err
		}
		e = &tokenEntry{done: make(chan struct{})}
		c.evict()
		c.entries[key] = e
		c.mu.Unlock()

		start := c.now()
		tok, life, err := fetch(ctx)
		if life <= 0 {
			life = defaultTokenLifetime
		}
		c.mu.Lock()
		e.token, e.err, e.expires = tok, err, start.Add(min(life, maxTokenLifetime)*9/10)
		if err != nil && c.entries[key] == e {
			delete(c.entries, key)
		}
		close(e.done)
		c.mu.Unlock()
		return tok, err
	}
}

// forget drops key's token if it is still token: the registry refused it.
func (c *Tokens) forget(key tokenKey, token string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.entries[key]; ok && isDone(e) && e.token == token {
		delete(c.entries, key)
	}
}

// evict makes room for one more entry: expired tokens go first, then the one that expires
// soonest. Requests in flight are never dropped. c.mu is held.
func (c *Tokens) evict() {
	if len(c.entries) < c.max {
		return
	}
	now := c.now()
	var (
		soonest    tokenKey
		soonestEnd time.Time
		found      bool
	)
	for k, e := range c.entries {
		if !isDone(e) {
			continue
		}
		if !now.Before(e.expires) {
			delete(c.entries, k)
			continue
		}
		if !found || e.expires.Before(soonestEnd) {
			soonest, soonestEnd, found = k, e.expires, true
		}
	}
	if len(c.entries) >= c.max && found {
		delete(c.entries, soonest)
	}
}

func isDone(e *tokenEntry) bool {
	select {
	case <-e.done:
		return true
	default:
		return false
	}
}

// len returns the number of tokens held, and asked for.
func (c *Tokens) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}
