package verify

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/pullgate/pullgate/verify/flight"
	"log/slog"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"
	"github.com/sigstore/cosign/v2/pkg/cosign"
	"github.com/sigstore/cosign/v2/pkg/oci"
	ociremote "github.com/sigstore/cosign/v2/pkg/oci/remote"

	"github.com/pullgate/pullgate/verify/auth"
	"github.com/pullgate/pullgate/verify/state"
)

// completeTimeout bounds the reads that complete the evidence after a decision.
const completeTimeout = 5 * time.Second

// failureTTL is how long a denial is remembered: long enough to absorb kubelet's retries of
// one pod, short enough that a signature pushed a moment later counts.
const failureTTL = 5 * time.Second

// Registry gives access to an image's repository with the pull's credential.
type Registry interface {
	Repository(ctx context.Context, img Image, cred auth.Credential) (name.Repository, []remote.Option, error)
}

// Verifier decides pulls with a Policy, verifying signatures and attestations on the digest.
type Verifier struct {
	policy   atomic.Pointer[Policy]
	registry Registry
	state    *state.Store
	logger   *slog.Logger
	now      func() time.Time

	flight flight.Group[cacheKey, Decision]
	// offline shares re-checks from stored evidence; kept apart from flight, so that a pull
	// never takes an offline answer for an online one.
	offline flight.Group[cacheKey, Decision]
	// cache holds the results of pulls' checks against the registry; rechecked those of Known's
	// checks of stored evidence, apart, so that a pull never counts a decision on old evidence
	// as a fresh one.
	cache, rechecked decisionCache
}

// VerifierOption configures a Verifier.
type VerifierOption func(*Verifier)

// WithState keeps every decision, and the registry answers it was made on, in s: images already
// on the node are then judged by Known after a restart, a policy change or while the registry
// is down.
func WithState(s *state.Store) VerifierOption { return func(v *Verifier) { v.state = s } }

// WithVerifierLogger sets where trouble with the state is reported.
func WithVerifierLogger(l *slog.Logger) VerifierOption { return func(v *Verifier) { v.logger = l } }

type cacheKey struct {
	image, digest, rule string
}

type cached struct {
	d       Decision
	expires time.Time
}

// NewVerifier returns a verifier for p that fetches signatures through r.
func NewVerifier(p *Policy, r Registry, opts ...VerifierOption) *Verifier {
	v := &Verifier{registry: r, logger: slog.Default(), now: time.Now}
	for _, o := range opts {
		o(v)
	}
	v.policy.Store(p)
	return v
}

// SetPolicy replaces the policy for the next pulls. Cached results of rules that did not
// change stay valid: the cache is keyed by each rule's content.
func (v *Verifier) SetPolicy(p *Policy) { v.policy.Store(p) }

// DecideByName decides on img when its name and namespace alone settle it: under defaultAction:
// deny, an image that no rule matches is denied, and neither is its tag resolved nor are
// credentials sent anywhere for it.
func (v *Verifier) DecideByName(img Image, namespace string) (d Decision, ok bool) {
	p := v.policy.Load()
	if p.defaultAction == Allow || p.match(img, namespace) != nil {
		return Decision{}, false
	}
	return p.unmatched(img), true
}

// Verify decides req. An error means the image could not be checked; the pull must be denied.
// What an allowed pull by tag resolved to is remembered, for Recall.
func (v *Verifier) Verify(ctx context.Context, req Request) (Decision, error) {
	d, err := v.verify(ctx, req)
	if err == nil && d.Allowed && req.Image.Tag != "" && req.Image.Digest == "" && v.state != nil && !v.state.ReadOnly() {
		if err := v.state.PutTag(req.Image.String(), req.Digest.String(), v.now()); err != nil {
			v.logger.Error("tag's digest not stored; while its registry is down, the tag cannot be pulled again", "image", req.Image.String(), "digest", req.Digest, "error", err)
		}
	}
	return d, err
}

