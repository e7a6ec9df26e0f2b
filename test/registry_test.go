package test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/pullgate/pullgate/test/harness"
)

// internalEnv is one containerd, and for each test a registry on 127.0.0.1 with pullgate in front
// of the containerd, enforcing a key signature on the registry's images.
type internalEnv struct {
	ctrd *harness.Containerd
	key  *harness.Key
	dir  string
}

const internalUser, internalPassword = "kubelet", "kubelet-secret-In4"

// TestInternalRegistries: registries on internal addresses whose token service and blob store
// live on other internal addresses are verified and pulled; token realms and redirects to
// link-local (cloud metadata) addresses are refused before anything is dialled.
func TestInternalRegistries(t *testing.T) {
	for version, bin := range harness.ContainerdBinaries(t) {
		t.Run("containerd-"+version, func(t *testing.T) {
			t.Parallel()
			e := &internalEnv{ctrd: harness.StartContainerd(t, bin), key: harness.NewKey(t), dir: t.TempDir()}
			t.Run("RealmAndBlobsOnAnotherLoopbackAddress", e.testRealmAndBlobsElsewhere)
			t.Run("LinkLocalRealmRefused", e.testLinkLocalRealm)
			t.Run("LinkLocalRedirectRefused", e.testLinkLocalRedirect)
		})
	}
}

