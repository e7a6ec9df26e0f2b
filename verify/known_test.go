package verify

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/opencontainers/go-digest"

	"github.com/pullgate/pullgate/verify/auth"
	"github.com/pullgate/pullgate/verify/hosts"
	"github.com/pullgate/pullgate/verify/state"
)

// outage serves the registry until down is set, then answers 503 to everything and counts
// what still reaches it.
type outage struct {
	down     atomic.Bool
	requests atomic.Int64
}

func (o *outage) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if o.down.Load() && r.Method != http.MethodPut {
			o.requests.Add(1)
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		h.ServeHTTP(w, r)
	})
}

func openState(t *testing.T, dir string) *state.Store {
	t.Helper()
	s, err := state.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func known(t *testing.T, v *Verifier, d name.Digest, ns string, all bool) Decision {
	t.Helper()
	req := pullRequest(t, d, ns)
	req.AllNamespaces = all
	dec, err := v.Known(context.Background(), req)
	if err != nil {
		t.Fatalf("Known(%s): %v", d, err)
	}
	return dec
}

func TestKnownAcrossRestartsAndPolicyChanges(t *testing.T) {
	t.Parallel()
	reg := &outage{}
	host := testRegistryWith(t, reg.wrap)
	release, rotated := newTestKey(t), newTestKey(t)
	signed := pushImage(t, host+"/apps/signed:v1")
	release.sign(t, signed, signed)
	unsigned := pushImage(t, host+"/apps/unsigned:v1")
	other := pushImage(t, host+"/apps/new:v1")
	release.sign(t, other, other)
	dir := t.TempDir()
	rules := []RuleSpec{keyRule("apps", []string{host + "/apps/**"}, Enforce, release)}

	v := NewVerifier(mustPolicy(t, rules...), NewResolver(hosts.New("")), WithState(openState(t, dir)))
	if d := known(t, v, signed, "", false); d.Allowed || !d.Unknown || !strings.Contains(d.Reason, "never verified on this node") {
		t.Fatalf("Known before any pull = %+v; want unknown, not allowed", d)
	}
	wantDecision(t, verifyOne(t, v, signed), true)
	wantDecision(t, verifyOne(t, v, unsigned), false, "no cosign signature")

	// A restart: a new verifier on the same state, and the registry gone.
	reg.down.Store(true)
	v = NewVerifier(mustPolicy(t, rules...), NewResolver(hosts.New("")), WithState(openState(t, dir)))
	if d := known(t, v, signed, "", false); !d.Allowed || !d.Stored || d.Rule != "apps" {
		t.Errorf("Known(signed) after restart = %+v; want allowed from the stored decision", d)
	}
	if d := known(t, v, unsigned, "", false); d.Allowed || d.Unknown || !strings.Contains(d.Reason, "no cosign signature") {
		t.Errorf("Known(unsigned) after restart = %+v; want the stored denial", d)
	}
	// Last known good: a pull of the verified digest goes on while the registry is down; any
	// other digest fails closed.
	if d, err := v.Verify(context.Background(), pullRequest(t, signed, "")); err != nil || !d.Allowed || !d.Stored {
		t.Errorf("Verify(signed) with the registry down = %+v, %v; want allowed by the stored decision", d, err)
	}
	if d, err := v.Verify(context.Background(), pullRequest(t, other, "")); err == nil || d.Allowed {
		t.Errorf("Verify(new digest) with the registry down = %+v, %v; want an error", d, err)
	}

	// The policy changes: the stored evidence is checked again, offline.
	before := reg.requests.Load()
	v.SetPolicy(mustPolicy(t, keyRule("apps", []string{host + "/apps/**"}, Enforce, rotated, release)))
	if d := known(t, v, signed, "", false); !d.Allowed || !d.Stored {
		t.Errorf("Known(signed) under a rule that still trusts its key = %+v; want allowed from evidence", d)
	}
	v.SetPolicy(mustPolicy(t, keyRule("apps", []string{host + "/apps/**"}, Enforce, rotated)))
	if d := known(t, v, signed, "", false); d.Allowed || d.Unknown || !strings.Contains(d.Reason, "none of 1 signature(s) verified with this key") {
		t.Errorf("Known(signed) after a key rotation = %+v; want denied by its stored evidence", d)
	}
	// The evidence holds what the check did not need: a new attestation requirement is
	// settled offline too.
	withAtt := keyRule("apps", []string{host + "/apps/**"}, Enforce, release)
	withAtt.Attestations = []AttestationSpec{{Name: "sbom", PredicateType: "https://spdx.dev/Document"}}
	v.SetPolicy(mustPolicy(t, withAtt))
	if d := known(t, v, signed, "", false); d.Allowed || d.Unknown || !strings.Contains(d.Reason, "no attestation found") {
		t.Errorf("Known(signed) under a rule needing attestations = %+v; want denied by its stored evidence", d)
	}
	// A rule that needs what the evidence does not hold (here the image's own manifest, to
	// look for a platform signature) cannot be settled offline.
	platform := keyRule("apps", []string{host + "/apps/**"}, Enforce, rotated)
	platform.SignedLevel = SignedPlatform
	v.SetPolicy(mustPolicy(t, platform))
	if d := known(t, v, signed, "", false); d.Allowed || !d.Unknown || !strings.Contains(d.Reason, "does not settle this one") {
		t.Errorf("Known(signed) under a rule needing the manifest = %+v; want unknown", d)
	}
	if n := reg.requests.Load() - before; n != 0 {
		t.Errorf("re-checks from stored evidence sent %d requests to the registry", n)
	}

	// Decisions made offline were stored, undecided ones not: a third start finds them.
	s := openState(t, dir)
	image := pullRequest(t, signed, "").Image.Name()
	if _, ok := s.Decision(image, signed.DigestStr(), mustPolicy(t, withAtt).rules[0].hash); !ok {
		t.Error("the denial under the attestation rule was not stored")
	}
	if _, ok := s.Decision(image, signed.DigestStr(), mustPolicy(t, platform).rules[0].hash); ok {
		t.Error("an undecided re-check was stored as a decision")
	}
	v = NewVerifier(mustPolicy(t, keyRule("apps", []string{host + "/apps/**"}, Enforce, rotated, release)), NewResolver(hosts.New("")), WithState(s))
	if d := known(t, v, signed, "", false); !d.Allowed {
		t.Errorf("Known(signed) = %+v after restart", d)
	}
}

func TestKnownNamespaces(t *testing.T) {
	t.Parallel()
	host := testRegistry(t)
	key := newTestKey(t)
	signed := pushImage(t, host+"/team/signed:v1")
	key.sign(t, signed, signed)
	unsigned := pushImage(t, host+"/team/unsigned:v1")
	prod := keyRule("prod", []string{host + "/team/**"}, Enforce, key)
	prod.Namespaces = []string{"prod-*"}
	v := NewVerifier(mustPolicy(t, prod, RuleSpec{Name: "lax", Images: []string{host + "/team/**"}, Namespaces: []string{"dev"}, Mode: Skip}),
		NewResolver(hosts.New("")), WithState(openState(t, t.TempDir())))

	// Pulled for the lax namespace only: nothing was verified.
	if d, err := v.Verify(context.Background(), pullRequest(t, unsigned, "dev")); err != nil || !d.Allowed {
		t.Fatalf("Verify(dev) = %+v, %v", d, err)
	}
	tests := []struct {
		name    string
		d       name.Digest
		ns      string
		all     bool
		allowed bool
		rule    string
	}{
		{"lax namespace", unsigned, "dev", false, true, "lax"},
		{"strict namespace", unsigned, "prod-eu", false, false, "prod"},
		{"every namespace: the strictest rule decides", unsigned, "", true, false, "prod"},
		{"a namespace no rule matches: defaultAction", unsigned, "other", false, false, DefaultRule},
		{"verified for the strict rule, in every namespace", signed, "", true, false, DefaultRule},
	}
	wantDecision(t, verifyOne(t, v, signed), false) // no namespace: defaultAction denies
	if d, err := v.Verify(context.Background(), pullRequest(t, signed, "prod-eu")); err != nil || !d.Allowed {
		t.Fatalf("Verify(prod-eu) = %+v, %v", d, err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := known(t, v, tt.d, tt.ns, tt.all)
			if d.Allowed != tt.allowed || d.Rule != tt.rule {
				t.Errorf("Known = %+v; want allowed=%v by %q", d, tt.allowed, tt.rule)
			}
		})
	}

	// With a catch-all rule after the scoped ones, every namespace is covered by a rule.
	v.SetPolicy(mustPolicy(t, prod, RuleSpec{Name: "rest", Images: []string{host + "/team/**"}, Mode: Skip}))
	if d := known(t, v, signed, "", true); !d.Allowed || d.Rule != "prod" {
		t.Errorf("Known(signed, every namespace) = %+v; want allowed, decided by prod", d)
	}
	if d := known(t, v, unsigned, "", true); d.Allowed || d.Rule != "prod" || !d.Unknown {
		t.Errorf("Known(unsigned, every namespace) = %+v; want unknown under prod", d)
	}
	// A rule for namespace "*" covers every namespace too.
	v.SetPolicy(mustPolicy(t, prod, RuleSpec{Name: "rest", Images: []string{host + "/team/**"}, Namespaces: []string{"*"}, Mode: Skip}))
	if d := known(t, v, signed, "", true); !d.Allowed || d.Rule != "prod" {
		t.Errorf("Known(signed, every namespace) with a rule for namespace * = %+v; want allowed, decided by prod", d)
	}
	req := pullRequest(t, unsigned, "prod-eu")
	req.Digest = ""
	if d, err := v.Known(context.Background(), req); err != nil || d.Allowed || !strings.Contains(d.Reason, "imported, not pulled") {
		t.Errorf("Known without a digest = %+v, %v", d, err)
	}
}

