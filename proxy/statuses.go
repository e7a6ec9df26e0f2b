package proxy

import (
	"maps"
	"sync"
	"time"
)

// statuses keeps the ImageStatus replies pullgate gave, the gate's answer in them, so that a
// repeated ImageStatus costs no second hop to the runtime. containerd's CRI answers from a cache
// it updates from image events; this one follows the same events, a step behind it:
//   - nothing is kept unless a watch of the runtime's image events is live, and everything is
//     dropped when it breaks (a containerd restart);
//   - every image event drops everything, and nothing new is kept until the runtime's CRI shows
//     each changed name as the image store holds it (it applies the event on its own time);
//   - a reply is kept only if no event or drop came while it was asked for, so no entry is
//     older than the last event seen;
//   - an entry holds only for the verifier it was decided by (a reloaded policy is a new one)
//     and for maxAge, for what changes with time alone (a decision's expiry).
type statuses struct {
	maxAge, size int64 // maxAge in nanoseconds

	mu      sync.Mutex
	gen     uint64
	live    bool
	pending map[string]uint64 // changed names the CRI may not show yet, with the gen they came at
	entries map[string]statusEntry
	// settle is signalled when names become pending.
	settle chan struct{}
}

type statusEntry struct {
	reply    []byte
	verifier Verifier
	at       time.Time
	// verdict and rule are the gate's, for its metrics; empty without the gate.
	verdict, rule string
}

func newStatuses(maxAge time.Duration, size int) *statuses {
	return &statuses{maxAge: int64(maxAge), size: int64(size), pending: map[string]uint64{}, entries: map[string]statusEntry{}, settle: make(chan struct{}, 1)}
}

// get returns the reply kept for key under v; else ok is false and gen is to be handed to put.
func (c *statuses) get(key string, v Verifier) (e statusEntry, gen uint64, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, found := c.entries[key]
	if found && e.verifier == v && time.Since(e.at) < time.Duration(c.maxAge) {
		return e, 0, true
	}
	return statusEntry{}, c.gen, false
}

// put keeps e for key, if nothing changed since get returned gen.
func (c *statuses) put(gen uint64, key string, e statusEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.gen || !c.live || len(c.pending) > 0 {
		return
	}
	if int64(len(c.entries)) >= c.size {
		clear(c.entries)
	}
	e.at = time.Now()
	c.entries[key] = e
}

// drop forgets every reply, and those being asked for now.
func (c *statuses) drop() {
	c.mu.Lock()
	c.gen++
	clear(c.entries)
	c.mu.Unlock()
}

// setLive drops everything and says whether a watch of the runtime's image events is live.
// Names changed by events that came before the watch was confirmed stay pending.
func (c *statuses) setLive(live bool) {
	c.mu.Lock()
	c.gen++
	clear(c.entries)
	if !live {
		clear(c.pending)
	}
	c.live = live
	c.mu.Unlock()
}

// changed drops everything for an event on name, which stays pending until settled.
func (c *statuses) changed(name string) {
	c.mu.Lock()
	c.gen++
	clear(c.entries)
	c.pending[name] = c.gen
	c.mu.Unlock()
	select {
	case c.settle <- struct{}{}:
	default:
	}
}

// unsettled returns the pending names and the gen each came at.
func (c *statuses) unsettled() map[string]uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.pending)
}

// settled clears name, unless another event on it came after gen. Replies asked for while it
// was pending may predate the CRI's applying the event: they are not kept.
func (c *statuses) settled(name string, gen uint64) {
	c.mu.Lock()
	if c.pending[name] == gen {
		delete(c.pending, name)
		c.gen++
	}
	c.mu.Unlock()
}
