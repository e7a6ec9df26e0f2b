// Package test holds pullgate's end-to-end tests: the real pullgate binary in front of a real
// containerd (Debian's 1.6 and 2.x), registries with real authentication on loopback, and
// kubelet's own CRI client as the caller.
package test

import (
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	internalapi "k8s.io/cri-api/pkg/apis"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	remoteclient "k8s.io/cri-client/pkg"

	"github.com/pullgate/pullgate/test/harness"
)

const callTimeout = 60 * time.Second

// env is one containerd, two registries and pullgate in front of the containerd.
type env struct {
	ctrd *harness.Containerd
	// node is a basic-auth registry whose credentials are in the node's config.json.
	node *harness.Registry
	// kube is a token-auth registry whose credentials only kubelet has.
	kube   *harness.Registry
	gate   *harness.Pullgate
	images internalapi.ImageManagerService // through pullgate
	direct internalapi.ImageManagerService // straight to containerd
	config func(defaultAction string) string
}

func newEnv(t *testing.T, bin string) *env {
	e := &env{
		ctrd: harness.StartContainerd(t, bin),
		node: harness.StartRegistry(t, harness.WithUser("node", "node-secret-Zq1")),
		kube: harness.StartRegistry(t, harness.WithUser("kubelet", "kubelet-secret-Xy7"), harness.WithTokenAuth()),
	}
	for _, r := range []*harness.Registry{e.node, e.kube} {
		e.ctrd.HostsTOML(r.Host, r.URL, "")
	}
	dir := t.TempDir()
	dockerConfig := e.node.DockerConfig(t, dir)
	e.config = func(defaultAction string) string {
		return fmt.Sprintf(`apiVersion: pullgate.io/v1alpha1
kind: PullgateConfig
runtimeEndpoint: %s
registryConfigPath: %s
stateDir: %s
metricsAddress: 127.0.0.1:0
shutdownGracePeriod: 20s
auth:
  files: [%s]
defaultAction: %s
`, e.ctrd.Endpoint, e.ctrd.CertsDir, dir, dockerConfig, defaultAction)
	}
	e.gate = harness.StartPullgate(t, harness.PullgateBinary(t), e.config("allow"))
	e.images = imageService(t, e.gate.Endpoint)
	e.direct = imageService(t, e.ctrd.Endpoint)
	return e
}

func imageService(t *testing.T, endpoint string) internalapi.ImageManagerService {
	t.Helper()
	s, err := remoteclient.NewRemoteImageService(t.Context(), endpoint, callTimeout, noop.NewTracerProvider(), false)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func configDigest(t *testing.T, img v1.Image) string {
	t.Helper()
	h, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	return h.String()
}

func manifestDigest(t *testing.T, img v1.Image) v1.Hash {
	t.Helper()
	h, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// pull is kubelet's PullImage through pullgate.
func (e *env) pull(t *testing.T, ref string, auth *runtimeapi.AuthConfig, ns string) (string, error) {
	t.Helper()
	var sandbox *runtimeapi.PodSandboxConfig
	if ns != "" {
		sandbox = &runtimeapi.PodSandboxConfig{Metadata: &runtimeapi.PodSandboxMetadata{Name: "web-0", Namespace: ns, Uid: "uid-1"}}
	}
	return e.images.PullImage(t.Context(), &runtimeapi.ImageSpec{Image: ref}, auth, sandbox)
}

func (e *env) status(t *testing.T, s internalapi.ImageManagerService, ref string) *runtimeapi.Image {
	t.Helper()
	resp, err := s.ImageStatus(t.Context(), &runtimeapi.ImageSpec{Image: ref}, false)
	if err != nil {
		t.Fatalf("ImageStatus(%s): %v", ref, err)
	}
	return resp.GetImage()
}

func wantCode(t *testing.T, err error, code codes.Code, prefix string) {
	t.Helper()
	st, _ := status.FromError(err)
	if err == nil || st.Code() != code || !strings.HasPrefix(st.Message(), prefix) {
		t.Fatalf("got %v, want code %s with message prefix %q", err, code, prefix)
	}
}

func TestEndToEnd(t *testing.T) {
	for version, bin := range harness.ContainerdBinaries(t) {
		t.Run("containerd-"+version, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, bin)
			t.Run("NodeCredentialsPinnedPull", e.testNodeCredentialsPinnedPull)
			t.Run("KubeletCredentials", e.testKubeletCredentials)
			t.Run("WrongCredentials", e.testWrongCredentials)
			t.Run("TagMoves", e.testTagMoves)
			t.Run("WarmPull", e.testWarmPull)
			t.Run("ConcurrentColdPulls", e.testConcurrentColdPulls)
			t.Run("ImageStatusFollowsContainerd", e.testImageStatusFollowsContainerd)
			t.Run("Passthrough", e.testPassthrough)
			t.Run("BadInput", e.testBadInput)
			t.Run("DefaultDenyAndReload", e.testDefaultDenyAndReload)
			t.Run("ContainerdRestart", e.testContainerdRestart)
			t.Run("LogsAndMetrics", e.testLogsAndMetrics)
		})
	}
}

