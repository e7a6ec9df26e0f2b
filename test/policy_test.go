package test

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pullgate/pullgate/test/harness"
)

// policyEnv is one containerd and one basic-auth registry whose credentials are in the node's
// config.json. Each test starts its own pullgate with its own policy, so that its metrics and
// cache are its own; they run one after another because they share the registry's counters.
type policyEnv struct {
	ctrd    *harness.Containerd
	reg     *harness.Registry
	dir     string
	auth    string // the node's config.json
	keyFile string // public key of release
	release *harness.Key
	other   *harness.Key
}

const vulnPredicate = "https://cosign.sigstore.dev/attestation/vuln/v1"

func TestPolicyEndToEnd(t *testing.T) {
	for version, bin := range harness.ContainerdBinaries(t) {
		t.Run("containerd-"+version, func(t *testing.T) {
			t.Parallel()
			p := newPolicyEnv(t, harness.StartContainerd(t, bin))
			t.Run("SignedPullByTag", p.testSignedPullByTag)
			t.Run("UnsignedDenied", p.testUnsignedDenied)
			t.Run("WarnMode", p.testWarnMode)
			t.Run("TagMovedToUnsigned", p.testTagMovedToUnsigned)
			t.Run("TagMovedWhileChecking", p.testTagMovedWhileChecking)
			t.Run("NamespaceScoped", p.testNamespaceScoped)
			t.Run("Attestation", p.testAttestation)
			t.Run("ReloadWarnToEnforce", p.testReloadWarnToEnforce)
			t.Run("FailsClosed", p.testFailsClosed)
		})
	}
}