// Recall returns the digest img's tag resolved to when it was last pulled and allowed on this
// node, for a pull of the tag while its registry is down. The digest is decided again like any
// other, from what the node knows.
func (v *Verifier) Recall(img Image) (digest.Digest, bool) {
	if v.state == nil || img.Tag == "" || img.Digest != "" {
		return "", false
	}
	t, ok := v.state.Tag(img.String())
	if !ok {
		return "", false
	}
	d, err := digest.Parse(t.Digest)
	return d, err == nil
}

func (v *Verifier) verify(ctx context.Context, req Request) (Decision, error) {
	p := v.policy.Load()
	r := p.match(req.Image, req.Namespace)
	if r == nil {
		return p.unmatched(req.Image), nil
	}
	if r.mode == Skip {
		return Decision{Allowed: true, Rule: r.name, Mode: Skip}, nil
	}
	key := cacheKey{req.Image.Name(), req.Digest.String(), r.hash}
	if d, ok := v.cached(key); ok {
		return d, nil
	}
	d, shared, err := v.flight.Do(ctx, key, func(ctx context.Context) (Decision, error) {
		ctx, cancel := context.WithTimeout(ctx, p.settings.Timeout)
		defer cancel()
		var rec *evidenceRecorder
		if v.state != nil {
			rec = new(evidenceRecorder)
		}
		d, repo, err := v.check(withRecorder(ctx, rec), p.settings, r, req, v.registry)
		if err == nil {
			ttl := p.settings.CacheTTL
			if !d.verified() {
				ttl = min(ttl, failureTTL)
			}
			v.store(key, d, ttl)
			if rec != nil {
				v.persist(r, req.Image, req.Digest, d, rec.evidence(repo))
			}
		}
		return d, err
	})
	if err != nil && v.state != nil && unavailableErr(err) {
		// Last known good: a digest verified before, under this very rule or by its stored
		// evidence, stays usable while its registry is down. New digests still fail closed.
		if kd, kerr := v.known(ctx, p, r, req.Image, req.Digest); kerr == nil && kd.verified() {
			v.logger.Warn("registry unavailable; allowed by the decision stored for this digest", "image", req.Image.Name(), "digest", req.Digest, "rule", r.name, "error", err)
			return kd, nil
		}
	}
	if err != nil && r.mode == Warn {
		return Decision{Allowed: true, Rule: r.name, Mode: Warn, Reason: "could not verify: " + err.Error(), Shared: shared}, nil
	}
	d.Shared = shared
	return d, err
}

// verified is true when every check of the rule held.
func (d Decision) verified() bool { return d.Allowed && d.Reason == "" }

func (v *Verifier) cached(key cacheKey) (Decision, bool) { return v.cache.get(key, v.now()) }

func (v *Verifier) store(key cacheKey, d Decision, ttl time.Duration) {
	v.cache.put(key, d, v.now(), ttl)
}

// decisionCache holds decisions until they expire.
type decisionCache struct {
	mu sync.Mutex
	m  map[cacheKey]cached
}

func (c *decisionCache) get(key cacheKey, now time.Time) (Decision, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[key]
	if !ok || now.After(e.expires) {
		return Decision{}, false
	}
	e.d.Cached = true
	return e.d, true
}

// maxCached bounds a cache; past it, expired entries go first, then everything.
const maxCached = 50_000

func (c *decisionCache) put(key cacheKey, d Decision, now time.Time, ttl time.Duration) {
	if ttl <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[cacheKey]cached{}
	}
	if len(c.m) >= maxCached {
		for k, e := range c.m {
			if now.After(e.expires) {
				delete(c.m, k)
			}
		}
		if len(c.m) >= maxCached {
			clear(c.m)
		}
	}
	c.m[key] = cached{d: d, expires: now.Add(ttl)}
}