// The evidence holds the registry's answers about the image, never the token exchange.
func TestEvidenceLeavesOutCredentials(t *testing.T) {
	t.Parallel()
	realm, _ := tokenServer(t, "user", "s3cret", "tok3n")
	srv := newServer(t, func(h http.Handler) http.Handler { return bearerAuth(realm, "tok3n", h) })
	seed := httptest.NewServer(srv.reg)
	t.Cleanup(seed.Close)
	key := newTestKey(t)
	pushed := pushImage(t, strings.TrimPrefix(seed.URL, "http://")+"/team/app:v1")
	key.sign(t, pushed, pushed)

	dir := t.TempDir()
	st := openState(t, dir)
	v := NewVerifier(mustPolicy(t, keyRule("team", []string{srv.host + "/team/**"}, Enforce, key)), NewResolver(plainHTTP(t, srv.host)), WithState(st))
	img, err := ParseImage(srv.host + "/team/app@" + pushed.DigestStr())
	if err != nil {
		t.Fatal(err)
	}
	d, err := v.Verify(context.Background(), Request{Image: img, Digest: digest.Digest(pushed.DigestStr()), Credential: auth.Credential{Username: "user", Password: "s3cret"}})
	if err != nil || !d.Allowed {
		t.Fatalf("Verify = %+v, %v", d, err)
	}
	ev, err := st.Evidence(img.Name(), pushed.DigestStr())
	if err != nil || ev == nil {
		t.Fatalf("no evidence stored: %v", err)
	}
	if ev.Repository != srv.host+"/team/app" || !ev.Insecure || len(ev.Responses) == 0 {
		t.Errorf("evidence = %+v", ev)
	}
	for k, r := range ev.Responses {
		if !strings.Contains(k, "/manifests/") && !strings.Contains(k, "/blobs/") && !strings.Contains(k, "/referrers/") {
			t.Errorf("evidence keeps %s", k)
		}
		if r.Status == http.StatusUnauthorized || strings.Contains(string(r.Body), "tok3n") || strings.Contains(string(r.Body), "s3cret") {
			t.Errorf("evidence %s holds an authentication exchange: %d %s", k, r.Status, r.Body)
		}
		for h := range r.Header {
			if h != "Content-Type" && h != "Content-Length" && h != "Docker-Content-Digest" {
				t.Errorf("evidence %s keeps header %s", k, h)
			}
		}
	}
}

