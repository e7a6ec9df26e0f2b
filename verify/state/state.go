// Package state keeps verification decisions, and the registry answers they were made on, in a
// bbolt file under stateDir. After a restart, a policy change or during a registry outage, the
// images already on the node can then be told apart without asking the registry.
package state

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// FileName is the state file's name in stateDir.
const FileName = "state.db"

// Decision is the outcome of verifying one digest under one version of a rule.
type Decision struct {
	// RuleHash identifies the rule's content, key material included.
	RuleHash string    `json:"ruleHash"`
	Rule     string    `json:"rule"`
	Mode     string    `json:"mode"`
	Verified bool      `json:"verified"`
	Reason   string    `json:"reason,omitempty"`
	At       time.Time `json:"at"`
}

// Evidence is what the registry answered while a digest was verified: signature manifests and
// layers, certificates, sigstore bundles, attestations and the answers that said something was
// absent. Replayed, it lets the same verification run again offline.
type Evidence struct {
	// Repository is the repository the answers came from, as the verifier named it.
	Repository string `json:"repository"`
	Insecure   bool   `json:"insecure,omitempty"`
	// Responses are keyed by "METHOD host/path?query".
	Responses map[string]Response `json:"responses"`
	At        time.Time           `json:"at"`
}

// Response is one registry answer: never a token or an authentication challenge.
type Response struct {
	Status int         `json:"status"`
	Header http.Header `json:"header,omitempty"`
	Body   []byte      `json:"body,omitempty"`
}

const (
	schemaVersion = "1"
	// maxDecisions bounds the rule versions remembered per digest; the oldest go first.
	maxDecisions = 8
	// lockTimeout bounds the wait for another process (pullgate audit, or the daemon) that
	// has the file open.
	lockTimeout = 5 * time.Second
)

var (
	metaBucket      = []byte("meta")
	decisionsBucket = []byte("decisions")
	evidenceBucket  = []byte("evidence")
	tagsBucket      = []byte("tags")
	versionKey      = []byte("version")
)

// Tag is the digest a tag resolved to when it was last pulled and allowed.
type Tag struct {
	Digest string    `json:"digest"`
	At     time.Time `json:"at"`
}

type key struct{ image, digest string }

func (k key) bytes() []byte { return []byte(k.image + "@" + k.digest) }

// Store is the state file and an in-memory index of its decisions. The file is opened for each
// operation rather than held, so that `pullgate audit` can read it while the daemon runs.
type Store struct {
	path     string
	readOnly bool
	logger   *slog.Logger

	mu        sync.RWMutex
	decisions map[key][]Decision
	// tags maps "image:tag" to what it last resolved to.
	tags map[string]Tag
	// access is what credentials the registry served each digest to, fingerprinted with
	// accessKey (see access.go).
	access    map[key][]access
	accessKey []byte

	// write keeps this process's writers in line, file its opens of the file: readers holding
	// bbolt's shared lock would otherwise starve a writer. bbolt's file lock keeps other
	// processes out.
	write, file sync.Mutex
}

// Option configures a Store.
type Option func(*Store)

// ReadOnly opens the store for reading only: nothing is written, and a damaged file is
// reported rather than moved aside.
func ReadOnly() Option { return func(s *Store) { s.readOnly = true } }

// WithLogger sets where repairs are reported.
func WithLogger(l *slog.Logger) Option { return func(s *Store) { s.logger = l } }

// Open opens the state in dir, creating it when missing. A file that is damaged or of an
// unknown version is moved aside and the state rebuilt empty: the images on the node are then
// verified again when next used, which is safe.
func Open(dir string, opts ...Option) (*Store, error) {
	s := &Store{path: filepath.Join(dir, FileName), logger: slog.Default(), decisions: map[key][]Decision{}, tags: map[string]Tag{}, access: map[key][]access{}}
	for _, o := range opts {
		o(s)
	}
	if s.readOnly {
		if _, err := os.Stat(s.path); errors.Is(err, os.ErrNotExist) {
			return s, nil
		}
		if err := s.load(); err != nil {
			return nil, fmt.Errorf("state %s: %w", s.path, err)
		}
		return s, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state: %w", err)
	}
	err := s.load()
	var ce *corruptError
	if errors.As(err, &ce) {
		if err := s.moveAside(err); err != nil {
			return nil, err
		}
		err = s.load()
	}
	if err != nil {
		return nil, fmt.Errorf("state %s: %w", s.path, err)
	}
	return s, nil
}

// ReadOnly reports whether the store was opened for reading only.
func (s *Store) ReadOnly() bool { return s.readOnly }