// A private image pulled by tag with the node's credentials reaches containerd by digest only,
// and gets a tag record that kubelet's ImageStatus(tag) finds.
func (e *env) testNodeCredentialsPinnedPull(t *testing.T) {
	img := e.node.PushRandomImage(t, "team/app", "v1")
	e.node.Reset()
	ref := e.node.Host + "/team/app:v1"
	imageRef, err := e.pull(t, ref, nil, "default")
	if err != nil {
		t.Fatalf("PullImage(%s) with node credentials: %v", ref, err)
	}
	if want := configDigest(t, img); imageRef != want {
		t.Errorf("image_ref = %s, want %s", imageRef, want)
	}
	// pullgate asked about the tag once; containerd only ever asked for the digest.
	reqs := e.node.Requests()
	if n := reqs.ManifestHEAD["team/app:v1"] + reqs.ManifestGET["team/app:v1"]; n != 1 {
		t.Errorf("registry saw %d manifest requests by tag, want 1 (pullgate's resolve): %+v", n, reqs)
	}
	pinned := "team/app@" + manifestDigest(t, img).String()
	if reqs.ManifestHEAD[pinned]+reqs.ManifestGET[pinned] == 0 {
		t.Errorf("containerd did not fetch %s by digest: %+v", pinned, reqs)
	}
	got := e.status(t, e.images, ref)
	if got == nil || got.Id != imageRef || !slices.Contains(got.RepoTags, ref) {
		t.Fatalf("ImageStatus(%s) through pullgate = %v, want id %s tagged %s", ref, got, imageRef, ref)
	}
	if direct := e.status(t, e.direct, ref); direct == nil || direct.Id != imageRef {
		t.Fatalf("ImageStatus(%s) on containerd = %v, want the tag record", ref, direct)
	}
}

// kubelet's AuthConfig is used for its registry (token auth), where the node has no credentials.
func (e *env) testKubeletCredentials(t *testing.T) {
	img := e.kube.PushRandomImage(t, "private/api", "2.0")
	ref := e.kube.Host + "/private/api:2.0"
	if _, err := e.pull(t, ref, nil, "prod"); err == nil {
		t.Fatalf("PullImage(%s) without credentials succeeded", ref)
	}
	auth := &runtimeapi.AuthConfig{Username: "kubelet", Password: "kubelet-secret-Xy7"}
	imageRef, err := e.pull(t, ref, auth, "prod")
	if err != nil {
		t.Fatalf("PullImage(%s) with kubelet credentials: %v", ref, err)
	}
	if want := configDigest(t, img); imageRef != want {
		t.Errorf("image_ref = %s, want %s", imageRef, want)
	}
	if got := e.status(t, e.images, ref); got == nil || got.Id != imageRef {
		t.Fatalf("ImageStatus(%s) = %v", ref, got)
	}
	// Credentials whose server_address names another registry are refused, never forwarded.
	other := &runtimeapi.AuthConfig{Username: "kubelet", Password: "kubelet-secret-Xy7", ServerAddress: e.node.Host}
	_, err = e.pull(t, ref, other, "prod")
	wantCode(t, err, codes.InvalidArgument, "pullgate: credentials are for")
}

func (e *env) testWrongCredentials(t *testing.T) {
	e.kube.PushRandomImage(t, "private/wrong", "v1")
	e.kube.Reset()
	ref := e.kube.Host + "/private/wrong:v1"
	_, err := e.pull(t, ref, &runtimeapi.AuthConfig{Username: "kubelet", Password: "not-the-password"}, "")
	wantCode(t, err, codes.Unknown, "pullgate: ")
	if !strings.Contains(err.Error(), "401") && !strings.Contains(err.Error(), "UNAUTHORIZED") {
		t.Errorf("error does not carry the registry's answer: %v", err)
	}
	if n := e.kube.Requests().BlobGET; n != 0 {
		t.Errorf("registry served %d blobs for a refused pull", n)
	}
	if got := e.status(t, e.direct, ref); got != nil {
		t.Errorf("containerd has %s after a refused pull", ref)
	}
}