// A registry that serves blobs from a store with signed URLs: the evidence keeps the blob, under
// the registry's own request, and neither the URL nor its signature; replayed, it verifies.
func TestEvidenceFromRedirectedBlobs(t *testing.T) {
	t.Parallel()
	var reg http.Handler
	store := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("X-Amz-Signature") != "s3cr3t-signature" {
			http.Error(w, "bad signature", http.StatusForbidden)
			return
		}
		r2 := r.Clone(r.Context())
		r2.URL.Path, r2.URL.RawQuery = strings.TrimPrefix(r.URL.Path, "/store"), ""
		reg.ServeHTTP(w, r2)
	}))
	t.Cleanup(store.Close)
	host := testRegistryWith(t, func(h http.Handler) http.Handler {
		reg = h
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
				http.Redirect(w, r, store.URL+"/store"+r.URL.Path+"?X-Amz-Signature=s3cr3t-signature", http.StatusTemporaryRedirect)
				return
			}
			h.ServeHTTP(w, r)
		})
	})
	key, second := newTestKey(t), newTestKey(t)
	d := pushImage(t, host+"/apps/app:v1")
	key.sign(t, d, d)
	st := openState(t, t.TempDir())
	v := NewVerifier(mustPolicy(t, keyRule("apps", []string{host + "/apps/**"}, Enforce, key)), NewResolver(hosts.New("")), WithState(st))
	wantDecision(t, verifyOne(t, v, d), true)

	ev, err := st.Evidence(pullRequest(t, d, "").Image.Name(), d.DigestStr())
	if err != nil || ev == nil {
		t.Fatalf("evidence: %v, %v", ev, err)
	}
	blobs := 0
	for k, r := range ev.Responses {
		if strings.Contains(k, "s3cr3t") || strings.Contains(k, "/store/") || r.Header.Get("Location") != "" || r.Status >= 300 && r.Status < 400 {
			t.Errorf("evidence keeps the redirect: %s %d %v", k, r.Status, r.Header)
		}
		if strings.Contains(k, "/blobs/") && r.Status == http.StatusOK && len(r.Body) > 0 {
			blobs++
		}
	}
	if blobs == 0 {
		t.Errorf("no blob in the evidence: %v", ev.Responses)
	}
	v.SetPolicy(mustPolicy(t, keyRule("apps", []string{host + "/apps/**"}, Enforce, second, key)))
	if dec := known(t, v, d, "", false); !dec.Allowed || !dec.Stored {
		t.Errorf("Known from redirected evidence = %+v; want allowed", dec)
	}
}

