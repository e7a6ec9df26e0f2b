package verify

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/opencontainers/go-digest"
	ociremote "github.com/sigstore/cosign/v2/pkg/oci/remote"
	"github.com/sigstore/cosign/v2/pkg/oci/static"
)

// CompilePolicy reports every problem at once, each with its path.
func TestCompilePolicyErrors(t *testing.T) {
	t.Parallel()
	key := newTestKey(t)
	notPEM := filepath.Join(t.TempDir(), "not.pem")
	if err := os.WriteFile(notPEM, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	huge := filepath.Join(t.TempDir(), "huge.pem")
	if err := os.WriteFile(huge, make([]byte, 2<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	keyAuth := []AuthoritySpec{{Name: "k", Key: &KeySpec{File: key.pemFile}, IgnoreTransparencyLog: true}}
	specs := []RuleSpec{
		{Name: "globs", Images: []string{"registry.example.com/[", "**/apps", "registry.example.com/a**b"}, Mode: Enforce, Authorities: keyAuth},
		{Name: "keys", Images: []string{"r.example.com/**"}, Mode: Enforce, Authorities: []AuthoritySpec{
			{Name: "missing", Key: &KeySpec{File: "/nonexistent/key.pub"}, IgnoreTransparencyLog: true},
			{Name: "garbage", Key: &KeySpec{File: notPEM}, IgnoreTransparencyLog: true},
			{Name: "both", Keyless: &IdentitySpec{Issuer: githubIssuer, Subject: "a", SubjectRegExp: "b"}},
			{Name: "badre", Certificate: &CertificateSpec{Roots: notPEM, IdentitySpec: IdentitySpec{SubjectRegExp: "("}}},
			{Name: "keyless", Keyless: &IdentitySpec{Issuer: githubIssuer, Subject: githubWorkflow}},
			{Name: "none"},
			{Name: "anyissuer", Keyless: &IdentitySpec{SubjectRegExp: ".+"}},
			{Name: "device", Key: &KeySpec{File: "/dev/zero"}, IgnoreTransparencyLog: true},
			{Name: "huge", Key: &KeySpec{File: huge}, IgnoreTransparencyLog: true},
		}},
		{Name: "empty", Images: []string{"r.example.com/empty"}, Mode: Enforce},
		{Name: "skipper", Images: []string{"r.example.com/skip"}, Mode: Skip, Authorities: keyAuth},
		{Name: "cel", Images: []string{"r.example.com/cel"}, Mode: Enforce, Authorities: keyAuth, Attestations: []AttestationSpec{
			{Name: "syntax", PredicateType: "https://example.com/p", Condition: "predicate.x ==="},
			{Name: "type", PredicateType: "https://example.com/p", Condition: "'a string'"},
		}},
		{Name: "globs", Images: []string{"r.example.com/dup"}, Mode: Skip},
		{Name: DefaultRule, Images: []string{"r.example.com/reserved"}, Mode: Skip},
		{Name: "ns", Images: []string{"r.example.com/ns"}, Namespaces: []string{"a/b"}, Mode: Skip},
		{Name: "mode", Images: []string{"r.example.com/mode"}, Mode: "audit"},
	}
	_, err := CompilePolicy(specs, "maybe", testSettings)
	if err == nil {
		t.Fatal("CompilePolicy accepted a broken policy")
	}
	for _, want := range []string{
		"defaultAction: must be deny or allow",
		"policies[0].images[1]: \"**/apps\": '**' cannot be the registry",
		"policies[0].images[2]: \"registry.example.com/a**b\": '**' must be a whole path segment",
		"policies[1].authorities[0]: key: open /nonexistent/key.pub",
		"policies[1].authorities[1]: key: not a PEM public key",
		"policies[1].authorities[2]: keyless: set subject or subjectRegExp, not both",
		"policies[1].authorities[3]: certificate: invalid regular expression \"(\"",
		"policies[1].authorities[4]: keyless needs verification.trustedRoot",
		"policies[1].authorities[5]: set exactly one of key, keyless and certificate",
		"policies[1].authorities[6]: keyless: set issuer or issuerRegExp",
		"policies[1].authorities[7]: key: /dev/zero is not a regular file",
		"policies[1].authorities[8]: key: " + huge + " is larger than 1048576 bytes",
		"policies[2].authorities: mode enforce needs at least one authority",
		"policies[3].mode: skip verifies nothing",
		"policies[4].attestations[0].condition:",
		"policies[4].attestations[1].condition: must be a boolean expression",
		"policies[5].name: \"globs\" is used by an earlier rule",
		"policies[6].name: \"defaultAction\" is reserved",
		"policies[7].namespaces[0]: invalid namespace glob \"a/b\"",
		"policies[8].mode: must be enforce, warn or skip",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("CompilePolicy error does not report %q:\n%v", want, err)
		}
	}
}

func TestPolicyMatch(t *testing.T) {
	t.Parallel()
	p, err := CompilePolicy([]RuleSpec{
		{Name: "prod-apps", Images: []string{"registry.example.com/apps/**"}, Namespaces: []string{"prod-*", "payments"}, Mode: Skip},
		{Name: "apps", Images: []string{"registry.example.com/apps/**"}, Mode: Skip},
		{Name: "one-level", Images: []string{"registry.example.com/team/*"}, Mode: Skip},
		{Name: "library", Images: []string{"docker.io/library/*"}, Mode: Skip},
		{Name: "any-registry", Images: []string{"*/mirror/**"}, Mode: Skip},
	}, Deny, testSettings)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, image, namespace, rule string
	}{
		{name: "namespace rule first", image: "registry.example.com/apps/web:v1", namespace: "prod-eu", rule: "prod-apps"},
		{name: "second namespace glob", image: "registry.example.com/apps/web:v1", namespace: "payments", rule: "prod-apps"},
		{name: "other namespace falls through", image: "registry.example.com/apps/web:v1", namespace: "dev", rule: "apps"},
		{name: "no namespace never matches a namespaced rule", image: "registry.example.com/apps/web:v1", rule: "apps"},
		{name: "double star matches the directory itself", image: "registry.example.com/apps:v1", rule: "apps"},
		{name: "double star spans segments", image: "registry.example.com/apps/a/b/c:v1", rule: "apps"},
		{name: "star within one segment", image: "registry.example.com/team/web:v1", rule: "one-level"},
		{name: "star does not cross segments", image: "registry.example.com/team/web/api:v1", rule: ""},
		{name: "normalised docker hub name", image: "nginx", rule: "library"},
		{name: "library star is one level", image: "docker.io/library/a/b", rule: ""},
		{name: "star as registry", image: "quay.io/mirror/x/y", rule: "any-registry"},
		{name: "prefix is not a match", image: "registry.example.com/apps-old/web", rule: ""},
		{name: "host suffix is not a match", image: "registry.example.com.evil.io/apps/web", rule: ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			img, err := ParseImage(tc.image)
			if err != nil {
				t.Fatal(err)
			}
			got := ""
			if r := p.match(img, tc.namespace); r != nil {
				got = r.name
			}
			if got != tc.rule {
				t.Fatalf("match(%s, %q) = %q, want %q", tc.image, tc.namespace, got, tc.rule)
			}
		})
	}
}