// check verifies the rule's authorities and attestations against req's digest.
// It returns the repository the signatures were read from, which names the evidence.
func (v *Verifier) check(ctx context.Context, s Settings, r *rule, req Request, reg Registry) (Decision, name.Repository, error) {
	d := Decision{Rule: r.name, Mode: r.mode}
	ctx = withBudget(ctx, s.MaxBytes, "signatures and attestations take more than the %d bytes allowed per image (verification.maxBytes)")
	repo, ropts, err := reg.Repository(ctx, req.Image, req.Credential)
	if err != nil {
		return d, repo, err
	}
	h, err := v1.NewHash(req.Digest.String())
	if err != nil {
		return d, repo, err
	}
	c := &checker{r: r, s: s, img: req.Image, repo: repo, ropts: ropts, refs: map[v1.Hash]*referrers{}, opts: []ociremote.Option{
		ociremote.WithRemoteOptions(ropts...),
		// Pinned, so that COSIGN_REPOSITORY in the environment cannot redirect the lookup.
		ociremote.WithTargetRepository(repo),
	}}
	reasons, err := c.verify(ctx, h)
	var de *Denial
	switch {
	case errors.As(err, &de):
		reasons = []string{de.Reason}
	case err != nil:
		return d, repo, err
	}
	d.Authorities = c.results
	if err := ctx.Err(); err != nil {
		return d, repo, fmt.Errorf("verify %s@%s: %w", req.Image.Name(), req.Digest, err)
	}
	if ctx.Value(recorderKey{}) != nil {
		// Only once the decision is settled: what complete reads cannot change it.
		c.complete(ctx, h)
	}
	if len(reasons) > 0 {
		d.Reason, d.Allowed = strings.Join(reasons, "; "), r.mode == Warn
		return d, repo, nil
	}
	d.Allowed = true
	return d, repo, nil
}

// checker verifies one image against one rule.
type checker struct {
	r     *rule
	s     Settings
	img   Image
	repo  name.Repository
	ropts []remote.Option
	opts  []ociremote.Option
	// refs holds each digest's referrers, fetched once, when needed.
	refs map[v1.Hash]*referrers
	// results are the authorities' findings on the digest that decided.
	results []AuthorityResult
	// attsFetched is set once the .att tag was read.
	attsFetched bool
}

// verify returns what failed for the image at h: nothing when a signature from one of the
// rule's authorities and all its attestations hold.
func (c *checker) verify(ctx context.Context, h v1.Hash) ([]string, error) {
	ok, err := c.authorities(ctx, h)
	if err != nil {
		return nil, err
	}
	var reasons []string
	prefix := ""
	// signed is the digest whose signature holds: the attestations are looked up there.
	signed := h
	if !ok && c.r.platformLevel {
		// The index is not signed: a signature on the manifest this node will run is enough.
		pd, err := platformManifest(c.repo.Digest(h.String()), c.ropts)
		if err != nil {
			return nil, c.fetchError("index", err)
		}
		if pd != nil {
			if ok, err = c.authorities(ctx, pd.Digest); err != nil {
				return nil, err
			}
			prefix = fmt.Sprintf("index %s is not signed; for platform %s, ", h, pd.Platform)
			signed = pd.Digest
		}
	}
	if !ok {
		for _, res := range c.results {
			reasons = append(reasons, prefix+res.Name+": "+res.Reason)
		}
		return reasons, nil
	}
	if len(c.r.attestations) == 0 {
		return nil, nil
	}
	atts, err := c.attestations(signed)
	if err != nil {
		return nil, c.fetchError("attestations", err)
	}
	for _, spec := range c.r.attestations {
		ok, found, err := checkAttestation(ctx, c.r, spec, atts, signed)
		if err != nil {
			return nil, c.fetchError("attestations", err)
		}
		if ok {
			continue
		}
		bs, err := c.bundles(signed)
		if err != nil {
			return nil, err
		}
		ok, bfound := bundleAttestations(ctx, c.r, spec, bs, signed)
		if !ok {
			reasons = append(reasons, prefix+"attestation "+spec.name+": "+attestationReason(spec, signed, len(atts), attestationBundles(bs), append(found, bfound...)))
		}
	}
	return reasons, nil
}