// Path is the state file.
func (s *Store) Path() string { return s.path }

// load checks the file's consistency and reads every decision into memory.
func (s *Store) load() error {
	var (
		decisions map[key][]Decision
		accesses  map[key][]access
		accessKey []byte
	)
	tags := map[string]Tag{}
	err := s.do(s.readOnly, func(tx *bolt.Tx) error {
		if err := s.prepare(tx); err != nil {
			return err
		}
		var damage error
		for err := range tx.Check() { // drained whole: Check's goroutine sends every problem
			damage = cmp.Or(damage, err)
		}
		if damage != nil {
			return &corruptError{damage}
		}
		if b := tx.Bucket(tagsBucket); b != nil {
			// Files written before tags were kept have no such bucket.
			if err := b.ForEach(func(k, v []byte) error {
				var t Tag
				if err := json.Unmarshal(v, &t); err != nil {
					return &corruptError{fmt.Errorf("tag %q: %w", k, err)}
				}
				tags[string(k)] = t
				return nil
			}); err != nil {
				return err
			}
		}
		if meta := tx.Bucket(metaBucket); meta != nil {
			accessKey = slices.Clone(meta.Get(accessKeyKey))
		}
		var err error
		if decisions, err = loadRecords[[]Decision](tx, decisionsBucket, "record"); err != nil {
			return err
		}
		// Files written before access was kept have no such bucket.
		accesses, err = loadRecords[[]access](tx, accessBucket, "access record")
		return err
	})
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.decisions, s.tags, s.access, s.accessKey = decisions, tags, accesses, accessKey
	s.mu.Unlock()
	return nil
}

// loadRecords reads the JSON records of a bucket keyed "image@digest"; what names them in
// errors. A missing bucket has none.
func loadRecords[T any](tx *bolt.Tx, bucket []byte, what string) (map[key]T, error) {
	records := map[key]T{}
	b := tx.Bucket(bucket)
	if b == nil {
		return records, nil
	}
	err := b.ForEach(func(k, v []byte) error {
		var r T
		if err := json.Unmarshal(v, &r); err != nil {
			return &corruptError{fmt.Errorf("%s %q: %w", what, k, err)}
		}
		image, digest, ok := cutLast(string(k), '@')
		if !ok {
			return &corruptError{fmt.Errorf("%s key %q is not image@digest", what, k)}
		}
		records[key{image, digest}] = r
		return nil
	})
	return records, err
}

// prepare creates the buckets of a new file and refuses a file of another schema version.
func (s *Store) prepare(tx *bolt.Tx) error {
	meta := tx.Bucket(metaBucket)
	if meta == nil {
		if !tx.Writable() {
			if tx.Bucket(decisionsBucket) != nil {
				return &corruptError{errors.New("no schema version")}
			}
			return nil
		}
		var err error
		if meta, err = tx.CreateBucket(metaBucket); err != nil {
			return err
		}
		if err := meta.Put(versionKey, []byte(schemaVersion)); err != nil {
			return err
		}
	}
	if v := string(meta.Get(versionKey)); v != schemaVersion {
		return &corruptError{fmt.Errorf("schema version %q, want %q", v, schemaVersion)}
	}
	if !tx.Writable() {
		return nil
	}
	for _, b := range [][]byte{decisionsBucket, evidenceBucket, tagsBucket, accessBucket} {
		if _, err := tx.CreateBucketIfNotExists(b); err != nil {
			return err
		}
	}
	return s.prepareAccessKey(meta)
}

// Decision returns the decision stored for the digest of image under the rule version ruleHash.
func (s *Store) Decision(image, digest, ruleHash string) (Decision, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, d := range s.decisions[key{image, digest}] {
		if d.RuleHash == ruleHash {
			return d, true
		}
	}
	return Decision{}, false
}