// '**' alone is a rule for everything: an enforce rule meant for every image must not match
// nothing and leave defaultAction: allow to let every image through.
func TestGlobDoubleStarAlone(t *testing.T) {
	t.Parallel()
	key := newTestKey(t)
	tests := []struct {
		name       string
		images     []string
		namespaces []string
		namespace  string
	}{
		{name: "images", images: []string{"**"}},
		{name: "images and namespaces", images: []string{"**"}, namespaces: []string{"**"}, namespace: "prod"},
		{name: "namespaces", images: []string{"*/**"}, namespaces: []string{"**"}, namespace: "kube-system"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rule := keyRule("everything", tc.images, Enforce, key)
			rule.Namespaces = tc.namespaces
			p, err := CompilePolicy([]RuleSpec{rule}, Allow, testSettings)
			if err != nil {
				t.Fatal(err)
			}
			for _, ref := range []string{"nginx", "registry.example.com/a/b/c:v1", "localhost:5000/x", "[::1]:5000/deep/er/path"} {
				img, err := ParseImage(ref)
				if err != nil {
					t.Fatal(err)
				}
				if r := p.match(img, tc.namespace); r == nil || r.name != "everything" {
					t.Errorf("match(%s, %q) = %v, want rule everything", ref, tc.namespace, r)
				}
				// ImageStatus names no namespace: '**' covers every namespace.
				if rules, orDefault := p.candidates(img); len(rules) != 1 || orDefault {
					t.Errorf("candidates(%s) = %d rules, orDefault %v; want the one rule alone", ref, len(rules), orDefault)
				}
			}
		})
	}
}