// authorities checks the rule's authorities against the signatures of the digest h, in either
// storage format, until one verifies.
func (c *checker) authorities(ctx context.Context, h v1.Hash) (bool, error) {
	sigs, err := fetch(c.repo.Digest(h.String()), ociremote.SignatureTag, c.s.MaxSignatures, c.opts)
	if err != nil {
		return false, c.fetchError("signatures", err)
	}
	c.results = c.results[:0]
	for _, a := range c.r.authorities {
		res, err := verifySignatures(ctx, a, sigs, h, c.r, c.img)
		if err != nil {
			return false, c.fetchError("signatures", err)
		}
		if !res.Verified {
			// Sigstore bundles (cosign v3's format) are fetched only when the .sig tag does not
			// settle an authority.
			bs, err := c.bundles(h)
			if err != nil {
				return false, err
			}
			res = verifyBundleSignatures(a, res, len(sigs), bs, h, c.r, c.img)
		}
		c.results = append(c.results, res)
		if res.Verified {
			return true, nil
		}
	}
	return false, nil
}

// attestations returns the attestations stored under h's .att tag.
func (c *checker) attestations(h v1.Hash) ([]oci.Signature, error) {
	c.attsFetched = true
	return fetch(c.repo.Digest(h.String()), ociremote.AttestationTag, c.s.MaxSignatures, c.opts)
}

// complete reads what this check did not need, the sigstore bundles and attestations, so that
// the evidence stored can settle a changed rule (another authority, a new attestation) offline.
// A failure here only leaves the evidence shorter.
func (c *checker) complete(ctx context.Context, h v1.Hash) {
	ctx, cancel := context.WithTimeout(ctx, completeTimeout)
	defer cancel()
	c.opts = append(slices.Clip(c.opts), ociremote.WithMoreRemoteOptions(remote.WithContext(ctx)))
	c.bundles(h)
	if !c.attsFetched {
		c.attestations(h)
	}
}

// bundles returns the sigstore bundles that refer to h.
func (c *checker) bundles(h v1.Hash) ([]sigstoreBundle, error) {
	r, ok := c.refs[h]
	if !ok {
		r = &referrers{ref: c.repo.Digest(h.String()), max: c.s.MaxSignatures, opts: c.opts}
		c.refs[h] = r
	}
	bs, err := r.get()
	if err != nil {
		return nil, c.fetchError("sigstore bundles", err)
	}
	return bs, nil
}

// fetchError wraps registry trouble while fetching what: the pull could not be checked. A
// denial passes as is.
func (c *checker) fetchError(what string, err error) error {
	var de *Denial
	if errors.As(err, &de) {
		return err
	}
	return &RegistryError{Op: "verify", Image: c.img, Unavailable: unavailable(err), Err: fmt.Errorf("fetch %s: %w", what, err)}
}

// fetch lists the signatures (or attestations) stored under the digest's cosign tag.
func fetch(ref name.Digest, tag func(name.Reference, ...ociremote.Option) (name.Tag, error), max int, opts []ociremote.Option) ([]oci.Signature, error) {
	t, err := tag(ref, opts...)
	if err != nil {
		return nil, err
	}
	sigs, err := ociremote.Signatures(t, opts...)
	if err != nil {
		return nil, boundError(err)
	}
	list, err := sigs.Get()
	if err != nil {
		return nil, boundError(err)
	}
	if max > 0 && len(list) > max {
		return nil, &Denial{fmt.Sprintf("%d signatures stored for the image, more than the %d allowed", len(list), max)}
	}
	for i, sig := range list {
		list[i] = &payloadOnce{ociSignature: sig}
	}
	return list, nil
}

// payloadOnce reads a signature's payload, its layer in the registry, once: cosign and the
// claim checks each ask for it. A failure to read it is the registry's, not the signature's.
type payloadOnce struct {
	ociSignature
	once    sync.Once
	payload []byte
	err     error
}

// ociSignature names the embedded oci.Signature apart from its own Signature method.
type ociSignature = oci.Signature