// The tag moved in the registry: the next pull gets the new digest and the tag record follows.
func (e *env) testTagMoves(t *testing.T) {
	ref := e.node.Host + "/team/moving:stable"
	first := e.node.PushRandomImage(t, "team/moving", "stable")
	if _, err := e.pull(t, ref, nil, ""); err != nil {
		t.Fatal(err)
	}
	second := e.node.PushRandomImage(t, "team/moving", "stable")
	imageRef, err := e.pull(t, ref, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	if want := configDigest(t, second); imageRef != want {
		t.Fatalf("second pull image_ref = %s, want %s (the new digest)", imageRef, want)
	}
	got := e.status(t, e.images, ref)
	if got == nil || got.Id != configDigest(t, second) {
		t.Fatalf("ImageStatus(%s) = %v, want the new image %s", ref, got, configDigest(t, second))
	}
	if old := e.status(t, e.images, configDigest(t, first)); old != nil && slices.Contains(old.RepoTags, ref) {
		t.Errorf("old image still carries tag %s: %v", ref, old.RepoTags)
	}
}

// A pull of an image the node already holds (imagePullPolicy: Always) costs the registry one
// manifest HEAD, pullgate's resolve with the pull's credentials: containerd is not asked to pull
// again. An image whose unpacking is incomplete still goes to containerd, which completes it.
func (e *env) testWarmPull(t *testing.T) {
	img := e.node.PushRandomImage(t, "team/warm", "v1")
	ref := e.node.Host + "/team/warm:v1"
	want := configDigest(t, img)
	if _, err := e.pull(t, ref, nil, "default"); err != nil {
		t.Fatal(err)
	}
	e.node.Reset()
	for range 3 {
		imageRef, err := e.pull(t, ref, nil, "default")
		if err != nil || imageRef != want {
			t.Fatalf("warm PullImage(%s) = %q, %v; want %s", ref, imageRef, err, want)
		}
	}
	reqs := e.node.Requests()
	pinned := "team/warm@" + manifestDigest(t, img).String()
	if reqs.ManifestHEAD["team/warm:v1"] != 3 || reqs.ManifestHEAD[pinned]+reqs.ManifestGET[pinned]+reqs.ManifestGET["team/warm:v1"]+reqs.BlobGET != 0 {
		t.Errorf("3 warm pulls made %+v; want 3 manifest HEADs by tag and nothing else", reqs)
	}
	if got := e.status(t, e.direct, ref); got == nil || got.Id != want {
		t.Fatalf("ImageStatus(%s) on containerd = %v, want %s", ref, got, want)
	}

	e.ctrd.RemoveSnapshot(ref)
	e.node.Reset()
	if imageRef, err := e.pull(t, ref, nil, "default"); err != nil || imageRef != want {
		t.Fatalf("PullImage(%s) with its snapshot removed = %q, %v; want %s", ref, imageRef, err, want)
	}
	if reqs := e.node.Requests(); reqs.ManifestHEAD[pinned]+reqs.ManifestGET[pinned] == 0 {
		t.Errorf("the image's snapshot was removed, but containerd was not asked to pull it: %+v", reqs)
	}
	e.node.Reset()
	if _, err := e.pull(t, ref, nil, "default"); err != nil {
		t.Fatal(err)
	}
	if reqs := e.node.Requests(); reqs.ManifestHEAD[pinned]+reqs.ManifestGET[pinned] != 0 {
		t.Errorf("containerd's pull did not complete the image's snapshot: the next pull asked it again: %+v", reqs)
	}
}

// 20 pulls of one new image at once, with one credential, are one containerd pull: the
// token-auth registry serves each object once and grants pullgate one token. (Resolves are
// shared while one is in flight; a pull that comes after it resolves the tag again.)
func (e *env) testConcurrentColdPulls(t *testing.T) {
	auth := &runtimeapi.AuthConfig{Username: "kubelet", Password: "kubelet-secret-Xy7"}
	// What one pull costs containerd itself, for comparison.
	e.kube.PushRandomImage(t, "private/alone", "v1")
	e.kube.Reset()
	if _, err := e.direct.PullImage(t.Context(), &runtimeapi.ImageSpec{Image: e.kube.Host + "/private/alone:v1"}, auth, nil); err != nil {
		t.Fatal(err)
	}
	alone := e.kube.Requests().TokensBy["containerd"]

	img := e.kube.PushRandomImage(t, "private/crowd", "v1")
	e.kube.Reset()
	ref := e.kube.Host + "/private/crowd:v1"
	errs := make(chan error, 20)
	for range 20 {
		go func() {
			_, err := e.pull(t, ref, auth, "prod")
			errs <- err
		}()
	}
	for range 20 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	reqs := e.kube.Requests()
	pinned := "private/crowd@" + manifestDigest(t, img).String()
	if reqs.ManifestHEAD[pinned] > 1 || reqs.ManifestGET[pinned] > 1 {
		t.Errorf("20 concurrent pulls asked for the manifest %d+%d times by digest, want at most one HEAD and one GET: %+v",
			reqs.ManifestHEAD[pinned], reqs.ManifestGET[pinned], reqs)
	}
	for blob, n := range reqs.BlobGETs {
		if n > 1 {
			t.Errorf("blob %s served %d times", blob, n)
		}
	}
	if reqs.TokensBy["pullgate"] != 1 || reqs.TokensBy["containerd"] != alone {
		t.Errorf("tokens issued: %v, want one to pullgate and %d to containerd, as for one pull of its own", reqs.TokensBy, alone)
	}
}

// ImageStatus through pullgate is answered from the replies kept since containerd's last image
// event, and follows every change: RemoveImage through pullgate at once, a removal and a re-tag
// made straight in containerd's store as soon as pullgate has its event.
func (e *env) testImageStatusFollowsContainerd(t *testing.T) {
	first := e.node.PushRandomImage(t, "team/followed", "v1")
	second := e.node.PushRandomImage(t, "team/followed", "v2")
	ref, other := e.node.Host+"/team/followed:v1", e.node.Host+"/team/followed:v2"
	for _, r := range []string{ref, other} {
		if _, err := e.pull(t, r, nil, ""); err != nil {
			t.Fatal(err)
		}
	}
	kept := func() float64 {
		return metrics(t, e).value(t, `pullgate_image_status_replies_total{source="cache"}`)
	}
	e.waitKept(t, ref)
	before := kept()
	for range 5 {
		if got := e.status(t, e.images, ref); got == nil || got.Id != configDigest(t, first) {
			t.Fatalf("ImageStatus(%s) = %v, want %s", ref, got, configDigest(t, first))
		}
	}
	if n := kept() - before; n != 5 {
		t.Errorf("5 ImageStatus of one image: %v answered from kept replies, want 5", n)
	}

	// eventually waits until ImageStatus(ref) on s has the image ID want ("" for absent).
	eventually := func(s internalapi.ImageManagerService, what, want string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			got := e.status(t, s, ref)
			if got.GetId() == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("ImageStatus(%s) %s = %v, want image %q", ref, what, got, want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	e.ctrd.TagImage(ref, other)
	eventually(e.direct, "on containerd after a re-tag in its store", configDigest(t, second))
	eventually(e.images, "through pullgate after a re-tag in containerd's store", configDigest(t, second))

	e.ctrd.DeleteImage(ref)
	eventually(e.direct, "on containerd after the record was deleted from its store", "")
	eventually(e.images, "through pullgate after the record was deleted from containerd's store", "")

	if _, err := e.pull(t, ref, nil, ""); err != nil {
		t.Fatal(err)
	}
	if got := e.status(t, e.images, ref); got.GetId() != configDigest(t, first) {
		t.Fatalf("ImageStatus(%s) after a pull = %v, want %s", ref, got, configDigest(t, first))
	}
	if err := e.images.RemoveImage(t.Context(), &runtimeapi.ImageSpec{Image: ref}); err != nil {
		t.Fatal(err)
	}
	if got := e.status(t, e.images, ref); got != nil {
		t.Errorf("ImageStatus(%s) right after RemoveImage through pullgate = %v, want absent", ref, got)
	}
}

// waitKept asks ImageStatus(ref) through pullgate until a reply comes from what pullgate kept:
// the image events of the pulls before are applied, and replies kept again.
func (e *env) waitKept(t *testing.T, ref string) {
	t.Helper()
	kept := func() float64 {
		return metrics(t, e).value(t, `pullgate_image_status_replies_total{source="cache"}`)
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		before := kept()
		e.status(t, e.images, ref)
		if kept() > before {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no ImageStatus reply was kept within 10s of the last image event")
		}
	}
}

// Methods pullgate does not intercept reach containerd untouched.
func (e *env) testPassthrough(t *testing.T) {
	img := e.node.PushRandomImage(t, "team/pass", "v1")
	ref := e.node.Host + "/team/pass:v1"
	if _, err := e.pull(t, ref, nil, ""); err != nil {
		t.Fatal(err)
	}
	list, err := e.images.ListImages(t.Context(), nil)
	if err != nil {
		t.Fatalf("ListImages: %v", err)
	}
	direct, err := e.direct.ListImages(t.Context(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != len(direct) || !slices.ContainsFunc(list, func(i *runtimeapi.Image) bool { return slices.Contains(i.RepoTags, ref) }) {
		t.Errorf("ListImages through pullgate has %d images (containerd: %d), want %s among them", len(list), len(direct), ref)
	}
	fs, err := e.images.ImageFsInfo(t.Context())
	if err != nil || len(fs.GetImageFilesystems()) == 0 {
		t.Errorf("ImageFsInfo = %v, %v", fs, err)
	}
	rs, err := remoteclient.NewRemoteRuntimeService(t.Context(), e.gate.Endpoint, callTimeout, noop.NewTracerProvider(), false)
	if err != nil {
		t.Fatal(err)
	}
	v, err := rs.Version(t.Context(), "v1")
	if err != nil || v.RuntimeName != "containerd" {
		t.Errorf("Version through pullgate = %v, %v", v, err)
	}
	st, err := rs.Status(t.Context(), false)
	if err != nil || st.GetStatus() == nil {
		t.Errorf("Status through pullgate = %v, %v", st, err)
	}
	if err := e.images.RemoveImage(t.Context(), &runtimeapi.ImageSpec{Image: configDigest(t, img)}); err != nil {
		t.Fatalf("RemoveImage: %v", err)
	}
	if got := e.status(t, e.direct, ref); got != nil {
		t.Errorf("containerd still has %s after RemoveImage through pullgate", ref)
	}

	// Methods added to the CRI after this build: a RuntimeService one reaches containerd (which
	// answers it does not know it either), an ImageService one, which might pull, never does.
	conn, err := grpc.NewClient(e.gate.Endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	err = conn.Invoke(t.Context(), "/runtime.v1.RuntimeService/SomeFutureMethod", &emptypb.Empty{}, &emptypb.Empty{})
	if status.Code(err) != codes.Unimplemented || strings.Contains(err.Error(), "pullgate") {
		t.Errorf("unknown RuntimeService method: %v; want containerd's own Unimplemented", err)
	}
	err = conn.Invoke(t.Context(), "/runtime.v1.ImageService/SomeFuturePull", &emptypb.Empty{}, &emptypb.Empty{})
	if status.Code(err) != codes.Unimplemented || !strings.Contains(err.Error(), "pullgate: /runtime.v1.ImageService/SomeFuturePull is an ImageService method this pullgate does not know") {
		t.Errorf("unknown ImageService method: %v; want pullgate's refusal", err)
	}
}

func (e *env) testBadInput(t *testing.T) {
	for _, ref := range []string{e.node.Host + "/Team/App:v1", "nginx@sha256:abc", "registry.example.com/" + strings.Repeat("a", 256)} {
		_, err := e.pull(t, ref, nil, "")
		wantCode(t, err, codes.InvalidArgument, "pullgate: invalid image reference")
	}
	// Nothing listens on port 1: the pull cannot be checked and is denied.
	_, err := e.pull(t, "127.0.0.1:1/app:v1", nil, "")
	wantCode(t, err, codes.Unknown, "RegistryUnavailable: pullgate: ")
	// pullgate keeps serving.
	if _, err := e.images.ImageFsInfo(t.Context()); err != nil {
		t.Fatalf("ImageFsInfo after bad input: %v", err)
	}
}

// defaultAction deny refuses every image before containerd sees it; SIGHUP reloads the policy,
// and a bad file is refused whole with the running configuration kept.
func (e *env) testDefaultDenyAndReload(t *testing.T) {
	img := e.node.PushRandomImage(t, "team/denied", "v1")
	ref := e.node.Host + "/team/denied:v1"
	reload := func(config, msg string) {
		t.Helper()
		before := len(e.gate.LogLines(msg))
		if err := os.WriteFile(e.gate.ConfigPath, []byte(config), 0o600); err != nil {
			t.Fatal(err)
		}
		e.gate.Signal(syscall.SIGHUP)
		for len(e.gate.LogLines(msg)) == before {
			time.Sleep(10 * time.Millisecond)
		}
	}
	reload(e.config("deny"), "configuration reloaded")
	t.Cleanup(func() { reload(e.config("allow"), "configuration reloaded") })

	e.node.Reset()
	_, err := e.pull(t, ref, nil, "default")
	// Decided by the name alone: no resolve, and the node's credentials sent nowhere.
	wantCode(t, err, codes.Unknown, "SignatureValidationFailed: pullgate: "+ref+" denied: no policy matches (defaultAction: deny)")
	if r := e.node.Requests(); len(r.ManifestHEAD)+len(r.ManifestGET)+r.BlobGET+r.Unauthorized+r.Tokens != 0 {
		t.Errorf("registry was asked %+v for an image the policy denies by its name", r)
	}
	if got := e.status(t, e.direct, e.node.Host+"/team/denied@"+manifestDigest(t, img).String()); got != nil {
		t.Fatalf("containerd has the denied image")
	}

	reload("apiVersion: pullgate.io/v1alpha1\nkind: PullgateConfig\ndefaultAction: maybe\n", "configuration reload refused, keeping the running configuration")
	_, err = e.pull(t, ref, nil, "default")
	wantCode(t, err, codes.Unknown, "SignatureValidationFailed: pullgate: ")
}

// containerd stopped and restarted while pullgate runs: calls fail with Unavailable meanwhile,
// readiness follows, and pullgate recovers by itself.
func (e *env) testContainerdRestart(t *testing.T) {
	e.ctrd.Stop()
	_, err := e.images.ImageFsInfo(t.Context())
	wantCode(t, err, codes.Unavailable, "")
	_, err = e.pull(t, e.node.Host+"/team/app:v1", nil, "")
	wantCode(t, err, codes.Unavailable, "")
	if code := httpStatus(t, e.gate.MetricsURL+"/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz with containerd down = %d, want 503", code)
	}
	e.ctrd.Start()
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := e.images.ImageFsInfo(t.Context())
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pullgate did not recover after containerd restarted: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := e.pull(t, e.node.Host+"/team/app:v1", nil, ""); err != nil {
		t.Fatalf("pull after restart: %v", err)
	}
	if code := httpStatus(t, e.gate.MetricsURL+"/readyz"); code != http.StatusOK {
		t.Errorf("/readyz after restart = %d, want 200", code)
	}
}

// One log line per decision, never a credential; decisions and requests are counted.
func (e *env) testLogsAndMetrics(t *testing.T) {
	logs := e.gate.Logs()
	for _, secret := range []string{"node-secret-Zq1", "kubelet-secret-Xy7", base64.StdEncoding.EncodeToString([]byte("node:node-secret-Zq1"))} {
		if strings.Contains(logs, secret) {
			t.Fatalf("pullgate logged a credential (%q)", secret)
		}
	}
	allowed := e.gate.LogLines("pull allowed")
	found := false
	for _, l := range allowed {
		if l["image"] == e.node.Host+"/team/app:v1" && l["namespace"] == "default" && strings.HasPrefix(fmt.Sprint(l["digest"]), "sha256:") && l["verdict"] == "allowed" {
			found = true
		}
	}
	if !found {
		t.Errorf("no decision line for %s/team/app:v1 among %v", e.node.Host, allowed)
	}
	if len(e.gate.LogLines("pull denied")) == 0 {
		t.Error("no decision line for the denied pull")
	}
	metrics := httpBody(t, e.gate.MetricsURL+"/metrics")
	for _, want := range []string{
		`pullgate_pull_decisions_total{rule="defaultAction",verdict="allowed"}`,
		`pullgate_pull_decisions_total{rule="defaultAction",verdict="denied"}`,
		`pullgate_cri_requests_total{code="OK",method="ImageStatus"}`,
		`pullgate_cri_requests_total{code="InvalidArgument",method="PullImage"}`,
		`pullgate_cri_request_duration_seconds_bucket{method="ListImages"`,
		"pullgate_upstream_up 1",
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if code := httpStatus(t, e.gate.MetricsURL+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d", code)
	}
}

func httpStatus(t *testing.T, url string) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func httpBody(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