func TestVerifyDefaultAction(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		action  Action
		allowed bool
	}{
		{name: "deny", action: Deny},
		{name: "allow", action: Allow, allowed: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p, err := CompilePolicy([]RuleSpec{{Name: "other", Images: []string{"other.example.com/**"}, Mode: Skip}}, tc.action, testSettings)
			if err != nil {
				t.Fatal(err)
			}
			img, _ := ParseImage("registry.example.com/app@sha256:" + strings.Repeat("a", 64))
			d, err := NewVerifier(p, nil).Verify(context.Background(), Request{Image: img, Digest: img.Digest})
			if err != nil || d.Allowed != tc.allowed || d.Rule != DefaultRule {
				t.Fatalf("Verify = %+v, %v; want allowed=%v by %s", d, err, tc.allowed, DefaultRule)
			}
		})
	}
}

// sigCounter counts GETs and HEADs of cosign signature manifests (the .sig tags).
type sigCounter struct {
	h     http.Handler
	count atomic.Int64
}

func (c *sigCounter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.Contains(r.URL.Path, "/manifests/") && strings.HasSuffix(r.URL.Path, ".sig") && r.Method != http.MethodPut {
		c.count.Add(1)
	}
	c.h.ServeHTTP(w, r)
}

func TestVerifyCache(t *testing.T) {
	t.Parallel()
	var counter *sigCounter
	host := testRegistryWith(t, func(h http.Handler) http.Handler { counter = &sigCounter{h: h}; return counter })
	key, other := newTestKey(t), newTestKey(t)
	signed := pushImage(t, host+"/cache/app:v1")
	key.sign(t, signed, signed)
	rule := keyRule("apps", []string{host + "/cache/**"}, Enforce, key)

	t.Run("second verify is cached", func(t *testing.T) {
		v := newTestVerifier(t, rule)
		first := verifyOne(t, v, signed)
		before := counter.count.Load()
		second := verifyOne(t, v, signed)
		if !first.Allowed || first.Cached || !second.Allowed || !second.Cached {
			t.Fatalf("first %+v, second %+v; want both allowed, only the second cached", first, second)
		}
		if n := counter.count.Load() - before; n != 0 {
			t.Fatalf("cached decision fetched signatures %d times", n)
		}
	})
	t.Run("policy change is not served from the old entry", func(t *testing.T) {
		v := newTestVerifier(t, rule)
		wantDecision(t, verifyOne(t, v, signed), true)
		// Same rule name, another key: the old allowance must not count.
		v.SetPolicy(mustPolicy(t, keyRule("apps", []string{host + "/cache/**"}, Enforce, other)))
		d := verifyOne(t, v, signed)
		if d.Cached {
			t.Fatalf("decision after a policy change came from the cache: %+v", d)
		}
		wantDecision(t, d, false, "none of 1 signature(s) verified with this key")
		// Back to the first key: its entry is still valid.
		v.SetPolicy(mustPolicy(t, rule))
		if d := verifyOne(t, v, signed); !d.Allowed || !d.Cached {
			t.Fatalf("unchanged rule after a round trip: %+v, want allowed from the cache", d)
		}
	})
	t.Run("denials expire after failureTTL", func(t *testing.T) {
		unsigned := pushImage(t, host+"/cache/unsigned:v1")
		v := newTestVerifier(t, rule)
		now := time.Now()
		v.now = func() time.Time { return now }
		wantDecision(t, verifyOne(t, v, unsigned), false)
		v.now = func() time.Time { return now.Add(failureTTL - time.Second) }
		if d := verifyOne(t, v, unsigned); !d.Cached {
			t.Fatalf("denial within failureTTL was not cached: %+v", d)
		}
		v.now = func() time.Time { return now.Add(failureTTL + time.Second) }
		if d := verifyOne(t, v, unsigned); d.Cached || d.Allowed {
			t.Fatalf("denial after failureTTL: %+v, want denied and checked afresh", d)
		}
		// Allowances last for cacheTTL.
		wantDecision(t, verifyOne(t, v, signed), true)
		v.now = func() time.Time { return now.Add(testSettings.CacheTTL - time.Minute) }
		if d := verifyOne(t, v, signed); !d.Cached {
			t.Fatalf("allowance within cacheTTL was not cached: %+v", d)
		}
	})
}

