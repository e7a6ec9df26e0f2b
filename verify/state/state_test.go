package state

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func decision(hash string) Decision {
	return Decision{RuleHash: hash, Rule: "apps", Mode: "enforce", Verified: true, At: time.Unix(1700000000, 0).UTC()}
}

func TestRoundTrip(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	ev := &Evidence{
		Repository: "registry.example.com/app",
		Responses: map[string]Response{
			"GET registry.example.com/v2/app/manifests/sha256-abc.sig": {Status: 200, Header: http.Header{"Content-Type": {"application/vnd.oci.image.manifest.v1+json"}}, Body: []byte(`{"layers":[]}`)},
			"GET registry.example.com/v2/app/manifests/sha256-abc.att": {Status: 404},
		},
	}
	if err := s.Put("registry.example.com/app", "sha256:abc", decision("h1"), ev); err != nil {
		t.Fatal(err)
	}
	denied := Decision{RuleHash: "h2", Rule: "strict", Mode: "enforce", Reason: "no signature"}
	if err := s.Put("registry.example.com/app", "sha256:abc", denied, nil); err != nil {
		t.Fatal(err)
	}

	for _, store := range []func() (*Store, error){
		func() (*Store, error) { return s, nil },
		func() (*Store, error) { return Open(dir) },
		func() (*Store, error) { return Open(dir, ReadOnly()) },
	} {
		s, err := store()
		if err != nil {
			t.Fatal(err)
		}
		if d, ok := s.Decision("registry.example.com/app", "sha256:abc", "h1"); !ok || d != decision("h1") {
			t.Errorf("decision h1 = %+v, %v", d, ok)
		}
		if d, ok := s.Decision("registry.example.com/app", "sha256:abc", "h2"); !ok || d.Reason != "no signature" || d.Verified {
			t.Errorf("decision h2 = %+v, %v", d, ok)
		}
		if _, ok := s.Decision("registry.example.com/other", "sha256:abc", "h1"); ok {
			t.Error("a decision for another repository was found")
		}
		got, err := s.Evidence("registry.example.com/app", "sha256:abc")
		if err != nil {
			t.Fatal(err)
		}
		// Evidence survives a decision written without any.
		if got == nil || got.Repository != ev.Repository || len(got.Responses) != 2 ||
			!bytes.Equal(got.Responses["GET registry.example.com/v2/app/manifests/sha256-abc.sig"].Body, []byte(`{"layers":[]}`)) ||
			got.Responses["GET registry.example.com/v2/app/manifests/sha256-abc.att"].Status != 404 {
			t.Errorf("evidence = %+v", got)
		}
		if none, err := s.Evidence("registry.example.com/app", "sha256:def"); err != nil || none != nil {
			t.Errorf("evidence for an unknown digest = %v, %v", none, err)
		}
	}
}

func TestReadOnly(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s, err := Open(dir, ReadOnly())
	if err != nil {
		t.Fatalf("a missing state must open empty for reading: %v", err)
	}
	if err := s.Put("a/b", "sha256:abc", decision("h"), nil); err == nil {
		t.Error("Put on a read-only store succeeded")
	}
	if _, err := os.Stat(filepath.Join(dir, FileName)); !os.IsNotExist(err) {
		t.Errorf("a read-only open created the file: %v", err)
	}

	if err := os.WriteFile(filepath.Join(dir, FileName), bytes.Repeat([]byte("x"), 8192), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, ReadOnly()); err == nil || !strings.Contains(err.Error(), "damaged") {
		t.Errorf("read-only open of a damaged file = %v, want an error saying it is damaged", err)
	}
	if _, err := os.Stat(filepath.Join(dir, FileName)); err != nil {
		t.Errorf("a read-only open moved the damaged file: %v", err)
	}
}