func (s *payloadOnce) Payload() ([]byte, error) {
	s.once.Do(func() { s.payload, s.err = s.ociSignature.Payload() })
	return s.payload, s.err
}

// verifySignatures reports whether any signature verifies with authority a. An error is a
// signature that could not be read.
func verifySignatures(ctx context.Context, a *authority, sigs []oci.Signature, h v1.Hash, r *rule, img Image) (AuthorityResult, error) {
	res := AuthorityResult{Name: a.name}
	if len(sigs) == 0 {
		res.Reason = fmt.Sprintf("no cosign signature found for %s (looked for a %s signature)", h, a.kind)
		return res, nil
	}
	co := a.opts
	co.ClaimVerifier = claimVerifier(r.bindRepo, img)
	var errs []string
	for _, sig := range sigs {
		if _, err := sig.Payload(); err != nil {
			return res, err
		}
		if _, err := cosign.VerifyImageSignature(ctx, sig, h, &co); err != nil {
			errs = append(errs, signatureError(sig, &co, err))
			continue
		}
		res.Verified = true
		return res, nil
	}
	res.Reason = fmt.Sprintf("none of %d signature(s) verified with this %s: %s", len(sigs), a.kind, strings.Join(dedupe(errs), "; "))
	return res, nil
}

// signatureError says why sig did not verify. cosign reports a missing transparency-log proof
// as "offline verification failed"; name what is missing instead.
func signatureError(sig oci.Signature, co *cosign.CheckOpts, err error) string {
	if b, berr := sig.Bundle(); !co.IgnoreTlog && berr == nil && b == nil {
		return "no transparency-log proof (Rekor bundle) on the signature; set ignoreTransparencyLog: true for a signer that does not log"
	}
	return oneLine(err)
}

// claimVerifier checks the signed payload: it names the digest being pulled, carries no
// critical field pullgate does not understand, and, when the rule binds the repository, names
// the image's repository.
func claimVerifier(bindRepo bool, img Image) func(oci.Signature, v1.Hash, map[string]any) error {
	return func(sig oci.Signature, h v1.Hash, ann map[string]any) error {
		if err := cosign.SimpleClaimVerifier(sig, h, ann); err != nil {
			return err
		}
		p, err := sig.Payload()
		if err != nil {
			return err
		}
		var payload struct {
			Critical map[string]json.RawMessage `json:"critical"`
		}
		if err := json.Unmarshal(p, &payload); err != nil {
			return err
		}
		for k := range payload.Critical {
			if k != "identity" && k != "image" && k != "type" {
				return fmt.Errorf("payload has unknown critical field %q", k)
			}
		}
		var typ string
		json.Unmarshal(payload.Critical["type"], &typ)
		if typ != "cosign container image signature" && typ != "atomic container signature" {
			return fmt.Errorf("payload type %q is not a container image signature", typ)
		}
		if !bindRepo {
			return nil
		}
		var id struct {
			Ref string `json:"docker-reference"`
		}
		json.Unmarshal(payload.Critical["identity"], &id)
		signed, err := ParseImage(id.Ref)
		if err != nil || signed.Name() != img.Name() {
			return fmt.Errorf("signature is for repository %q, not %s", id.Ref, img.Name())
		}
		return nil
	}
}

// checkAttestation looks for an attestation of spec's predicate type under the .att tag, signed
// by one of the rule's authorities, whose predicate satisfies spec. It returns true when one
// does, and otherwise what was found. An error is an attestation that could not be read.
func checkAttestation(ctx context.Context, r *rule, spec *attestation, atts []oci.Signature, h v1.Hash) (bool, []string, error) {
	var found []string
	for _, a := range r.authorities {
		co := a.opts
		co.ClaimVerifier = cosign.IntotoSubjectClaimVerifier
		for _, att := range atts {
			if _, err := att.Payload(); err != nil {
				return false, nil, err
			}
			if _, err := cosign.VerifyBlobAttestation(ctx, att, h, &co); err != nil {
				continue
			}
			st, err := statement(att)
			if err != nil {
				found = append(found, "unreadable statement: "+err.Error())
				continue
			}
			ok, f := evalStatement(ctx, spec, st)
			if ok {
				return true, nil, nil
			}
			found = append(found, f)
		}
	}
	return false, found, nil
}