// Concurrent pulls of one new digest share one verification: one fetch of the .sig manifest.
func TestVerifyConcurrentShare(t *testing.T) {
	t.Parallel()
	var counter *sigCounter
	host := testRegistryWith(t, func(h http.Handler) http.Handler { counter = &sigCounter{h: h}; return counter })
	key := newTestKey(t)
	d := pushImage(t, host+"/share/app:v1")
	key.sign(t, d, d)
	v := newTestVerifier(t, keyRule("share", []string{host + "/share/**"}, Enforce, key))
	before := counter.count.Load()

	const callers = 50
	var wg sync.WaitGroup
	start := make(chan struct{})
	errs := make(chan error, callers)
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			dec, err := v.Verify(context.Background(), pullRequest(t, d, ""))
			if err == nil && !dec.Allowed {
				err = errors.New("denied: " + dec.Reason)
			}
			errs <- err
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := counter.count.Load() - before; n != 1 {
		t.Fatalf("%d concurrent verifications fetched the signature manifest %d times, want 1", callers, n)
	}
}

func TestVerifyBounds(t *testing.T) {
	t.Parallel()
	host := testRegistry(t)
	key := newTestKey(t)

	many := pushImage(t, host+"/bounds/many:v1")
	for range testSettings.MaxSignatures + 1 {
		key.sign(t, many, many, static.WithAnnotations(map[string]string{"n": time.Now().String()}))
	}
	big := pushImage(t, host+"/bounds/big:v1")
	key.sign(t, big, big, static.WithAnnotations(map[string]string{"padding": strings.Repeat("x", int(testSettings.MaxBytes))}))
	bigLayer := pushImage(t, host+"/bounds/biglayer:v1")
	padded := []byte(`{"critical":{"identity":{"docker-reference":"` + bigLayer.Context().String() + `"},"image":{"docker-manifest-digest":"` + bigLayer.DigestStr() + `"},"type":"cosign container image signature"},"optional":{"padding":"` + strings.Repeat("x", int(testSettings.MaxBytes)) + `"}}`)
	key.signPayload(t, bigLayer, padded)
	within := pushImage(t, host+"/bounds/within:v1")
	for range testSettings.MaxSignatures {
		key.sign(t, within, within, static.WithAnnotations(map[string]string{"n": time.Now().String()}))
	}
	// A signature manifest with more layers than cosign reads (1000): its own bound, not ours.
	layers := pushImage(t, host+"/bounds/layers:v1")
	putSignatureManifest(t, layers, 1001)

	tests := []struct {
		name    string
		d       name.Digest
		mode    Mode
		allowed bool
		reason  string
	}{
		{name: "too many signatures", d: many, mode: Enforce, reason: "9 signatures stored for the image, more than the 8 allowed"},
		{name: "too many signatures in warn mode", d: many, mode: Warn, allowed: true, reason: "more than the 8 allowed"},
		{name: "manifest too large", d: big, mode: Enforce, reason: "verification.maxBytes"},
		{name: "signature layer too large", d: bigLayer, mode: Enforce, reason: "verification.maxBytes"},
		{name: "thousands of signature layers", d: layers, mode: Enforce, reason: "number of layers (1001) exceeded the limit (1000) (signatures per image are bounded by verification.maxSignatures)"},
		{name: "at the bound", d: within, mode: Enforce, allowed: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			v := newTestVerifier(t, keyRule("bounds", []string{host + "/bounds/**"}, tc.mode, key))
			wantDecision(t, verifyOne(t, v, tc.d), tc.allowed, tc.reason)
		})
	}
}