// Evidence returns what the registry answered when the digest of image was last verified, or
// nil when nothing is stored.
func (s *Store) Evidence(image, digest string) (*Evidence, error) {
	s.mu.RLock()
	_, known := s.decisions[key{image, digest}]
	s.mu.RUnlock()
	if !known {
		// Evidence is only ever written with a decision: no need to open the file.
		return nil, nil
	}
	var ev *Evidence
	err := s.do(true, func(tx *bolt.Tx) error {
		b := tx.Bucket(evidenceBucket)
		if b == nil {
			return nil
		}
		v := b.Get(key{image, digest}.bytes())
		if v == nil {
			return nil
		}
		ev = new(Evidence)
		if err := json.Unmarshal(v, ev); err != nil {
			return &corruptError{fmt.Errorf("evidence for %s@%s: %w", image, digest, err)}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("state %s: read evidence: %w", s.path, err)
	}
	return ev, nil
}

// Tag returns what ref ("image:tag") resolved to when it was last pulled and allowed.
func (s *Store) Tag(ref string) (Tag, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	t, ok := s.tags[ref]
	return t, ok
}

// PutTag records that ref ("image:tag") resolved to digest. Nothing is written when the record
// already says so: pulls of an unchanged tag cost no write.
func (s *Store) PutTag(ref, digest string, at time.Time) error {
	if s.readOnly {
		return errors.New("state is open read-only")
	}
	s.mu.RLock()
	old, ok := s.tags[ref]
	s.mu.RUnlock()
	if ok && old.Digest == digest {
		return nil
	}
	s.write.Lock()
	defer s.write.Unlock()
	t := Tag{Digest: digest, At: at.UTC()}
	v, err := json.Marshal(t)
	if err != nil {
		return err
	}
	put := func(tx *bolt.Tx) error {
		if err := s.prepare(tx); err != nil {
			return err
		}
		return tx.Bucket(tagsBucket).Put([]byte(ref), v)
	}
	if err := s.update(put); err != nil {
		return fmt.Errorf("state %s: write tag %s: %w", s.path, ref, err)
	}
	s.mu.Lock()
	s.tags[ref] = t
	s.mu.Unlock()
	return nil
}

// Put records d for the digest of image, and ev when it is not nil, in one transaction: a crash
// loses at most this write. A file found damaged is moved aside and the write made to a new one.
func (s *Store) Put(image, digest string, d Decision, ev *Evidence) error {
	if s.readOnly {
		return errors.New("state is open read-only")
	}
	s.write.Lock()
	defer s.write.Unlock()
	k := key{image, digest}
	s.mu.RLock()
	ds := merge(s.decisions[k], d)
	s.mu.RUnlock()
	dv, err := json.Marshal(ds)
	if err != nil {
		return err
	}
	var evv []byte
	if ev != nil {
		if evv, err = json.Marshal(ev); err != nil {
			return err
		}
	}
	put := func(tx *bolt.Tx) error {
		if err := s.prepare(tx); err != nil {
			return err
		}
		if err := tx.Bucket(decisionsBucket).Put(k.bytes(), dv); err != nil {
			return err
		}
		if evv != nil {
			return tx.Bucket(evidenceBucket).Put(k.bytes(), evv)
		}
		return nil
	}
	if err := s.update(put); err != nil {
		return fmt.Errorf("state %s: write %s@%s: %w", s.path, image, digest, err)
	}
	s.mu.Lock()
	s.decisions[k] = ds
	s.mu.Unlock()
	return nil
}

// update writes with fn; a file found damaged is moved aside and the write made to a new one.
func (s *Store) update(fn func(*bolt.Tx) error) error {
	err := s.do(false, fn)
	var ce *corruptError
	if errors.As(err, &ce) {
		if err := s.moveAside(err); err != nil {
			return err
		}
		err = s.do(false, fn)
	}
	return err
}

// merge puts d in place of the decision of the same rule version, newest first.
func merge(ds []Decision, d Decision) []Decision {
	out := make([]Decision, 0, min(len(ds)+1, maxDecisions))
	out = append(out, d)
	for _, old := range ds {
		if old.RuleHash != d.RuleHash && len(out) < maxDecisions {
			out = append(out, old)
		}
	}
	return out
}

// Prune forgets the digests keep refuses whose newest decision (without one, the newest access
// recorded) is older than before, with their evidence and access, and returns how many it forgot. It keeps the file from growing with every image the
// node ever ran.
func (s *Store) Prune(keep func(image, digest string) bool, before time.Time) (int, error) {
	if s.readOnly {
		return 0, errors.New("state is open read-only")
	}
	s.write.Lock()
	defer s.write.Unlock()
	var gone []key
	s.mu.RLock()
	for k, ds := range s.decisions {
		if len(ds) > 0 && ds[0].At.Before(before) && !keep(k.image, k.digest) {
			gone = append(gone, k)
		}
	}
	// A digest allowed by a skip rule has what its registry served it to, and no decision.
	for k, as := range s.access {
		if _, decided := s.decisions[k]; !decided && len(as) > 0 && as[0].At.Before(before) && !keep(k.image, k.digest) {
			gone = append(gone, k)
		}
	}
	// A tag goes with the digest it names.
	forgotten := map[key]bool{}
	for _, k := range gone {
		forgotten[k] = true
	}
	var tags []string
	for ref, tg := range s.tags {
		if image, _, ok := cutLast(ref, ':'); ok && forgotten[key{image, tg.Digest}] {
			tags = append(tags, ref)
		}
	}
	s.mu.RUnlock()
	if len(gone) == 0 {
		return 0, nil
	}
	err := s.do(false, func(tx *bolt.Tx) error {
		if err := s.prepare(tx); err != nil {
			return err
		}
		for _, k := range gone {
			for _, b := range [][]byte{decisionsBucket, evidenceBucket, accessBucket} {
				if err := tx.Bucket(b).Delete(k.bytes()); err != nil {
					return err
				}
			}
		}
		for _, ref := range tags {
			if err := tx.Bucket(tagsBucket).Delete([]byte(ref)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("state %s: prune: %w", s.path, err)
	}
	s.mu.Lock()
	for _, k := range gone {
		delete(s.decisions, k)
		delete(s.access, k)
	}
	for _, ref := range tags {
		delete(s.tags, ref)
	}
	s.mu.Unlock()
	return len(gone), nil
}

// Len is the number of digests with a decision.
func (s *Store) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.decisions)
}

// do runs fn in a transaction on the file, opened for this call only. bbolt panics on some
// damaged pages; that is reported as damage, never allowed to take pullgate down. A panic
// anywhere else is a bug of pullgate's, not damage: it is an error, and the file stays.
func (s *Store) do(readOnly bool, fn func(*bolt.Tx) error) (err error) {
	s.file.Lock()
	defer s.file.Unlock()
	defer func() {
		if r := recover(); r != nil {
			if panickedIn("go.etcd.io/bbolt") {
				err = &corruptError{fmt.Errorf("%v", r)}
				return
			}
			s.logger.Error("internal error in a state transaction; the state file is kept", "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			err = fmt.Errorf("internal error: %v", r)
		}
	}()
	// bbolt reports a file shorter than its two meta pages with an untyped error.
	if fi, err := os.Stat(s.path); err == nil && fi.Mode().IsRegular() && fi.Size() > 0 && fi.Size() < 2*int64(os.Getpagesize()) {
		return &corruptError{fmt.Errorf("file is %d bytes, shorter than its header", fi.Size())}
	}
	db, err := bolt.Open(s.path, 0o600, &bolt.Options{Timeout: lockTimeout, ReadOnly: readOnly})
	switch {
	case errors.Is(err, berrors.ErrTimeout):
		return fmt.Errorf("another process holds the file (pullgate audit, or a second pullgate on this stateDir): %w", err)
	case errors.Is(err, berrors.ErrInvalid) || errors.Is(err, berrors.ErrChecksum) || errors.Is(err, berrors.ErrVersionMismatch):
		return &corruptError{err}
	case err != nil:
		// A full disk, a read-only file system, too many open files: trouble around the
		// file, not in it. Moving the file aside would lose it for nothing.
		return err
	}
	defer db.Close()
	if readOnly {
		return db.View(fn)
	}
	return db.Update(fn)
}

// panickedIn tells, from a deferred function recovering a panic, whether the function that
// panicked is in pkg.
func panickedIn(pkg string) bool {
	pcs := make([]uintptr, 64)
	frames := runtime.CallersFrames(pcs[:runtime.Callers(3, pcs)])
	for {
		f, more := frames.Next()
		if !strings.HasPrefix(f.Function, "runtime.") {
			return strings.HasPrefix(f.Function, pkg+".") || strings.HasPrefix(f.Function, pkg+"/")
		}
		if !more {
			return false
		}
	}
}

// moveAside renames a damaged file out of the way, keeping it for inspection.
func (s *Store) moveAside(cause error) error {
	aside := fmt.Sprintf("%s.corrupt-%s", s.path, time.Now().UTC().Format("20060102T150405.000000000"))
	if err := os.Rename(s.path, aside); err != nil {
		return fmt.Errorf("state %s is damaged (%v) and could not be moved aside: %w", s.path, cause, err)
	}
	s.logger.Error("state file was damaged; moved aside and starting a new one: images already on the node are verified again when next used",
		"path", s.path, "movedTo", aside, "error", cause)
	return nil
}

// corruptError is a state file that cannot be read as pullgate's.
type corruptError struct{ err error }

func (e *corruptError) Error() string { return "damaged: " + e.err.Error() }
func (e *corruptError) Unwrap() error { return e.err }

func cutLast(s string, sep byte) (string, string, bool) {
	i := strings.LastIndexByte(s, sep)
	if i < 0 {
		return "", "", false
	}
	return s[:i], s[i+1:], true
}