// Completing the evidence after the decision cannot undo it: a referrers endpoint that never
// answers leaves the evidence shorter and the pull allowed.
func TestEvidenceCompletionCannotDeny(t *testing.T) {
	t.Parallel()
	host := testRegistryWith(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.Contains(r.URL.Path, "/referrers/") {
				<-r.Context().Done() // hangs until the client gives up
				return
			}
			h.ServeHTTP(w, r)
		})
	})
	key := newTestKey(t)
	d := pushImage(t, host+"/apps/app:v1")
	key.sign(t, d, d)
	s := testSettings
	s.Timeout = time.Second
	p, err := CompilePolicy([]RuleSpec{keyRule("apps", []string{host + "/apps/**"}, Enforce, key)}, Deny, s)
	if err != nil {
		t.Fatal(err)
	}
	st := openState(t, t.TempDir())
	v := NewVerifier(p, NewResolver(hosts.New("")), WithState(st))
	dec, err := v.Verify(context.Background(), pullRequest(t, d, ""))
	if err != nil || !dec.Allowed {
		t.Fatalf("Verify with a hanging referrers endpoint = %+v, %v; want allowed by the .sig signature", dec, err)
	}
	if ev, err := st.Evidence(pullRequest(t, d, "").Image.Name(), d.DigestStr()); err != nil || ev == nil {
		t.Errorf("evidence not stored: %v", err)
	}
}