// putSignatureManifest stores, under d's .sig tag, a signature manifest of n layers that all
// name one small blob.
func putSignatureManifest(t *testing.T, d name.Digest, n int) {
	t.Helper()
	blob := []byte(`{}`)
	desc := map[string]any{"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json", "size": len(blob), "digest": digest.FromBytes(blob).String()}
	ls := make([]any, n)
	for i := range ls {
		ls[i] = desc
	}
	m, err := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "size": len(blob), "digest": digest.FromBytes(blob).String()},
		"layers": ls})
	if err != nil {
		t.Fatal(err)
	}
	tag, err := ociremote.SignatureTag(d)
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequest(http.MethodPut, "http://"+tag.RegistryStr()+"/v2/"+tag.RepositoryStr()+"/manifests/"+tag.TagStr(), bytes.NewReader(m))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("PUT %s: %s", tag, resp.Status)
	}
}

// unavailableSigs answers 503 for signature manifests, as a registry in trouble does.
func unavailableSigs(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, ".sig") && r.Method != http.MethodPut {
			http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
			return
		}
		h.ServeHTTP(w, r)
	})
}

func TestVerifyRegistryUnavailable(t *testing.T) {
	t.Parallel()
	host := testRegistryWith(t, unavailableSigs)
	key := newTestKey(t)
	d := pushImage(t, host+"/down/app:v1")

	t.Run("enforce", func(t *testing.T) {
		t.Parallel()
		v := newTestVerifier(t, keyRule("down", []string{host + "/down/**"}, Enforce, key))
		dec, err := v.Verify(context.Background(), pullRequest(t, d, ""))
		var re *RegistryError
		if !errors.As(err, &re) || !re.Unavailable {
			t.Fatalf("Verify = %+v, %v; want a *RegistryError with Unavailable", dec, err)
		}
		if dec.Allowed {
			t.Fatalf("Verify allowed a pull it could not check: %+v", dec)
		}
		if _, ok := v.cached(cacheKey{pullRequest(t, d, "").Image.Name(), d.DigestStr(), v.policy.Load().rules[0].hash}); ok {
			t.Fatal("a failure to verify was cached")
		}
	})
	t.Run("warn", func(t *testing.T) {
		t.Parallel()
		v := newTestVerifier(t, keyRule("down", []string{host + "/down/**"}, Warn, key))
		dec, err := v.Verify(context.Background(), pullRequest(t, d, ""))
		if err != nil || !dec.Allowed || !strings.Contains(dec.Reason, "could not verify") || !strings.Contains(dec.Reason, "503") {
			t.Fatalf("Verify = %+v, %v; want allowed with a reason naming the registry error", dec, err)
		}
	})
}

// Hosts are case-insensitive and :443 is the default port: spelling the registry differently
// must not slip past a rule, since containerd reaches the same server.
func TestPolicyMatchHostSpelling(t *testing.T) {
	t.Parallel()
	p := mustPolicy(t, RuleSpec{Name: "apps", Images: []string{"Registry.Example.com/apps/**"}, Mode: Skip})
	for _, ref := range []string{"registry.example.com/apps/web", "REGISTRY.example.com/apps/web", "registry.example.com:443/apps/web"} {
		img, err := ParseImage(ref)
		if err != nil {
			t.Fatal(err)
		}
		if r := p.match(img, ""); r == nil || r.name != "apps" {
			t.Errorf("%s matched %v, want rule apps", ref, r)
		}
	}
}

// The verification cache is keyed by the rule's hash: a rotated trusted root or changed bounds
// must change it, so that what was verified before is checked again.
func TestRuleHashCoversTrustedRootAndBounds(t *testing.T) {
	t.Parallel()
	key := newTestKey(t)
	rule := keyRule("apps", []string{"registry.example.com/**"}, Enforce, key)
	dir := t.TempDir()
	hash := func(root string, maxBytes int64) string {
		t.Helper()
		s := testSettings
		s.MaxBytes = maxBytes
		if root != "" {
			s.TrustedRoot = filepath.Join(dir, root)
			if err := os.WriteFile(s.TrustedRoot, []byte(root), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		p, err := CompilePolicy([]RuleSpec{rule}, Deny, s)
		if err != nil {
			t.Fatal(err)
		}
		return p.rules[0].hash
	}
	base := hash("", 1<<20)
	if base != hash("", 1<<20) {
		t.Fatal("the same rule hashed twice differs")
	}
	for name, h := range map[string]string{"trusted root": hash("root-a", 1<<20), "other trusted root": hash("root-b", 1<<20), "maxBytes": hash("", 2<<20)} {
		if h == base {
			t.Errorf("changing the %s left the rule's hash unchanged", name)
		}
	}
}