func newPolicyEnv(t *testing.T, ctrd *harness.Containerd) *policyEnv {
	p := &policyEnv{
		ctrd:    ctrd,
		reg:     harness.StartRegistry(t, harness.WithUser("node", "node-secret-Pq4")),
		dir:     t.TempDir(),
		release: harness.NewKey(t),
		other:   harness.NewKey(t),
	}
	ctrd.HostsTOML(p.reg.Host, p.reg.URL, "")
	p.auth = p.reg.DockerConfig(t, p.dir)
	p.keyFile = filepath.Join(p.dir, "release.pub")
	if err := os.WriteFile(p.keyFile, p.release.PublicPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// config is pullgate's configuration with the given policies (YAML list items, indented as
// top-level entries) and defaultAction.
func (p *policyEnv) config(defaultAction, policies string) string {
	return fmt.Sprintf(`apiVersion: pullgate.io/v1alpha1
kind: PullgateConfig
runtimeEndpoint: %s
registryConfigPath: %s
stateDir: %s
metricsAddress: 127.0.0.1:0
auth:
  files: [%s]
defaultAction: %s
policies:
%s`, p.ctrd.Endpoint, p.ctrd.CertsDir, p.dir, p.auth, defaultAction, policies)
}

// keyRule is a rule trusting the release key, for images under repo on the test registry.
func (p *policyEnv) keyRule(name, repo, mode, extra string) string {
	return fmt.Sprintf(`- name: %s
  images: ["%s/%s/**"]
  mode: %s
  authorities:
  - name: release
    key: {file: %s}
    ignoreTransparencyLog: true
%s`, name, p.reg.Host, repo, mode, p.keyFile, extra)
}

// start runs pullgate with config in front of the env's containerd.
func (p *policyEnv) start(t *testing.T, config string) *env {
	t.Helper()
	e := &env{ctrd: p.ctrd, node: p.reg}
	e.gate = harness.StartPullgate(t, harness.PullgateBinary(t), config)
	e.images = imageService(t, e.gate.Endpoint)
	e.direct = imageService(t, p.ctrd.Endpoint)
	return e
}

// push pushes a random image as repo:tag, signed by key unless key is nil.
func (p *policyEnv) push(t *testing.T, repo, tag string, key *harness.Key) (v1.Image, v1.Hash) {
	t.Helper()
	img := p.reg.PushRandomImage(t, repo, tag)
	d := manifestDigest(t, img)
	if key != nil {
		p.reg.Sign(t, key, repo, d)
	}
	return img, d
}

// A signed image pulled by tag is verified once, pulled by digest, tagged, logged and counted;
// the next pull of it is a cache hit.
func (p *policyEnv) testSignedPullByTag(t *testing.T) {
	e := p.start(t, p.config("deny", p.keyRule("signed-apps", "apps", "enforce", "")))
	img, dgst := p.push(t, "apps/signed", "v1", p.release)
	ref := p.reg.Host + "/apps/signed:v1"
	p.reg.Reset()

	imageRef, err := e.pull(t, ref, nil, "default")
	if err != nil {
		t.Fatalf("PullImage(%s), signed by the policy's key: %v", ref, err)
	}
	if want := configDigest(t, img); imageRef != want {
		t.Errorf("image_ref = %s, want %s", imageRef, want)
	}
	// The signature was read from the registry with the node's credentials.
	reqs := p.reg.Requests()
	sigTag := "apps/signed:" + strings.Replace(dgst.String(), ":", "-", 1) + ".sig"
	if reqs.ManifestGET[sigTag]+reqs.ManifestHEAD[sigTag] == 0 {
		t.Errorf("the registry was never asked for the signature %s: %+v", sigTag, reqs)
	}
	checkTagged(t, e, ref, imageRef)
	line := e.gate.WaitLog("pull allowed", func(l map[string]any) bool { return l["image"] == ref })
	if line["rule"] != "signed-apps" || line["verdict"] != "allowed" || line["digest"] != dgst.String() || line["cached"] != false {
		t.Errorf("decision line = %v, want rule signed-apps, verdict allowed, digest %s, not cached", line, dgst)
	}
	m := metrics(t, e)
	if n := m.value(t, `pullgate_pull_decisions_total{rule="signed-apps",verdict="allowed"}`); n != 1 {
		t.Errorf("allowed decisions by signed-apps = %v, want 1", n)
	}
	if n := m.value(t, "pullgate_verification_duration_seconds_count"); n < 1 {
		t.Errorf("pullgate_verification_duration_seconds_count = %v, want >= 1", n)
	}
	hits := m.value(t, "pullgate_cache_hits_total")

	if _, err := e.pull(t, ref, nil, "default"); err != nil {
		t.Fatalf("second PullImage(%s): %v", ref, err)
	}
	m = metrics(t, e)
	if n := m.value(t, "pullgate_cache_hits_total"); n != hits+1 {
		t.Errorf("pullgate_cache_hits_total = %v after a second pull, want %v", n, hits+1)
	}
	if n := m.value(t, `pullgate_pull_decisions_total{rule="signed-apps",verdict="allowed"}`); n != 2 {
		t.Errorf("allowed decisions by signed-apps = %v after two pulls, want 2", n)
	}
	e.gate.WaitLog("pull allowed", func(l map[string]any) bool { return l["image"] == ref && l["cached"] == true })
	if lines := e.gate.LogLines("pull allowed"); len(lines) != 2 {
		t.Errorf("decision lines = %v, want two", lines)
	}
}

// An unsigned image is denied with kubelet's prefix, naming what was looked for, and containerd
// never hears of it.
func (p *policyEnv) testUnsignedDenied(t *testing.T) {
	e := p.start(t, p.config("allow", p.keyRule("signed-apps", "apps", "enforce", "")))
	img, dgst := p.push(t, "apps/unsigned", "v1", nil)
	ref := p.reg.Host + "/apps/unsigned:v1"
	pinned := p.reg.Host + "/apps/unsigned@" + dgst.String()
	p.reg.Reset()

	_, err := e.pull(t, ref, nil, "default")
	p.wantDenied(t, err, pinned, "signed-apps", "release: no cosign signature found")
	p.wantNeverPulled(t, e, "apps/unsigned", img)
	if n := p.reg.Requests().BlobGET; n != 0 {
		t.Errorf("the registry served %d blob(s) for a denied image without signatures", n)
	}
	if got := e.status(t, e.direct, ref); got != nil {
		t.Errorf("containerd has %s after a denied pull: %v", ref, got)
	}
	line := e.gate.WaitLog("pull denied", func(l map[string]any) bool { return l["image"] == ref })
	if line["rule"] != "signed-apps" || line["verdict"] != "denied" || !strings.Contains(fmt.Sprint(line["reason"]), "release") {
		t.Errorf("decision line = %v, want rule signed-apps, verdict denied, a reason naming release", line)
	}
	if n := metrics(t, e).value(t, `pullgate_pull_decisions_total{rule="signed-apps",verdict="denied"}`); n != 1 {
		t.Errorf("denied decisions by signed-apps = %v, want 1", n)
	}

	// Signed by a key the policy does not trust is no better.
	img, dgst = p.push(t, "apps/other-key", "v1", p.other)
	p.reg.Reset()
	_, err = e.pull(t, p.reg.Host+"/apps/other-key:v1", nil, "default")
	p.wantDenied(t, err, p.reg.Host+"/apps/other-key@"+dgst.String(), "signed-apps", "release: none of 1 signature(s) verified")
	p.wantNeverPulled(t, e, "apps/other-key", img)
}

// Warn mode verifies, lets the unsigned image through, and says so in the log and metrics.
// What a review found allowed, each now denied through pullgate: an enforce rule for "**" under
// defaultAction: allow, a bound (maxSignatures), and a bare message-signature bundle by the
// rule's key over the manifest, beside a real cosign v3 bundle signature, which is allowed.
func (p *policyEnv) testFailsClosed(t *testing.T) {
	bundleKey := harness.NewBundleKey(t)
	bundleKeyFile := filepath.Join(p.dir, "bundle.pub")
	if err := os.WriteFile(bundleKeyFile, bundleKey.PublicPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	e := p.start(t, p.config("allow", fmt.Sprintf(`- name: bundles
  images: ["%[1]s/closed/bundle-*"]
  mode: enforce
  authorities:
  - {name: ci, key: {file: %[2]s}, ignoreTransparencyLog: true}
- name: everything
  images: ["**"]
  mode: enforce
  authorities:
  - {name: release, key: {file: %[3]s}, ignoreTransparencyLog: true}
verification:
  maxSignatures: 1
`, p.reg.Host, bundleKeyFile, p.keyFile)))

	_, unsigned := p.push(t, "closed/unsigned", "v1", nil)
	_, twice := p.push(t, "closed/twice", "v1", p.release)
	p.reg.Sign(t, p.release, "closed/twice", twice)
	_, blob := p.push(t, "closed/bundle-blob", "v1", nil)
	p.reg.SignBlobBundle(t, bundleKey, "closed/bundle-blob", blob)
	_, statement := p.push(t, "closed/bundle-statement", "v1", nil)
	p.reg.SignBundle(t, bundleKey, "closed/bundle-statement", statement)

	for _, tc := range []struct {
		repo   string
		digest v1.Hash
		rule   string
		want   string
	}{
		{"closed/unsigned", unsigned, "everything", "no cosign signature found"},
		{"closed/twice", twice, "everything", "2 signatures stored for the image, more than the 1 allowed"},
		{"closed/bundle-blob", blob, "bundles", "message signature over the manifest is not an image signature"},
	} {
		_, err := e.pull(t, p.reg.Host+"/"+tc.repo+":v1", nil, "default")
		wantCode(t, err, codes.Unknown, fmt.Sprintf("SignatureValidationFailed: pullgate: %s/%s@%s denied by policy %q: ", p.reg.Host, tc.repo, tc.digest, tc.rule))
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("pull of %s: %v; want it to say %q", tc.repo, err, tc.want)
		}
	}
	if _, err := e.pull(t, p.reg.Host+"/closed/bundle-statement:v1", nil, "default"); err != nil {
		t.Errorf("pull of an image cosign v3 signed: %v", err)
	}
}

func (p *policyEnv) testWarnMode(t *testing.T) {
	e := p.start(t, p.config("deny", p.keyRule("observe", "warn", "warn", "")))
	img, dgst := p.push(t, "warn/unsigned", "v1", nil)
	ref := p.reg.Host + "/warn/unsigned:v1"

	imageRef, err := e.pull(t, ref, nil, "default")
	if err != nil {
		t.Fatalf("PullImage(%s) under a warn rule: %v", ref, err)
	}
	if want := configDigest(t, img); imageRef != want {
		t.Errorf("image_ref = %s, want %s", imageRef, want)
	}
	checkTagged(t, e, ref, imageRef)
	line := e.gate.WaitLog("pull allowed with warning", func(l map[string]any) bool { return l["image"] == ref })
	if line["rule"] != "observe" || line["verdict"] != "warned" || line["digest"] != dgst.String() || !strings.Contains(fmt.Sprint(line["reason"]), "release: no cosign signature found") {
		t.Errorf("decision line = %v, want rule observe, verdict warned and the reason", line)
	}
	m := metrics(t, e)
	if n := m.value(t, `pullgate_pull_decisions_total{rule="observe",verdict="warned"}`); n != 1 {
		t.Errorf("warned decisions by observe = %v, want 1", n)
	}
	if n := m.value(t, `pullgate_pull_decisions_total{rule="observe",verdict="allowed"}`); n != 0 {
		t.Errorf("allowed decisions by observe = %v, want 0: the pull had no valid signature", n)
	}
}

// A tag moved to an unsigned digest after a signed pull: the next pull is denied, and the tag
// record still points at the signed image.
func (p *policyEnv) testTagMovedToUnsigned(t *testing.T) {
	e := p.start(t, p.config("deny", p.keyRule("signed-apps", "apps", "enforce", "")))
	ref := p.reg.Host + "/apps/moving:stable"
	signed, _ := p.push(t, "apps/moving", "stable", p.release)
	imageRef, err := e.pull(t, ref, nil, "default")
	if err != nil {
		t.Fatalf("PullImage(%s) while signed: %v", ref, err)
	}
	checkTagged(t, e, ref, configDigest(t, signed))
	movedImg, moved := p.push(t, "apps/moving", "stable", nil)
	p.reg.Reset()

	_, err = e.pull(t, ref, nil, "default")
	p.wantDenied(t, err, p.reg.Host+"/apps/moving@"+moved.String(), "signed-apps", "release: no cosign signature found")
	p.wantNeverPulled(t, e, "apps/moving", movedImg)
	// The record was visible before the denied pull; nothing may have moved it since.
	if got := e.status(t, e.images, ref); got == nil || got.Id != imageRef || !slices.Contains(got.RepoTags, ref) {
		t.Fatalf("ImageStatus(%s) after the denial = %v, want the signed image %s", ref, got, imageRef)
	}
}

// The tag moves to an unsigned image while pullgate checks the signed one: containerd pulls the
// digest that was verified, never what the tag points to by then.
func (p *policyEnv) testTagMovedWhileChecking(t *testing.T) {
	e := p.start(t, p.config("deny", p.keyRule("signed-apps", "apps", "enforce", "")))
	ref := p.reg.Host + "/apps/racing:stable"
	signed, _ := p.push(t, "apps/racing", "stable", p.release)
	unsigned := p.reg.PushRandomImage(t, "apps/racing", "next")
	p.reg.Tag(t, "apps/racing", "stable", manifestDigest(t, signed))
	unsignedDigest := manifestDigest(t, unsigned)
	var moved atomic.Bool
	p.reg.OnServe(func(req *http.Request) {
		// The signature is read after the tag was resolved and before containerd is asked.
		if strings.HasSuffix(req.URL.Path, ".sig") && moved.CompareAndSwap(false, true) {
			p.reg.Tag(handlerT{t}, "apps/racing", "stable", unsignedDigest)
		}
	})
	t.Cleanup(func() { p.reg.OnServe(nil) })
	p.reg.Reset()

	imageRef, err := e.pull(t, ref, nil, "default")
	if err != nil {
		t.Fatalf("PullImage(%s): %v", ref, err)
	}
	if !moved.Load() {
		t.Fatal("the signature was never fetched, so the tag was never moved")
	}
	if want := configDigest(t, signed); imageRef != want {
		t.Errorf("image_ref = %s, want the verified image %s", imageRef, want)
	}
	p.wantNeverPulled(t, e, "apps/racing", unsigned)
	checkTagged(t, e, ref, configDigest(t, signed))
}

// handlerT is a T for harness calls made from a registry handler, off the test's goroutine,
// where FailNow must not be called: a fatal failure is reported and ends the request.
type handlerT struct{ *testing.T }

func (h handlerT) Fatal(args ...any) {
	h.Error(args...)
	panic(http.ErrAbortHandler)
}

func (h handlerT) Fatalf(format string, args ...any) {
	h.Errorf(format, args...)
	panic(http.ErrAbortHandler)
}

// A rule scoped to prod-* namespaces applies to prod-eu only; dev and crictl (no sandbox
// config) fall through to the next rule.
func (p *policyEnv) testNamespaceScoped(t *testing.T) {
	policies := p.keyRule("prod", "scoped", "enforce", `  namespaces: ["prod-*"]
`) + p.keyRule("elsewhere", "scoped", "warn", "")
	e := p.start(t, p.config("deny", policies))
	img, dgst := p.push(t, "scoped/app", "v1", nil)
	ref := p.reg.Host + "/scoped/app:v1"
	p.reg.Reset()

	_, err := e.pull(t, ref, nil, "prod-eu")
	p.wantDenied(t, err, p.reg.Host+"/scoped/app@"+dgst.String(), "prod", "release: no cosign signature found")
	p.wantNeverPulled(t, e, "scoped/app", img)

	for _, ns := range []string{"dev", ""} {
		if _, err := e.pull(t, ref, nil, ns); err != nil {
			t.Fatalf("PullImage(%s) from namespace %q: %v, want the warn rule to let it through", ref, ns, err)
		}
		line := e.gate.WaitLog("pull allowed with warning", func(l map[string]any) bool { return l["namespace"] == ns })
		if line["rule"] != "elsewhere" || line["verdict"] != "warned" {
			t.Errorf("decision for namespace %q = %v, want rule elsewhere, verdict warned", ns, line)
		}
	}
	m := metrics(t, e)
	if n := m.value(t, `pullgate_pull_decisions_total{rule="prod",verdict="denied"}`); n != 1 {
		t.Errorf("denied decisions by prod = %v, want 1", n)
	}
	if n := m.value(t, `pullgate_pull_decisions_total{rule="elsewhere",verdict="warned"}`); n != 2 {
		t.Errorf("warned decisions by elsewhere = %v, want 2 (dev and no namespace)", n)
	}
}

// An attestation rule with a CEL condition over a vulnerability scan: every image is signed,
// only the one whose scan found no CRITICAL finding passes.
func (p *policyEnv) testAttestation(t *testing.T) {
	rule := p.keyRule("scanned", "scanned", "enforce", `  attestations:
  - name: no-critical
    predicateType: `+vulnPredicate+`
    condition: 'predicate.scanner.result.summary.CRITICAL == 0'
`)
	e := p.start(t, p.config("deny", rule))
	scan := func(critical int) map[string]any {
		return map[string]any{
			"invocation": map[string]any{"uri": "https://ci.example.com/scan/1"},
			"scanner": map[string]any{
				"uri": "pkg:github/aquasecurity/trivy@0.50.0", "version": "0.50.0",
				"result": map[string]any{"summary": map[string]any{"CRITICAL": critical, "HIGH": 3}},
			},
			"metadata": map[string]any{"scanStartedOn": "2025-01-01T00:00:00Z", "scanFinishedOn": "2025-01-01T00:01:00Z"},
		}
	}
	clean, cleanDigest := p.push(t, "scanned/clean", "v1", p.release)
	p.reg.Attest(t, p.release, "scanned/clean", cleanDigest, vulnPredicate, scan(0))
	vuln, vulnDigest := p.push(t, "scanned/vulnerable", "v1", p.release)
	p.reg.Attest(t, p.release, "scanned/vulnerable", vulnDigest, vulnPredicate, scan(2))
	bare, _ := p.push(t, "scanned/unscanned", "v1", p.release)
	forged, forgedDigest := p.push(t, "scanned/forged", "v1", p.release)
	p.reg.Attest(t, p.other, "scanned/forged", forgedDigest, vulnPredicate, scan(0))

	imageRef, err := e.pull(t, p.reg.Host+"/scanned/clean:v1", nil, "default")
	if err != nil {
		t.Fatalf("PullImage of the image whose scan has no CRITICAL: %v", err)
	}
	if want := configDigest(t, clean); imageRef != want {
		t.Errorf("image_ref = %s, want %s", imageRef, want)
	}
	p.reg.Reset()
	for _, tc := range []struct {
		repo   string
		img    v1.Image
		reason string
	}{
		{"scanned/vulnerable", vuln, "attestation no-critical: want predicate type " + vulnPredicate + " with its condition true, found: condition is false"},
		{"scanned/unscanned", bare, "attestation no-critical: no attestation found"},
		{"scanned/forged", forged, "attestation no-critical: none of 1 attestation(s) is signed by the rule's authorities"},
	} {
		_, err := e.pull(t, p.reg.Host+"/"+tc.repo+":v1", nil, "default")
		p.wantDenied(t, err, p.reg.Host+"/"+tc.repo+"@"+manifestDigest(t, tc.img).String(), "scanned", tc.reason)
		p.wantNeverPulled(t, e, tc.repo, tc.img)
	}
}

// SIGHUP with the rule switched from warn to enforce applies to the very next pull, although the
// warned decision for the same digest is still fresh.
func (p *policyEnv) testReloadWarnToEnforce(t *testing.T) {
	e := p.start(t, p.config("deny", p.keyRule("gate", "reload", "warn", "")))
	_, dgst := p.push(t, "reload/app", "v1", nil)
	ref := p.reg.Host + "/reload/app:v1"
	if _, err := e.pull(t, ref, nil, "default"); err != nil {
		t.Fatalf("PullImage(%s) under warn: %v", ref, err)
	}
	if err := os.WriteFile(e.gate.ConfigPath, []byte(p.config("deny", p.keyRule("gate", "reload", "enforce", ""))), 0o600); err != nil {
		t.Fatal(err)
	}
	e.gate.Signal(syscall.SIGHUP)
	e.gate.WaitLog("configuration reloaded", nil)

	_, err := e.pull(t, ref, nil, "default")
	p.wantDenied(t, err, p.reg.Host+"/reload/app@"+dgst.String(), "gate", "release: no cosign signature found")
	if n := metrics(t, e).value(t, `pullgate_pull_decisions_total{rule="gate",verdict="denied"}`); n != 1 {
		t.Errorf("denied decisions by gate after the reload = %v, want 1", n)
	}
}

// checkTagged checks that kubelet's ImageStatus(ref), asked right after the pull returned, finds
// image id tagged ref: pullgate returns only once containerd's CRI shows the record.
func checkTagged(t *testing.T, e *env, ref, id string) {
	t.Helper()
	got := e.status(t, e.images, ref)
	if got == nil || got.Id != id || !slices.Contains(got.RepoTags, ref) {
		t.Fatalf("ImageStatus(%s) right after the pull = %v, want id %s tagged %s", ref, got, id, ref)
	}
}

// wantDenied checks the denial kubelet sees: code Unknown, its reason prefix, the pinned image,
// the rule, and reason (an authority's or attestation's finding).
func (p *policyEnv) wantDenied(t *testing.T, err error, pinned, rule, reason string) {
	t.Helper()
	wantCode(t, err, codes.Unknown, "SignatureValidationFailed: pullgate: ")
	want := fmt.Sprintf("SignatureValidationFailed: pullgate: %s denied by policy %q: ", pinned, rule)
	if msg := statusMessage(err); !strings.HasPrefix(msg, want) || !strings.Contains(msg, reason) {
		t.Errorf("denial = %q\nwant prefix %q and %q", msg, want, reason)
	}
}

// wantNeverPulled checks that containerd did not get repo@digest of img: it has no image record
// for it, and since the last Reset the registry served no manifest by that digest and none of
// the image's blobs (the verifier fetching the blobs of signatures and attestations is fine).
func (p *policyEnv) wantNeverPulled(t *testing.T, e *env, repo string, img v1.Image) {
	t.Helper()
	pinned := repo + "@" + manifestDigest(t, img).String()
	reqs := p.reg.Requests()
	if n := reqs.ManifestGET[pinned] + reqs.ManifestHEAD[pinned]; n != 0 {
		t.Errorf("the registry served %d manifest request(s) for %s after a denial", n, pinned)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	blobs := []string{configDigest(t, img)}
	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			t.Fatal(err)
		}
		blobs = append(blobs, d.String())
	}
	for _, b := range blobs {
		if n := reqs.BlobGETs[repo+"@"+b]; n != 0 {
			t.Errorf("the registry served blob %s of denied %s %d time(s)", b, pinned, n)
		}
	}
	if got := e.status(t, e.direct, p.reg.Host+"/"+pinned); got != nil {
		t.Errorf("containerd has %s after a denial: %v", pinned, got)
	}
}

func statusMessage(err error) string {
	st, _ := status.FromError(err)
	return st.Message()
}

// pullgate verify runs the policy without a runtime: exit 0 allowed, 1 denied, 2 undecided.
func TestPolicyVerifyCommand(t *testing.T) {
	t.Parallel()
	bin := harness.PullgateBinary(t)
	reg := harness.StartRegistry(t, harness.WithUser("ci", "ci-secret-Hn2"))
	dir := t.TempDir()
	certs := filepath.Join(dir, "certs.d", reg.Host)
	if err := os.MkdirAll(certs, 0o755); err != nil {
		t.Fatal(err)
	}
	hostsTOML := fmt.Sprintf("server = %q\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", reg.URL, reg.URL)
	if err := os.WriteFile(filepath.Join(certs, "hosts.toml"), []byte(hostsTOML), 0o644); err != nil {
		t.Fatal(err)
	}
	authFile := reg.DockerConfig(t, dir)
	key := harness.NewKey(t)
	keyFile := filepath.Join(dir, "release.pub")
	if err := os.WriteFile(keyFile, key.PublicPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	config := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(config, fmt.Appendf(nil, `apiVersion: pullgate.io/v1alpha1
kind: PullgateConfig
registryConfigPath: %s
auth:
  files: [%s]
defaultAction: deny
policies:
- name: release-only
  images: ["%s/apps/**", "127.0.0.1:1/**"]
  mode: enforce
  authorities:
  - name: release
    key: {file: %s}
    ignoreTransparencyLog: true
`, filepath.Join(dir, "certs.d"), authFile, reg.Host, keyFile), 0o600); err != nil {
		t.Fatal(err)
	}
	signed := manifestDigest(t, reg.PushRandomImage(t, "apps/signed", "v1"))
	reg.Sign(t, key, "apps/signed", signed)
	unsigned := manifestDigest(t, reg.PushRandomImage(t, "apps/unsigned", "v1"))

	tests := []struct {
		name     string
		image    string
		wantCode int
		want     []string
		// wantErr is on stderr, where pullgate verify explains why it could not decide.
		wantErr string
	}{
		{name: "signed", image: reg.Host + "/apps/signed:v1", wantCode: 0, want: []string{
			"decision: allowed\n", "rule:     release-only", "digest:   " + signed.String(), "authority release: verified",
		}},
		{name: "signed, by digest, with the node's credentials", image: reg.Host + "/apps/signed@" + signed.String(), wantCode: 0, want: []string{
			"decision: allowed\n", "authority release: verified",
		}},
		{name: "unsigned", image: reg.Host + "/apps/unsigned:v1", wantCode: 1, want: []string{
			"decision: denied\n", "rule:     release-only", "digest:   " + unsigned.String(), "authority release: no cosign signature found for " + unsigned.String(),
		}},
		{name: "registry unreachable", image: "127.0.0.1:1/apps/app:v1", wantCode: 2, wantErr: "127.0.0.1:1"},
		// No rule matches: denied by the name alone, the unreachable registry never asked.
		{name: "no rule matches", image: "127.0.0.2:1/other/app:v1", wantCode: 1, want: []string{
			"decision: denied\n", "rule:     defaultAction", "digest:   (not resolved", "reason:   no policy matches (defaultAction: deny)",
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cmd := exec.Command(bin, "verify", "--config", config, tc.image)
			var stdout, stderr strings.Builder
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			code := 0
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != tc.wantCode {
				t.Errorf("exit code %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tc.wantCode, stdout.String(), stderr.String())
			}
			for _, w := range tc.want {
				if !strings.Contains(stdout.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, stdout.String())
				}
			}
			if !strings.Contains(stderr.String(), tc.wantErr) {
				t.Errorf("stderr lacks %q:\n%s", tc.wantErr, stderr.String())
			}
		})
	}
}

// metricsText is a /metrics page.
type metricsText string

func metrics(t *testing.T, e *env) metricsText {
	t.Helper()
	return metricsText(httpBody(t, e.gate.MetricsURL+"/metrics"))
}

// value returns the sample of series (name with its labels as Prometheus prints them, sorted),
// or 0 when it is absent, as for a counter not yet incremented.
func (m metricsText) value(t *testing.T, series string) float64 {
	t.Helper()
	for _, line := range strings.Split(string(m), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("metric %s: %v", series, err)
			}
			return f
		}
	}
	return 0
}