// The last-known-good fallback is for a registry that may come back, never for a definite
// answer: a registry that now refuses, or a man in the middle, must not be met with what was
// verified before.
func TestLastKnownGoodOnlyWhileUnavailable(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		answer  http.HandlerFunc
		allowed bool
	}{
		{name: "503", answer: func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "down", http.StatusServiceUnavailable) }, allowed: true},
		{name: "connection dropped", answer: hangUp{}.ServeHTTP, allowed: true},
		{name: "403", answer: func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "no", http.StatusForbidden) }},
		{name: "400", answer: func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "no", http.StatusBadRequest) }},
	}
	key := newTestKey(t)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var broken atomic.Bool
			host := testRegistryWith(t, func(h http.Handler) http.Handler {
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if broken.Load() && r.Method != http.MethodPut {
						tc.answer(w, r)
						return
					}
					h.ServeHTTP(w, r)
				})
			})
			signed := pushImage(t, host+"/lkg/app:v1")
			key.sign(t, signed, signed)
			rule := keyRule("lkg", []string{host + "/lkg/**"}, Enforce, key)
			dir := t.TempDir()
			wantDecision(t, verifyOne(t, NewVerifier(mustPolicy(t, rule), NewResolver(hosts.New("")), WithState(openState(t, dir))), signed), true)

			broken.Store(true)
			v := NewVerifier(mustPolicy(t, rule), NewResolver(hosts.New("")), WithState(openState(t, dir)))
			d, err := v.Verify(context.Background(), pullRequest(t, signed, ""))
			if tc.allowed && (err != nil || !d.Allowed || !d.Stored) {
				t.Errorf("Verify = %+v, %v; want allowed by the stored decision", d, err)
			}
			if !tc.allowed && (err == nil || d.Allowed) {
				t.Errorf("Verify = %+v, %v; want the registry's answer, not the stored decision", d, err)
			}
		})
	}
}

// A tag pulled and allowed is remembered across restarts; with its registry down, Check
// decides the digest it was, and only when the registry is unavailable, not when it answers.
func TestRecallTagWhileUnavailable(t *testing.T) {
	t.Parallel()
	reg := &outage{}
	host := testRegistryWith(t, reg.wrap)
	key := newTestKey(t)
	d := pushImage(t, host+"/apps/web:v1")
	key.sign(t, d, d)
	rule := keyRule("apps", []string{host + "/apps/**"}, Enforce, key)
	dir := t.TempDir()
	tag, err := ParseImage(host + "/apps/web:v1")
	if err != nil {
		t.Fatal(err)
	}
	r := NewResolver(hosts.New(""))
	v := NewVerifier(mustPolicy(t, rule), r, WithState(openState(t, dir)))
	if c, err := Check(t.Context(), r, v, tag, "", []auth.Credential{{}}); err != nil || !c.Decision.Allowed || c.Recalled != nil {
		t.Fatalf("Check = %+v, %v; want allowed, resolved", c, err)
	}

	reg.down.Store(true)
	v = NewVerifier(mustPolicy(t, rule), r, WithState(openState(t, dir)))
	if got, ok := v.Recall(tag); !ok || got.String() != d.DigestStr() {
		t.Fatalf("Recall after a restart = %s, %v; want %s", got, ok, d.DigestStr())
	}
	c, err := Check(t.Context(), r, v, tag, "", []auth.Credential{{}})
	if err != nil || !c.Decision.Allowed || c.Digest.String() != d.DigestStr() || KindOf(c.Recalled) != Unavailable {
		t.Fatalf("Check with the registry down = %+v, %v; want the recalled digest allowed", c, err)
	}
	other, err := ParseImage(host + "/apps/web:v2")
	if err != nil {
		t.Fatal(err)
	}
	if c, err := Check(t.Context(), r, v, other, "", []auth.Credential{{}}); err == nil || KindOf(err) != Unavailable {
		t.Fatalf("Check of a tag never pulled here = %+v, %v; want unavailable", c, err)
	}
}
