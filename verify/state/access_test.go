package state

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestAccess(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := mustOpen(t, dir)
	podA, podB := []byte(`["pod-a","secret-a","",""]`), []byte(`["pod-b","secret-b","",""]`)
	at := time.Unix(1700000000, 0)
	if err := s.PutAccess("r/private", "sha256:a", podA, at); err != nil {
		t.Fatal(err)
	}
	if err := s.PutAccess("r/public", "sha256:p", nil, at); err != nil {
		t.Fatal(err)
	}
	for name, st := range map[string]*Store{"same": s, "reopened": mustOpen(t, dir), "read-only": mustOpen(t, dir, ReadOnly())} {
		for _, tc := range []struct {
			image, digest string
			secrets       [][]byte
			want          bool
		}{
			{"r/private", "sha256:a", [][]byte{podA}, true},
			{"r/private", "sha256:a", [][]byte{podB, podA}, true},
			{"r/private", "sha256:a", [][]byte{podB}, false},
			{"r/private", "sha256:a", [][]byte{nil}, false},
			{"r/private", "sha256:other", [][]byte{podA}, false},
			{"r/other", "sha256:a", [][]byte{podA}, false},
			{"r/public", "sha256:p", [][]byte{podB}, true},
			{"r/public", "sha256:p", nil, true},
		} {
			if got := st.Served(tc.image, tc.digest, tc.secrets); got != tc.want {
				t.Errorf("%s: Served(%s@%s, %q) = %v, want %v", name, tc.image, tc.digest, tc.secrets, got, tc.want)
			}
		}
	}

	// The file holds fingerprints, never the credential.
	data, err := os.ReadFile(filepath.Join(dir, FileName))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(data, []byte("secret-a")) || bytes.Contains(data, []byte("pod-a")) {
		t.Error("the state file holds the credential itself")
	}
	// Keyed by the file's own key: another node's state fingerprints differently.
	other := mustOpen(t, t.TempDir())
	if other.fingerprint(podA) == s.fingerprint(podA) {
		t.Error("two state files fingerprint a credential alike")
	}
}

// The oldest credentials give way past maxAccess.
func TestAccessIsBounded(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := mustOpen(t, dir)
	secret := func(i int) []byte { return fmt.Appendf(nil, "pod-%d", i) }
	for i := range maxAccess + 3 {
		if err := s.PutAccess("r", "sha256:a", secret(i), time.Unix(int64(1000+i), 0)); err != nil {
			t.Fatal(err)
		}
	}
	s = mustOpen(t, dir)
	if n := len(s.access[key{"r", "sha256:a"}]); n != maxAccess {
		t.Errorf("%d credentials kept, want %d", n, maxAccess)
	}
	if s.Served("r", "sha256:a", [][]byte{secret(0)}) {
		t.Error("the oldest credential was kept past the bound")
	}
	if !s.Served("r", "sha256:a", [][]byte{secret(maxAccess + 2)}) {
		t.Error("the newest credential was dropped")
	}
}

// Access goes with its digest when pruned, and on its own when the digest has no decision (a
// skip rule's).
func TestPruneAccess(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := mustOpen(t, dir)
	old := time.Unix(1000, 0)
	if err := s.Put("r", "sha256:decided", Decision{RuleHash: "h", At: old}, nil); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"sha256:decided", "sha256:skipped", "sha256:inuse"} {
		if err := s.PutAccess("r", d, []byte("pod"), old); err != nil {
			t.Fatal(err)
		}
	}
	n, err := s.Prune(func(_, digest string) bool { return digest == "sha256:inuse" }, time.Unix(3000, 0))
	if err != nil || n != 2 {
		t.Fatalf("Prune = %d, %v; want 2 forgotten", n, err)
	}
	for _, st := range []*Store{s, mustOpen(t, dir)} {
		for digest, want := range map[string]bool{"sha256:decided": false, "sha256:skipped": false, "sha256:inuse": true} {
			if got := st.Served("r", digest, [][]byte{[]byte("pod")}); got != want {
				t.Errorf("access to %s kept = %v, want %v", digest, got, want)
			}
		}
	}
}

// A file started anew after damage keeps the key the fingerprints in memory were made with.
func TestAccessKeyOutlivesDamage(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := mustOpen(t, dir)
	if err := s.PutAccess("r", "sha256:a", []byte("pod"), time.Unix(1000, 0)); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, FileName), bytes.Repeat([]byte{0xff}, 1<<16), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.PutAccess("r", "sha256:b", []byte("pod"), time.Unix(2000, 0)); err != nil {
		t.Fatal(err)
	}
	if !mustOpen(t, dir).Served("r", "sha256:b", [][]byte{[]byte("pod")}) {
		t.Error("access written to the new file after damage does not match at the next start")
	}
}
