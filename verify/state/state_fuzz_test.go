package state

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"
	"unicode/utf8"

	bolt "go.etcd.io/bbolt"
)

// fuzzBase is a directory for the fuzzed state files: in memory where the machine has
// /dev/shm, since every write to the state syncs the file.
func fuzzBase(f *testing.F) string {
	if dir, err := os.MkdirTemp("/dev/shm", "pullgate-state-fuzz-"); err == nil {
		f.Cleanup(func() { os.RemoveAll(dir) })
		return dir
	}
	return f.TempDir()
}

// FuzzStateRecords checks the reading of the state file's records, a decision list and an
// evidence record under one key, as another pullgate version, a crash or a disk error may have
// left them:
//   - Open never panics and never fails on what is in a record: a record it cannot read makes
//     the file damaged, moved aside and started anew (so nothing is judged on it);
//   - a record it reads gives, for each rule version, the first decision stored for it;
//   - evidence is returned as stored, or an error when it cannot be read;
//   - a decision and evidence Put on top read back the same after a reopen, newest first, with
//     at most maxDecisions versions kept.
func FuzzStateRecords(f *testing.F) {
	ev := `{"repository":"registry.example.com/app","responses":{"GET registry.example.com/v2/app/manifests/sha256-abc.sig":{"status":200,"header":{"Content-Type":["application/vnd.oci.image.manifest.v1+json"]},"body":"eyJsYXllcnMiOltdfQ=="},"GET registry.example.com/v2/app/manifests/sha256-abc.att":{"status":404}},"at":"2023-11-14T22:13:20Z"}`
	for _, s := range []struct{ key, decisions, evidence string }{
		// TestRoundTrip
		{"registry.example.com/app@sha256:abc", `[{"ruleHash":"h2","rule":"strict","mode":"enforce","verified":false,"reason":"no signature","at":"0001-01-01T00:00:00Z"},{"ruleHash":"h1","rule":"apps","mode":"enforce","verified":true,"at":"2023-11-14T22:13:20Z"}]`, ev},
		{"a/b@sha256:abc", `[{"ruleHash":"h","rule":"apps","mode":"enforce","verified":true,"at":"2023-11-14T22:13:20Z"}]`, ""},
		// TestDamagedFileIsMovedAside: an undecodable record.
		{"a/b@sha256:1", "{not json", ""},
		{"no-digest", `[]`, `{}`},
		{"a/b@sha256:abc", `null`, `null`},
		{"a/b@sha256:abc", `[{"ruleHash":"h","at":"2023-11-14T22:13:20+05:30"},{"ruleHash":"h","reason":"second"}]`, `{"responses":{"GET x":{"status":-1,"body":"not base64"}}}`},
		{"a@b@sha256:abc", `[{"ruleHash":5}]`, `{"at":"yesterday"}`},
		{"@", `[{}]`, `[]`},
	} {
		f.Add([]byte(s.key), []byte(s.decisions), []byte(s.evidence))
	}
	base := fuzzBase(f)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	f.Fuzz(func(t *testing.T, key, decisions, evidence []byte) {
		if len(key) == 0 || len(key) > bolt.MaxKeySize || len(decisions) > 1<<20 || len(evidence) > 1<<20 {
			t.Skip()
		}
		dir, err := os.MkdirTemp(base, "")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(dir)
		s, err := Open(dir, WithLogger(quiet))
		if err != nil {
			t.Fatal(err)
		}
		db, err := bolt.Open(s.Path(), 0o600, &bolt.Options{NoSync: true})
		if err != nil {
			t.Fatal(err)
		}
		err = db.Update(func(tx *bolt.Tx) error {
			if err := tx.Bucket(decisionsBucket).Put(key, decisions); err != nil {
				return err
			}
			if len(evidence) > 0 {
				return tx.Bucket(evidenceBucket).Put(key, evidence)
			}
			return nil
		})
		db.Close()
		if err != nil {
			t.Fatal(err)
		}

		s, err = Open(dir, WithLogger(quiet))
		if err != nil {
			t.Fatalf("Open of a file with record %q: %q: %v", key, decisions, err)
		}
		image, digest, keyOK := cutLast(string(key), '@')
		var ds []Decision
		decodeOK := json.Unmarshal(decisions, &ds) == nil
		aside, _ := filepath.Glob(filepath.Join(dir, FileName+".corrupt-*"))
		if !keyOK || !decodeOK {
			if s.Len() != 0 || len(aside) != 1 {
				t.Fatalf("record %q: %q is unreadable, but %d decisions were read and %d files moved aside", key, decisions, s.Len(), len(aside))
			}
			return
		}
		if s.Len() != 1 || len(aside) != 0 {
			t.Fatalf("record %q: %q read as %d digests, %d files moved aside", key, decisions, s.Len(), len(aside))
		}
		for _, d := range ds {
			got, ok := s.Decision(image, digest, d.RuleHash)
			if !ok || !sameDecision(got, firstOf(ds, d.RuleHash)) {
				t.Fatalf("Decision(%q, %q, %q) = %+v, %v; want %+v", image, digest, d.RuleHash, got, ok, firstOf(ds, d.RuleHash))
			}
		}

		got, err := s.Evidence(image, digest)
		var want *Evidence
		if len(evidence) > 0 {
			want = new(Evidence)
			if json.Unmarshal(evidence, want) != nil {
				if err == nil {
					t.Fatalf("evidence %q is unreadable, but Evidence gave %+v", evidence, got)
				}
				want = nil
			} else if err != nil || !sameEvidence(t, got, want) {
				t.Fatalf("Evidence = %+v, %v; want %+v", got, err, want)
			}
		} else if got != nil || err != nil {
			t.Fatalf("no evidence stored, but Evidence gave %+v, %v", got, err)
		}

		// A new decision, and evidence, on top. Image names come from parsed references, which
		// are ASCII; JSON, the records' encoding, cannot keep bytes that are not UTF-8.
		if !utf8.Valid(key) {
			return
		}
		d := Decision{RuleHash: "fuzz", Rule: "apps", Mode: "enforce", Verified: true, At: time.Unix(1700000000, 0).UTC()}
		if len(ds) > 0 {
			d.RuleHash, d.Reason = ds[len(ds)-1].RuleHash, ds[0].Reason
		}
		newEv := want
		if newEv == nil {
			newEv = &Evidence{Repository: image, Responses: map[string]Response{"GET " + image: {Status: 200, Body: decisions}}}
		}
		if err := s.Put(image, digest, d, newEv); err != nil {
			t.Fatalf("Put: %v", err)
		}
		s, err = Open(dir, ReadOnly())
		if err != nil {
			t.Fatal(err)
		}
		merged := merge(ds, d)
		if len(merged) > maxDecisions || !sameDecision(merged[0], d) {
			t.Fatalf("merge kept %d decisions, newest %+v", len(merged), merged[0])
		}
		for _, m := range merged {
			if got, ok := s.Decision(image, digest, m.RuleHash); !ok || !sameDecision(got, firstOf(merged, m.RuleHash)) {
				t.Fatalf("after Put, Decision(%q) = %+v, %v; want %+v", m.RuleHash, got, ok, firstOf(merged, m.RuleHash))
			}
		}
		if got, err := s.Evidence(image, digest); err != nil || !sameEvidence(t, got, newEv) {
			t.Fatalf("after Put, Evidence = %+v, %v; want %+v", got, err, newEv)
		}
	})
}

func firstOf(ds []Decision, hash string) Decision {
	for _, d := range ds {
		if d.RuleHash == hash {
			return d
		}
	}
	return Decision{}
}

func sameDecision(a, b Decision) bool {
	return a.RuleHash == b.RuleHash && a.Rule == b.Rule && a.Mode == b.Mode && a.Verified == b.Verified &&
		a.Reason == b.Reason && a.At.Equal(b.At)
}

// sameEvidence compares evidence by its encoding, which is what the state keeps.
func sameEvidence(t *testing.T, a, b *Evidence) bool {
	t.Helper()
	if a == nil || b == nil {
		return a == b
	}
	ja, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	jb, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ja, jb) {
		return false
	}
	for k, r := range b.Responses {
		if got := a.Responses[k]; got.Status != r.Status || !bytes.Equal(got.Body, r.Body) || len(got.Header) != len(r.Header) {
			return false
		}
	}
	return len(a.Responses) == len(b.Responses)
}
