package proxy

import (
	"testing"
	"time"
)

type testVerifier struct{ Verifier }

// A reply asked for across an event, a drop or a pending name's settling is never kept: it may
// predate the change.
func TestStatusesKeepOnlyWhatNoChangeCrossed(t *testing.T) {
	t.Parallel()
	v := &testVerifier{}
	entry := statusEntry{reply: []byte("present"), verifier: v}
	tests := []struct {
		name string
		// between runs after get and before put.
		between func(c *statuses)
		want    bool
	}{
		{name: "nothing happened", between: func(*statuses) {}, want: true},
		{name: "an event", between: func(c *statuses) { c.changed("docker.io/library/a:1") }},
		{name: "a drop", between: func(c *statuses) { c.drop() }},
		{name: "the watch broke", between: func(c *statuses) { c.setLive(false) }},
		{name: "the watch broke and came back", between: func(c *statuses) { c.setLive(false); c.setLive(true) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := newStatuses(time.Hour, 10)
			c.setLive(true)
			_, gen, ok := c.get("k", v)
			if ok {
				t.Fatal("an empty cache answered")
			}
			tc.between(c)
			c.put(gen, "k", entry)
			if _, _, ok := c.get("k", v); ok != tc.want {
				t.Errorf("kept = %v, want %v", ok, tc.want)
			}
		})
	}

	t.Run("pending until settled", func(t *testing.T) {
		t.Parallel()
		c := newStatuses(time.Hour, 10)
		c.setLive(true)
		c.changed("a")
		_, gen, _ := c.get("k", v)
		c.put(gen, "k", entry)
		if _, _, ok := c.get("k", v); ok {
			t.Fatal("kept a reply while a change was pending")
		}
		pending := c.unsettled()
		c.changed("a") // again, before the first settles
		c.settled("a", pending["a"])
		if len(c.unsettled()) != 1 {
			t.Fatal("an older settling cleared a newer event")
		}
		_, gen, _ = c.get("k", v) // asked while pending
		c.settled("a", c.unsettled()["a"])
		c.put(gen, "k", entry)
		if _, _, ok := c.get("k", v); ok {
			t.Fatal("kept a reply asked for while its change was pending")
		}
		_, gen, _ = c.get("k", v)
		c.put(gen, "k", entry)
		if _, _, ok := c.get("k", v); !ok {
			t.Fatal("settled, but nothing is kept")
		}
	})

	t.Run("another verifier, an old entry, a full cache", func(t *testing.T) {
		t.Parallel()
		c := newStatuses(time.Hour, 2)
		c.setLive(true)
		for _, k := range []string{"a", "b"} {
			_, gen, _ := c.get(k, v)
			c.put(gen, k, entry)
		}
		if _, _, ok := c.get("a", &testVerifier{}); ok {
			t.Error("a reply decided under another policy was given")
		}
		_, gen, _ := c.get("c", v)
		c.put(gen, "c", entry)
		if _, _, ok := c.get("a", v); ok || len(c.entries) != 1 {
			t.Errorf("a full cache kept %d entries, want it emptied for the new one", len(c.entries))
		}
		old := newStatuses(0, 2)
		old.setLive(true)
		_, gen, _ = old.get("a", v)
		old.put(gen, "a", entry)
		if _, _, ok := old.get("a", v); ok {
			t.Error("an entry older than maxAge was given")
		}
	})
}
