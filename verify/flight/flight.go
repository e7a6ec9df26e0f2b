// Package flight shares one run of a call among the callers that ask for it at once.
package flight

import (
	"context"
	"sync"
)

// Group runs one call per key at a time and shares its result with every caller that asks
// for the same key while it runs. Unlike singleflight, a caller that gives up leaves at once
// without cancelling the others; the shared call is cancelled only when its last caller leaves.
type Group[K comparable, V any] struct {
	mu    sync.Mutex
	calls map[K]*call[V]
}

type call[V any] struct {
	waiters int
	cancel  context.CancelFunc
	done    chan struct{}
	val     V
	err     error
}

// Do returns fn's result for key. fn runs with a context that carries ctx's values and is
// cancelled when every caller waiting for it has gone. shared reports whether the result came
// from a call started by another caller.
func (f *Group[K, V]) Do(ctx context.Context, key K, fn func(context.Context) (V, error)) (v V, shared bool, err error) {
	f.mu.Lock()
	if f.calls == nil {
		f.calls = make(map[K]*call[V])
	}
	c, shared := f.calls[key]
	if shared {
		c.waiters++
	} else {
		callCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		c = &call[V]{waiters: 1, cancel: cancel, done: make(chan struct{})}
		f.calls[key] = c
		go func() {
			c.val, c.err = fn(callCtx)
			f.mu.Lock()
			if f.calls[key] == c {
				delete(f.calls, key)
			}
			f.mu.Unlock()
			cancel()
			close(c.done)
		}()
	}
	f.mu.Unlock()

	select {
	case <-c.done:
		return c.val, shared, c.err
	case <-ctx.Done():
		f.mu.Lock()
		c.waiters--
		if c.waiters == 0 {
			// Nobody is left to use the result: stop the work, and let the next caller start afresh.
			c.cancel()
			if f.calls[key] == c {
				delete(f.calls, key)
			}
		}
		f.mu.Unlock()
		var zero V
		return zero, shared, ctx.Err()
	}
}

// Waiting returns how many callers wait for key's call now, 0 when none runs.
func (f *Group[K, V]) Waiting(key K) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	if c := f.calls[key]; c != nil {
		return c.waiters
	}
	return 0
}