func TestMergeKeepsNewestRuleVersions(t *testing.T) {
	t.Parallel()
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for i := range maxDecisions + 3 {
		if err := s.Put("a/b", "sha256:abc", decision(strconv.Itoa(i)), nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok := s.Decision("a/b", "sha256:abc", "0"); ok {
		t.Error("the oldest rule version is still kept")
	}
	if _, ok := s.Decision("a/b", "sha256:abc", strconv.Itoa(maxDecisions+2)); !ok {
		t.Error("the newest rule version is missing")
	}
	if n := len(s.decisions[key{"a/b", "sha256:abc"}]); n != maxDecisions {
		t.Errorf("%d decisions kept, want %d", n, maxDecisions)
	}
}

func TestDamagedFileIsMovedAside(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		damage func(t *testing.T, path string)
	}{
		{"garbage", func(t *testing.T, path string) {
			os.WriteFile(path, bytes.Repeat([]byte("garbage!"), 2048), 0o600)
		}},
		{"truncated", func(t *testing.T, path string) {
			os.Truncate(path, 100)
		}},
		{"meta pages overwritten", func(t *testing.T, path string) {
			f, err := os.OpenFile(path, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			page := os.Getpagesize()
			for _, off := range []int64{0, int64(page)} {
				f.WriteAt(bytes.Repeat([]byte{0xff}, 64), off+16)
			}
		}},
		{"unknown schema version", func(t *testing.T, path string) {
			db, err := bolt.Open(path, 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			db.Update(func(tx *bolt.Tx) error { return tx.Bucket(metaBucket).Put(versionKey, []byte("99")) })
		}},
		{"undecodable record", func(t *testing.T, path string) {
			db, err := bolt.Open(path, 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			db.Update(func(tx *bolt.Tx) error {
				return tx.Bucket(decisionsBucket).Put([]byte("a/b@sha256:1"), []byte("{not json"))
			})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			s, err := Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Put("a/b", "sha256:abc", decision("h"), nil); err != nil {
				t.Fatal(err)
			}
			tt.damage(t, s.Path())

			var log bytes.Buffer
			s, err = Open(dir, WithLogger(slog.New(slog.NewTextHandler(&log, nil))))
			if err != nil {
				t.Fatalf("open of a damaged file: %v", err)
			}
			if s.Len() != 0 {
				t.Errorf("%d decisions read from a damaged file", s.Len())
			}
			aside, _ := filepath.Glob(filepath.Join(dir, FileName+".corrupt-*"))
			if len(aside) != 1 {
				t.Fatalf("damaged file not kept aside: %v", aside)
			}
			if !strings.Contains(log.String(), "state file was damaged") || !strings.Contains(log.String(), aside[0]) {
				t.Errorf("log does not say the file was moved aside: %s", log.String())
			}
			// The new file works.
			if err := s.Put("a/b", "sha256:abc", decision("h"), nil); err != nil {
				t.Fatal(err)
			}
			if s, err := Open(dir); err != nil || s.Len() != 1 {
				t.Errorf("reopen after repair: %v", err)
			}
		})
	}
}

func TestConcurrentWriters(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	// Two stores on one file stand for two processes (the daemon and `pullgate audit`, or a
	// second daemon started by mistake): bbolt's file lock keeps them in line.
	a, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	const n = 40
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := a
			if i%2 == 1 {
				s = b
			}
			ev := &Evidence{Repository: "r/" + strconv.Itoa(i), Responses: map[string]Response{"GET x": {Status: 200, Body: []byte(strconv.Itoa(i))}}}
			if err := s.Put("r/"+strconv.Itoa(i), "sha256:abc", decision("h"), ev); err != nil {
				t.Error(err)
			}
			if _, err := s.Evidence("r/"+strconv.Itoa(i), "sha256:abc"); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if s.Len() != n {
		t.Errorf("%d records after %d concurrent writes", s.Len(), n)
	}
	for i := range n {
		ev, err := s.Evidence("r/"+strconv.Itoa(i), "sha256:abc")
		if err != nil || ev == nil || string(ev.Responses["GET x"].Body) != strconv.Itoa(i) {
			t.Errorf("record %d: %+v, %v", i, ev, err)
		}
	}
}

// TestKilledWriter kills a process that writes as fast as it can, at whatever point of a write
// it happens to be, and checks that every write it reported as done survives, and the file opens
// without repair.
func TestKilledWriter(t *testing.T) {
	if dir := os.Getenv("PULLGATE_STATE_WRITER"); dir != "" {
		s, err := Open(dir)
		if err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		ev := &Evidence{Repository: "r", Responses: map[string]Response{"GET x": {Status: 200, Body: bytes.Repeat([]byte("e"), 16<<10)}}}
		for i := 0; ; i++ {
			if err := s.Put("r", "sha256:"+strconv.Itoa(i), decision("h"), ev); err != nil {
				fmt.Println("error", err)
				os.Exit(1)
			}
			fmt.Println("done", i)
		}
	}
	t.Parallel()
	dir := t.TempDir()
	for round := range 3 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestKilledWriter$")
		cmd.Env = append(os.Environ(), "PULLGATE_STATE_WRITER="+dir)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := -1
		sc := bufio.NewScanner(out)
		for sc.Scan() && done < 30*(round+1) {
			var i int
			if _, err := fmt.Sscanf(sc.Text(), "done %d", &i); err != nil {
				t.Fatalf("writer: %s", sc.Text())
			}
			done = i
		}
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()

		var log bytes.Buffer
		s, err := Open(dir, WithLogger(slog.New(slog.NewTextHandler(&log, nil))))
		if err != nil {
			t.Fatal(err)
		}
		if log.Len() > 0 {
			t.Fatalf("round %d: the file needed repair after kill -9: %s", round, log.String())
		}
		for i := 0; i <= done; i++ {
			if _, ok := s.Decision("r", "sha256:"+strconv.Itoa(i), "h"); !ok {
				t.Fatalf("round %d: write %d was reported done but is lost", round, i)
			}
		}
	}
}

func TestPrune(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	old, recent := time.Unix(1000, 0), time.Unix(5000, 0)
	ev := &Evidence{Repository: "r", Responses: map[string]Response{"GET x": {Status: 200}}}
	for _, r := range []struct {
		digest string
		at     time.Time
	}{{"sha256:gone", old}, {"sha256:inuse", old}, {"sha256:recent", recent}} {
		if err := s.Put("r", r.digest, Decision{RuleHash: "h", At: r.at}, ev); err != nil {
			t.Fatal(err)
		}
	}
	for ref, digest := range map[string]string{"r:gone": "sha256:gone", "r:inuse": "sha256:inuse"} {
		if err := s.PutTag(ref, digest, old); err != nil {
			t.Fatal(err)
		}
	}
	n, err := s.Prune(func(image, digest string) bool { return digest == "sha256:inuse" }, time.Unix(3000, 0))
	if err != nil || n != 1 {
		t.Fatalf("Prune = %d, %v; want 1 forgotten", n, err)
	}
	for _, st := range []*Store{s, mustOpen(t, dir)} {
		if _, ok := st.Tag("r:gone"); ok {
			t.Error("a tag naming a forgotten digest was kept")
		}
		if _, ok := st.Tag("r:inuse"); !ok {
			t.Error("a tag naming a kept digest was forgotten")
		}
		for digest, want := range map[string]bool{"sha256:gone": false, "sha256:inuse": true, "sha256:recent": true} {
			if _, ok := st.Decision("r", digest, "h"); ok != want {
				t.Errorf("decision for %s kept = %v, want %v", digest, ok, want)
			}
			if ev, _ := st.Evidence("r", digest); (ev != nil) != want {
				t.Errorf("evidence for %s kept = %v, want %v", digest, ev != nil, want)
			}
		}
	}
}

func mustOpen(t *testing.T, dir string, opts ...Option) *Store {
	t.Helper()
	s, err := Open(dir, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Trouble around the file (here: a directory where the file should be; on nodes a full disk or
// a read-only file system) is reported, and the file is never moved aside for it.
func TestOpenErrorIsNotDamage(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, FileName), 0o700); err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	if _, err := Open(dir, WithLogger(slog.New(slog.NewTextHandler(&log, nil)))); err == nil || strings.Contains(err.Error(), "damaged") {
		t.Fatalf("Open = %v, want an error that does not call the file damaged", err)
	}
	if aside, _ := filepath.Glob(filepath.Join(dir, FileName+".corrupt-*")); len(aside) != 0 || log.Len() != 0 {
		t.Errorf("moved aside %v, logged %q", aside, log.String())
	}
}

// Many readers at once (ImageStatus after a policy change) do not keep a writer out.
func TestReadersDoNotStarveWriters(t *testing.T) {
	t.Parallel()
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ev := &Evidence{Repository: "r", Responses: map[string]Response{"GET x": {Status: 200, Body: bytes.Repeat([]byte("e"), 64<<10)}}}
	if err := s.Put("r", "sha256:a", decision("h"), ev); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := s.Evidence("r", "sha256:a"); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	for i := range 20 {
		if err := s.Put("r", "sha256:w"+strconv.Itoa(i), decision("h"), ev); err != nil {
			t.Errorf("Put %d with 32 readers: %v", i, err)
		}
	}
	close(stop)
	wg.Wait()
}

// bbolt panics on damaged pages, which is damage; a panic of pullgate's own code in a
// transaction is a bug, and must not cost the node its decisions.
func TestPanicIsDamageOnlyInsideBbolt(t *testing.T) {
	t.Parallel()
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Put("a/b", "sha256:abc", decision("h"), nil); err != nil {
		t.Fatal(err)
	}
	s.logger = slog.New(slog.DiscardHandler)
	err = s.do(false, func(*bolt.Tx) error { panic("a bug of pullgate's") })
	var ce *corruptError
	if err == nil || errors.As(err, &ce) {
		t.Fatalf("a panic in pullgate's code = %v, want an error that is not damage", err)
	}
	err = s.do(true, func(*bolt.Tx) error {
		var b *bolt.Bucket
		b.Get([]byte("k")) // panics inside bbolt, as a damaged page does
		return nil
	})
	if !errors.As(err, &ce) {
		t.Fatalf("a panic inside bbolt = %v, want damage", err)
	}
	if s, err := Open(filepath.Dir(s.Path())); err != nil || s.Len() != 1 {
		t.Fatalf("reopen: %v, %d decisions; want the decision kept", err, s.Len())
	}
}

// A tag's last allowed digest survives a restart; an unchanged tag costs no write.
func TestTags(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := mustOpen(t, dir)
	at := time.Unix(1700000000, 0)
	if err := s.PutTag("r.example.com/a:v1", "sha256:one", at); err != nil {
		t.Fatal(err)
	}
	before, err := os.Stat(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PutTag("r.example.com/a:v1", "sha256:one", at.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if after, err := os.Stat(s.Path()); err != nil || !after.ModTime().Equal(before.ModTime()) {
		t.Errorf("an unchanged tag was written again (%v)", err)
	}
	if err := s.PutTag("r.example.com/a:v2", "sha256:two", at); err != nil {
		t.Fatal(err)
	}
	for _, st := range []*Store{s, mustOpen(t, dir)} {
		for ref, want := range map[string]string{"r.example.com/a:v1": "sha256:one", "r.example.com/a:v2": "sha256:two"} {
			if got, ok := st.Tag(ref); !ok || got.Digest != want || !got.At.Equal(at) {
				t.Errorf("Tag(%s) = %+v, %v; want %s at %v", ref, got, ok, want, at)
			}
		}
	}
	if _, ok := s.Tag("r.example.com/a:v3"); ok {
		t.Error("Tag of a tag never recorded")
	}
}
