package state

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
)

// While a registry is down, pullgate answers a pull of an image the node holds from the
// runtime's store, and no registry request checks that pull's credentials. kubelet pulls again
// precisely to have a pod's own pull secret checked (KubeletEnsureSecretPulledImages), so such
// an answer is given only for a credential the registry served that very image and digest to
// before. The state keeps which, as fingerprints: HMAC-SHA256 of the credential under a random
// key kept in the file, so that neither a credential nor a hash of a weak password anyone could
// test offline ends up in the state.

const (
	// maxAccess bounds the credentials remembered per digest; the oldest go first.
	maxAccess = 16
	// anonymous is the fingerprint of access without a credential: the registry serves the
	// digest to anyone.
	anonymous = "anonymous"
)

var (
	accessBucket = []byte("access")
	accessKeyKey = []byte("accessKey")
)

// access is one credential the registry served a digest to.
type access struct {
	Fingerprint string    `json:"fingerprint"`
	At          time.Time `json:"at"`
}

// fingerprint is what the state keeps of a credential, given as the bytes that identify it;
// nil or empty is anonymous access.
func (s *Store) fingerprint(secret []byte) string {
	if len(secret) == 0 {
		return anonymous
	}
	s.mu.RLock()
	k := s.accessKey
	s.mu.RUnlock()
	m := hmac.New(sha256.New, k)
	m.Write(secret)
	return base64.RawStdEncoding.EncodeToString(m.Sum(nil))
}

// PutAccess records that the registry served image at digest to the credential secret (nil
// for anonymous access). Nothing is written when that is known already.
func (s *Store) PutAccess(image, digest string, secret []byte, at time.Time) error {
	if s.readOnly {
		return errors.New("state is open read-only")
	}
	k, fp := key{image, digest}, s.fingerprint(secret)
	if s.served(k, fp) {
		return nil
	}
	s.write.Lock()
	defer s.write.Unlock()
	s.mu.RLock()
	as := addAccess(s.access[k], access{Fingerprint: fp, At: at.UTC()})
	s.mu.RUnlock()
	v, err := json.Marshal(as)
	if err != nil {
		return err
	}
	put := func(tx *bolt.Tx) error {
		if err := s.prepare(tx); err != nil {
			return err
		}
		return tx.Bucket(accessBucket).Put(k.bytes(), v)
	}
	if err := s.update(put); err != nil {
		return fmt.Errorf("state %s: write access to %s@%s: %w", s.path, image, digest, err)
	}
	s.mu.Lock()
	s.access[k] = as
	s.mu.Unlock()
	return nil
}

// Served tells whether the registry served image at digest to one of the credentials secrets,
// or to anyone without a credential.
func (s *Store) Served(image, digest string, secrets [][]byte) bool {
	k := key{image, digest}
	return s.served(k, anonymous) || slices.ContainsFunc(secrets, func(secret []byte) bool { return s.served(k, s.fingerprint(secret)) })
}

func (s *Store) served(k key, fp string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return slices.ContainsFunc(s.access[k], func(a access) bool { return a.Fingerprint == fp })
}

// addAccess puts a first, keeping at most maxAccess, newest first.
func addAccess(as []access, a access) []access {
	out := make([]access, 0, min(len(as)+1, maxAccess))
	out = append(out, a)
	for _, old := range as {
		if old.Fingerprint != a.Fingerprint && len(out) < maxAccess {
			out = append(out, old)
		}
	}
	return out
}

// prepareAccessKey gives a writable file the key fingerprints are made with: the one in
// memory, so that a file started anew after damage keeps the fingerprints already known valid,
// or else a new one.
func (s *Store) prepareAccessKey(meta *bolt.Bucket) error {
	if meta.Get(accessKeyKey) != nil {
		return nil
	}
	s.mu.RLock()
	k := s.accessKey
	s.mu.RUnlock()
	if k == nil {
		k = make([]byte, 32)
		rand.Read(k)
	}
	return meta.Put(accessKeyKey, k)
}
