package auth

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
)

// Keyring holds credentials from node files and answers which apply to an image.
// It is safe for concurrent use.
type Keyring struct {
	files []*credFile
}

// NewKeyring returns a Keyring over the credential files at paths, in that order. Files are read
// on first Lookup and read again whenever they change, so credentials can rotate without a
// restart. A file that does not exist holds no credentials, as for kubelet.
func NewKeyring(paths []string) *Keyring {
	k := &Keyring{files: make([]*credFile, len(paths))}
	for i, p := range paths {
		k.files[i] = &credFile{path: p}
	}
	return k
}

// Lookup returns the credentials that apply to image ("host[:port]/repo/path", normalised:
// docker.io for Docker Hub), best match first, in kubelet's order: keys in reverse lexical order
// (so "example.com/team/app" before "example.com/team" before "example.com", and exact hosts
// before globs), and for one key, the files in the order given and each file's own order.
// Credentials under Docker Hub's "index.docker.io" key apply to docker.io images when no key
// matches them directly.
//
// A file that cannot be read or parsed, or an entry in it that is bad, gives an error naming the
// file and the key; the credentials of the rest are returned with it.
func (k *Keyring) Lookup(image string) ([]Credential, error) {
	t, err := parseImage(image)
	if err != nil {
		return nil, fmt.Errorf("credentials for %q: %w", image, err)
	}
	type match struct {
		name string
		cred Credential
	}
	var matches []match
	var hub []Credential
	var errs []error
	for _, f := range k.files {
		s := f.current()
		if s.err != nil {
			errs = append(errs, s.err)
		}
		for _, e := range s.entries {
			if e.pat.matches(t) {
				matches = append(matches, match{e.pat.name, e.cred})
			} else if e.pat.name == dockerHubIndex {
				hub = append(hub, e.cred)
			}
		}
	}
	err = errors.Join(errs...)
	if len(matches) == 0 {
		// kubelet's fallback for the default registry. kubelet also applies it to names whose
		// first component has no '.' or ':'; normalised names always start with a host, and
		// handing Docker Hub's credentials to "localhost/..." would send them to another registry.
		if t.host == dockerHub || t.host == dockerHubIndex {
			return hub, err
		}
		return nil, err
	}
	slices.SortStableFunc(matches, func(a, b match) int { return strings.Compare(b.name, a.name) })
	creds := make([]Credential, len(matches))
	for i, m := range matches {
		creds[i] = m.cred
	}
	return creds, err
}

// credFile is one credential file and what it held when last read.
type credFile struct {
	path   string
	mu     sync.Mutex // serialises reloads
	loaded atomic.Pointer[fileState]
}

type fileState struct {
	missing bool
	info    fs.FileInfo // nil when the file was missing or could not be read
	entries []entry
	err     error
}

// current returns the file's credentials, reading it again if it changed since last read: a
// different size, modification time or file (a rename over it, or a kubelet secret volume's
// symlink swap). The unchanged case costs one stat and no lock.
func (f *credFile) current() *fileState {
	info, statErr := os.Stat(f.path)
	if s := f.loaded.Load(); s != nil && fresh(s, info, statErr) {
		return s
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if s := f.loaded.Load(); s != nil && fresh(s, info, statErr) {
		return s
	}
	s := f.read()
	f.loaded.Store(s)
	return s
}

func fresh(s *fileState, info fs.FileInfo, statErr error) bool {
	if s.missing {
		return errors.Is(statErr, fs.ErrNotExist)
	}
	if statErr != nil || s.info == nil {
		// A file that could not be read is tried again on every Lookup, to see it once fixed.
		return false
	}
	return os.SameFile(s.info, info) && s.info.Size() == info.Size() && s.info.ModTime().Equal(info.ModTime())
}

// read loads the file, taking its identity from the open file so that a change between the
// stat in current and the read is seen on the next Lookup.
func (f *credFile) read() *fileState {
	file, err := os.Open(f.path)
	if errors.Is(err, fs.ErrNotExist) {
		return &fileState{missing: true}
	}
	if err != nil {
		return &fileState{err: f.errorf("%w", unwrapPath(err))}
	}
	defer file.Close()
	info, err := file.Stat()
	if err != nil {
		return &fileState{err: f.errorf("%w", unwrapPath(err))}
	}
	if info.IsDir() {
		return &fileState{err: f.errorf("is a directory")}
	}
	data, err := io.ReadAll(file)
	if err != nil {
		return &fileState{err: f.errorf("%w", unwrapPath(err))}
	}
	entries, errs := parseFile(data)
	for i, err := range errs {
		errs[i] = f.errorf("%w", err)
	}
	return &fileState{info: info, entries: entries, err: errors.Join(errs...)}
}

func (f *credFile) errorf(format string, args ...any) error {
	return fmt.Errorf("credentials file %s: "+format, append([]any{f.path}, args...)...)
}

// unwrapPath drops the path from an *fs.PathError, which errorf names already.
func unwrapPath(err error) error {
	var perr *fs.PathError
	if errors.As(err, &perr) {
		return fmt.Errorf("%s: %w", perr.Op, perr.Err)
	}
	return err
}