// start starts reg's pullgate, with a rule that enforces the env's key on reg's apps/**.
func (e *internalEnv) start(t *testing.T, reg *harness.Registry) *env {
	t.Helper()
	e.ctrd.HostsTOML(reg.Host, reg.URL, "")
	keyFile := filepath.Join(t.TempDir(), "release.pub")
	if err := os.WriteFile(keyFile, e.key.PublicPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	config := fmt.Sprintf(`apiVersion: pullgate.io/v1alpha1
kind: PullgateConfig
runtimeEndpoint: %s
registryConfigPath: %s
stateDir: %s
metricsAddress: 127.0.0.1:0
defaultAction: deny
policies:
- name: internal
  images: ["%s/apps/**"]
  mode: enforce
  authorities:
  - name: release
    key: {file: %s}
    ignoreTransparencyLog: true
`, e.ctrd.Endpoint, e.ctrd.CertsDir, t.TempDir(), reg.Host, keyFile)
	g := &env{ctrd: e.ctrd, node: reg}
	g.gate = harness.StartPullgate(t, harness.PullgateBinary(t), config)
	g.images = imageService(t, g.gate.Endpoint)
	g.direct = imageService(t, e.ctrd.Endpoint)
	return g
}

func kubeletAuth() *runtimeapi.AuthConfig {
	return &runtimeapi.AuthConfig{Username: internalUser, Password: internalPassword}
}

// A registry on 127.0.0.1 that delegates authentication to a token service on 127.0.0.2 and
// serves its blobs from a store on 127.0.0.2: pullgate verifies the signature and containerd
// pulls the digest. The token service got the credentials, the store none; warm pulls reuse
// the token.
func (e *internalEnv) testRealmAndBlobsElsewhere(t *testing.T) {
	reg := harness.StartRegistry(t, harness.WithUser(internalUser, internalPassword), harness.WithTokenAuth(),
		harness.WithTokenRealm("127.0.0.2"), harness.WithBlobRedirect("127.0.0.2"))
	g := e.start(t, reg)
	img := reg.PushRandomImage(t, "apps/internal", "v1")
	reg.Sign(t, e.key, "apps/internal", manifestDigest(t, img))
	reg.Reset()
	ref := reg.Host + "/apps/internal:v1"

	imageRef, err := g.pull(t, ref, kubeletAuth(), "default")
	if err != nil {
		t.Fatalf("PullImage(%s): %v", ref, err)
	}
	if want := configDigest(t, img); imageRef != want {
		t.Errorf("image_ref = %s, want %s", imageRef, want)
	}
	checkTagged(t, g, ref, imageRef)
	cold := reg.Requests()
	t.Logf("cold pull: tokens issued %v, blob store GETs %v", cold.TokensBy, cold.StoreGETs)
	if cold.TokensBy["pullgate"] == 0 {
		t.Errorf("the token service on 127.0.0.2 issued pullgate no token: %+v", cold)
	}
	if cold.StoreGETs["pullgate"] == 0 {
		t.Errorf("pullgate never fetched the signature from the blob store on 127.0.0.2: %+v", cold)
	}
	if cold.StoreGETs["containerd"] == 0 {
		t.Errorf("containerd never fetched the layers from the blob store on 127.0.0.2: %+v", cold)
	}
	if cold.StoreCredentials != 0 {
		t.Errorf("the blob store got credentials with %d requests", cold.StoreCredentials)
	}

	// Warm pulls ask the registry for the tag, with the token they already have.
	const warm = 20
	for i := range warm {
		if _, err := g.pull(t, ref, kubeletAuth(), "default"); err != nil {
			t.Fatalf("warm pull %d: %v", i, err)
		}
	}
	after := reg.Requests()
	tokens := after.TokensBy["pullgate"] - cold.TokensBy["pullgate"]
	t.Logf("%d warm pulls: pullgate asked the token service %d more times (%d in all, cold pull included); manifest HEADs by tag %d",
		warm, tokens, after.TokensBy["pullgate"], after.ManifestHEAD["apps/internal:v1"]-cold.ManifestHEAD["apps/internal:v1"])
	if tokens != 0 {
		t.Errorf("%d warm pulls asked the token service %d times, want the token reused", warm, tokens)
	}
	if n := after.ManifestHEAD["apps/internal:v1"] - cold.ManifestHEAD["apps/internal:v1"]; n != warm {
		t.Errorf("%d warm pulls made %d manifest HEADs by tag, want one each", warm, n)
	}
	if after.StoreCredentials != 0 {
		t.Errorf("the blob store got credentials with %d requests", after.StoreCredentials)
	}
}

// wantPullRefused checks that a pull was refused with the message naming the refusal, as a
// definite answer (not RegistryUnavailable), fast, and that containerd never got the image.
func wantPullRefused(t *testing.T, g *env, ref string, err error, refusal string) {
	t.Helper()
	// The registry sends pullgate where it may not go: a denial, not an outage.
	wantCode(t, err, codes.Unknown, "SignatureValidationFailed: pullgate: ")
	msg := statusMessage(err)
	if !strings.Contains(msg, refusal) {
		t.Errorf("PullImage(%s) = %q, want it to say %q", ref, msg, refusal)
	}
	if strings.Contains(msg, "dial tcp") {
		t.Errorf("PullImage(%s) = %q: a refusal is made before any dial", ref, msg)
	}
	if got := g.status(t, g.direct, ref); got != nil {
		t.Errorf("containerd has %s after a refused pull: %v", ref, got)
	}
}

// A registry whose token realm is on a link-local address: pullgate refuses it and never sends
// the credentials anywhere; containerd is never asked.
func (e *internalEnv) testLinkLocalRealm(t *testing.T) {
	reg := harness.StartRegistry(t, harness.WithUser(internalUser, internalPassword), harness.WithTokenAuth(), harness.WithTokenRealm("169.254.0.1"))
	g := e.start(t, reg)
	img := reg.PushRandomImage(t, "apps/realm", "v1")
	reg.Sign(t, e.key, "apps/realm", manifestDigest(t, img))
	reg.Reset()
	ref := reg.Host + "/apps/realm:v1"

	_, err := g.pull(t, ref, kubeletAuth(), "default")
	wantPullRefused(t, g, ref, err, fmt.Sprintf("refusing token realm from %s to 169.254.0.1: link-local/metadata address", reg.Host))
	if reqs := reg.Requests(); reqs.Tokens != 0 || reqs.ManifestGET["apps/realm@"+manifestDigest(t, img).String()] != 0 {
		t.Errorf("after a refused realm the registry saw %+v", reqs)
	}
}

// A registry that redirects its blobs to a link-local address: the signature cannot be fetched
// there, so the pull is refused, and containerd is never asked.
func (e *internalEnv) testLinkLocalRedirect(t *testing.T) {
	reg := harness.StartRegistry(t, harness.WithUser(internalUser, internalPassword), harness.WithTokenAuth(), harness.WithBlobRedirect("169.254.0.2"))
	g := e.start(t, reg)
	img := reg.PushRandomImage(t, "apps/redirect", "v1")
	reg.Sign(t, e.key, "apps/redirect", manifestDigest(t, img))
	reg.Reset()
	ref := reg.Host + "/apps/redirect:v1"

	_, err := g.pull(t, ref, kubeletAuth(), "default")
	wantPullRefused(t, g, ref, err, fmt.Sprintf("refusing redirect from %s to 169.254.0.2: link-local/metadata address", reg.Host))
	if reqs := reg.Requests(); reqs.BlobGET == 0 {
		t.Errorf("the registry was never asked for the signature's blob: %+v", reqs)
	}
}
