package verify

import "container/list"

// lru is a map bounded in size: adding to a full one drops the entry used least recently, and
// calls evicted with it. It is not safe for concurrent use.
type lru[K comparable, V any] struct {
	max     int
	evicted func(K, V) // may be nil
	order   *list.List // of *lruEntry, most recently used first
	items   map[K]*list.Element
}

type lruEntry[K comparable, V any] struct {
	key K
	val V
}

func newLRU[K comparable, V any](size int, evicted func(K, V)) *lru[K, V] {
	return &lru[K, V]{max: size, evicted: evicted, order: list.New(), items: map[K]*list.Element{}}
}

// get returns key's value and marks it used.
func (c *lru[K, V]) get(key K) (V, bool) {
	e, ok := c.items[key]
	if !ok {
		var zero V
		return zero, false
	}
	c.order.MoveToFront(e)
	return e.Value.(*lruEntry[K, V]).val, true
}

// add sets key's value and marks it used.
func (c *lru[K, V]) add(key K, val V) {
	if e, ok := c.items[key]; ok {
		e.Value.(*lruEntry[K, V]).val = val
		c.order.MoveToFront(e)
		return
	}
	c.items[key] = c.order.PushFront(&lruEntry[K, V]{key, val})
	for c.order.Len() > c.max {
		old := c.order.Remove(c.order.Back()).(*lruEntry[K, V])
		delete(c.items, old.key)
		if c.evicted != nil {
			c.evicted(old.key, old.val)
		}
	}
}

func (c *lru[K, V]) len() int { return c.order.Len() }