// evalStatement reports whether the verified statement st satisfies spec, and otherwise what it
// holds instead.
func evalStatement(ctx context.Context, spec *attestation, st inTotoStatement) (bool, string) {
	if st.PredicateType != spec.predicateType {
		return false, "signed " + st.PredicateType
	}
	if spec.program == nil {
		return true, ""
	}
	out, _, err := spec.program.ContextEval(ctx, map[string]any{"predicate": st.Predicate})
	if err != nil {
		return false, fmt.Sprintf("condition could not be evaluated: %v", oneLine(err))
	}
	if ok, isBool := out.Value().(bool); isBool && ok {
		return true, ""
	}
	return false, "condition is false"
}

// attestationReason says what was looked for and found when no attestation satisfied spec:
// atts under the .att tag and bundles among the referrers.
func attestationReason(spec *attestation, h v1.Hash, atts, bundles int, found []string) string {
	if atts+bundles == 0 {
		return fmt.Sprintf("no attestation found for %s: no .att tag and no attestation bundle among its referrers (looked for predicate type %s)", h, spec.predicateType)
	}
	if len(found) == 0 {
		return fmt.Sprintf("none of %d attestation(s) is signed by the rule's authorities for this digest (%d under the .att tag, %d sigstore bundle(s))", atts+bundles, atts, bundles)
	}
	return fmt.Sprintf("want predicate type %s with its condition true, found: %s", spec.predicateType, strings.Join(dedupe(found), ", "))
}

type inTotoStatement struct {
	PredicateType string `json:"predicateType"`
	Predicate     any    `json:"predicate"`
}

func statement(att oci.Signature) (inTotoStatement, error) {
	var st inTotoStatement
	p, err := att.Payload()
	if err != nil {
		return st, err
	}
	var env struct {
		Payload string `json:"payload"`
	}
	if err := json.Unmarshal(p, &env); err != nil {
		return st, err
	}
	b, err := base64.StdEncoding.DecodeString(env.Payload)
	if err != nil {
		return st, err
	}
	return st, json.Unmarshal(b, &st)
}

func oneLine(err error) string { return strings.Join(strings.Fields(err.Error()), " ") }

func dedupe(s []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, e := range s {
		if !seen[e] {
			seen[e] = true
			out = append(out, e)
		}
	}
	return out
}

// platformManifest returns the descriptor of the manifest for this node's platform when ref is
// an index, the one containerd will unpack, and nil when ref is a single manifest.
func platformManifest(ref name.Digest, opts []remote.Option) (*v1.Descriptor, error) {
	desc, err := remote.Get(ref, opts...)
	if err != nil {
		return nil, err
	}
	if !desc.MediaType.IsIndex() {
		return nil, nil
	}
	idx, err := desc.ImageIndex()
	if err != nil {
		return nil, err
	}
	m, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	// containerd picks among the entries for the node's OS and architecture (and those without a
	// platform) by variant and order, in ways that depend on the node's CPU. Only when exactly one
	// entry could be picked is it certain which manifest containerd will unpack.
	var candidates []v1.Descriptor
	for _, d := range m.Manifests {
		if d.Platform == nil || (d.Platform.OS == runtime.GOOS && d.Platform.Architecture == runtime.GOARCH) {
			candidates = append(candidates, d)
		}
	}
	switch len(candidates) {
	case 0:
		return nil, &Denial{fmt.Sprintf("index %s has no manifest for %s/%s", ref.DigestStr(), runtime.GOOS, runtime.GOARCH)}
	case 1:
		return &candidates[0], nil
	}
	return nil, &Denial{fmt.Sprintf("index %s is not signed and has %d manifests containerd could choose for %s/%s; sign the index", ref.DigestStr(), len(candidates), runtime.GOOS, runtime.GOARCH)}
}
