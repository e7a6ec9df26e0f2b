package test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	internalapi "k8s.io/cri-api/pkg/apis"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	remoteclient "k8s.io/cri-client/pkg"

	"github.com/pullgate/pullgate/proxy"
	"github.com/pullgate/pullgate/test/harness"
)

// Images that reach containerd's store without pullgate (pulled straight from containerd here,
// as before pullgate was installed, or imported) are checked when used: ImageStatus reports
// them absent until verified, and CreateContainer refuses them. Verified images stay usable
// across a restart of pullgate while the registry is down; a policy change is applied to them
// from the stored evidence.
func TestPresentImages(t *testing.T) {
	for version, bin := range harness.ContainerdBinaries(t) {
		t.Run("containerd-"+version, func(t *testing.T) {
			t.Parallel()
			p := newPolicyEnv(t, harness.StartContainerd(t, bin))
			s := &presentEnv{policyEnv: p, stateDir: t.TempDir()}
			s.setUp(t)
			t.Run("ImportedImages", s.testImportedImages)
			t.Run("CreateContainer", s.testCreateContainer)
			t.Run("NamespaceScoped", s.testNamespaceScoped)
			t.Run("RestartWithRegistryDown", s.testRestartWithRegistryDown)
			t.Run("RePullWithRegistryDown", s.testRePullWithRegistryDown)
			t.Run("PolicyChangeToNewKey", s.testPolicyChangeToNewKey)
			t.Run("Audit", s.testAudit)
			t.Run("StateUnavailable", s.testStateUnavailable)
		})
	}
}

type presentEnv struct {
	*policyEnv
	stateDir string
	// signed and unsigned are in containerd's store, pulled without pullgate.
	signed, unsigned     string
	signedID, unsignedID string
}

func (s *presentEnv) setUp(t *testing.T) {
	signed, _ := s.push(t, "apps/present-signed", "v1", s.release)
	unsigned, _ := s.push(t, "apps/present-unsigned", "v1", nil)
	s.signed, s.unsigned = s.reg.Host+"/apps/present-signed:v1", s.reg.Host+"/apps/present-unsigned:v1"
	s.signedID, s.unsignedID = configDigest(t, signed), configDigest(t, unsigned)
	direct := imageService(t, s.ctrd.Endpoint)
	for _, ref := range []string{s.signed, s.unsigned} {
		if _, err := direct.PullImage(t.Context(), &runtimeapi.ImageSpec{Image: ref}, &runtimeapi.AuthConfig{Username: s.reg.Username, Password: s.reg.Password}, nil); err != nil {
			t.Fatalf("pull %s straight from containerd: %v", ref, err)
		}
	}
}

func (s *presentEnv) enforceConfig() string {
	return s.config("deny", s.keyRule("apps", "apps", "enforce", ""))
}

// startGate runs pullgate with config and the env's state, in front of both CRI services.
func (s *presentEnv) startGate(t *testing.T, config string) (*env, internalapi.RuntimeService) {
	t.Helper()
	e := &env{ctrd: s.ctrd, node: s.reg}
	e.gate = harness.StartPullgate(t, harness.PullgateBinary(t), config, "--state-dir", s.stateDir)
	e.images = imageService(t, e.gate.Endpoint)
	e.direct = imageService(t, s.ctrd.Endpoint)
	rt, err := remoteclient.NewRemoteRuntimeService(t.Context(), e.gate.Endpoint, callTimeout, noop.NewTracerProvider(), false)
	if err != nil {
		t.Fatal(err)
	}
	return e, rt
}

// stopGate stops pullgate and waits for it, so that the next one has the state to itself.
func stopGate(t *testing.T, e *env) {
	t.Helper()
	e.gate.Signal(syscall.SIGTERM)
	if err := e.gate.Wait(30 * time.Second); err != nil {
		t.Fatal(err)
	}
}

// create asks for a container of image (kubelet sends its ID, and the name the pod gave) in a
// sandbox that does not exist. Past the gate, containerd refuses it for the missing sandbox;
// the gate's refusal names the signature instead.
func create(t *testing.T, rt internalapi.RuntimeService, id, ref, namespace string) error {
	t.Helper()
	sandbox := &runtimeapi.PodSandboxConfig{Metadata: &runtimeapi.PodSandboxMetadata{Name: "web-0", Namespace: namespace, Uid: "uid-1"}}
	_, err := rt.CreateContainer(t.Context(), "no-such-sandbox", &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "web"},
		Image:    &runtimeapi.ImageSpec{Image: id, UserSpecifiedImage: ref},
	}, sandbox)
	if err == nil {
		t.Fatalf("CreateContainer in a sandbox that does not exist succeeded")
	}
	return err
}

func wantRefused(t *testing.T, err error, want string) {
	t.Helper()
	if st, _ := status.FromError(err); st.Code() != codes.Unknown || !strings.HasPrefix(st.Message(), "SignatureValidationFailed: pullgate: ") || !strings.Contains(st.Message(), want) {
		t.Fatalf("CreateContainer: %v; want pullgate's refusal mentioning %q", err, want)
	}
}

func wantPastGate(t *testing.T, err error) {
	t.Helper()
	if strings.Contains(err.Error(), "SignatureValidationFailed") || !strings.Contains(err.Error(), "no-such-sandbox") {
		t.Fatalf("CreateContainer: %v; want containerd's own error about the missing sandbox", err)
	}
}

func (s *presentEnv) testImportedImages(t *testing.T) {
	e, _ := s.startGate(t, s.enforceConfig())
	for _, ref := range []string{s.signed, s.unsigned} {
		if e.status(t, e.direct, ref) == nil {
			t.Fatalf("%s is not in containerd's store", ref)
		}
		if img := e.status(t, e.images, ref); img != nil {
			t.Errorf("ImageStatus(%s) through pullgate = %v; want absent, it was never verified", ref, img)
		}
	}
	// A pod may name its image by ID: the image's names in the store decide.
	if img := e.status(t, e.images, s.unsignedID); img != nil {
		t.Errorf("ImageStatus(%s) through pullgate = %v; want absent", s.unsignedID, img)
	}
	_, err := e.pull(t, s.unsigned, nil, "default")
	wantCode(t, err, codes.Unknown, "SignatureValidationFailed: pullgate: ")
	if img := e.status(t, e.images, s.unsigned); img != nil {
		t.Errorf("ImageStatus(unsigned) after its pull was denied = %v", img)
	}
	if _, err := e.pull(t, s.signed, nil, "default"); err != nil {
		t.Fatalf("PullImage(%s): %v", s.signed, err)
	}
	if img := e.status(t, e.images, s.signed); img == nil || img.Id != s.signedID {
		t.Errorf("ImageStatus(signed) after its verified pull = %v; want present as %s", img, s.signedID)
	}
}

func (s *presentEnv) testCreateContainer(t *testing.T) {
	e, rt := s.startGate(t, s.enforceConfig())
	if _, err := e.pull(t, s.signed, nil, "default"); err != nil {
		t.Fatal(err)
	}
	wantPastGate(t, create(t, rt, s.signedID, s.signed, "default"))
	wantRefused(t, create(t, rt, s.unsignedID, s.unsigned, "default"), `denied by policy "apps"`)
	// Without the name the pod gave, the image's names in the store are tried.
	wantRefused(t, create(t, rt, s.unsignedID, "", "default"), "present-unsigned@sha256:")
	wantRefused(t, create(t, rt, s.unsignedID, s.unsignedID, "default"), "present-unsigned@sha256:")
	wantPastGate(t, create(t, rt, s.signedID, "", "default"))
}

// A digest allowed under a namespace's lax rule does not pass a stricter namespace's rule.
// A rule scoped to namespaces under defaultAction: deny hides an image at every ImageStatus
// (it names no namespace), so kubelet pulls again before each container start. With the
// registry down and pullgate restarted, the tag stands for the digest allowed before, which
// containerd holds: the pull is answered from its store, by tag and by digest, for the
// credential the registry served it to, and refused for any other. A namespace the rule does
// not cover is still denied, and a tag never pulled here still fails closed.
func (s *presentEnv) testRePullWithRegistryDown(t *testing.T) {
	img, _ := s.push(t, "apps/present-scoped", "v1", s.release)
	ref := s.reg.Host + "/apps/present-scoped:v1"
	pinned := s.reg.Host + "/apps/present-scoped@" + manifestDigest(t, img).String()
	config := s.config("deny", s.keyRule("prod", "apps", "enforce", `  namespaces: ["prod-*"]
`))
	e, _ := s.startGate(t, config)
	if _, err := e.pull(t, ref, nil, "prod-eu"); err != nil {
		t.Fatalf("pull for prod-eu: %v", err)
	}
	stopGate(t, e)

	s.reg.SetDown(true)
	defer s.reg.SetDown(false)
	e, _ = s.startGate(t, config)
	if got := e.status(t, e.images, ref); got != nil {
		t.Fatalf("ImageStatus(%s) = %v; want absent, the rule covers only prod-*", ref, got)
	}
	for _, r := range []string{ref, pinned} {
		imageRef, err := e.pull(t, r, nil, "prod-eu")
		if err != nil {
			t.Fatalf("pull %s for prod-eu with the registry down: %v", r, err)
		}
		if want := configDigest(t, img); imageRef != want {
			t.Errorf("image_ref = %s, want %s", imageRef, want)
		}
	}
	// kubelet pulls again to have a pod's own pull secret checked: the registry cannot check
	// it now, so only a credential it served the image to before passes.
	imageRef, err := e.pull(t, ref, &runtimeapi.AuthConfig{Username: "node", Password: "node-secret-Pq4"}, "prod-eu")
	if err != nil || imageRef != configDigest(t, img) {
		t.Errorf("pull with the credential the registry served the image to, registry down = %s, %v; want %s", imageRef, err, configDigest(t, img))
	}
	for _, r := range []string{ref, pinned} {
		_, err = e.pull(t, r, &runtimeapi.AuthConfig{Username: "node", Password: "a-guess"}, "prod-eu")
		wantCode(t, err, codes.Unknown, "RegistryUnavailable: pullgate: "+pinned+": the registry cannot be asked now, and it never served this image to the credentials of this pull")
	}
	_, err = e.pull(t, ref, nil, "dev")
	wantCode(t, err, codes.Unknown, "SignatureValidationFailed: pullgate: "+ref+" denied: no policy matches (defaultAction: deny)")
	_, err = e.pull(t, s.reg.Host+"/apps/present-scoped:v2", nil, "prod-eu")
	wantCode(t, err, codes.Unknown, "RegistryUnavailable: pullgate: ")
	if !strings.Contains(e.gate.Logs(), `"registryDown":true`) {
		t.Errorf("pullgate did not log that it answered from the store with the registry down:\n%s", e.gate.Logs())
	}
}

func (s *presentEnv) testNamespaceScoped(t *testing.T) {
	lax, _ := s.push(t, "apps/present-lax", "v1", nil)
	ref := s.reg.Host + "/apps/present-lax:v1"
	e, rt := s.startGate(t, s.config("deny", s.keyRule("prod", "apps", "enforce", `  namespaces: ["prod-*"]
`)+`- name: dev
  images: ["`+s.reg.Host+`/apps/**"]
  namespaces: [dev]
  mode: skip
`))
	if _, err := e.pull(t, ref, nil, "dev"); err != nil {
		t.Fatalf("pull for dev: %v", err)
	}
	wantPastGate(t, create(t, rt, configDigest(t, lax), ref, "dev"))
	wantRefused(t, create(t, rt, configDigest(t, lax), ref, "prod-eu"), `denied by policy "prod"`)
	// ImageStatus names no namespace: the image is absent until it passes the strictest rule.
	if img := e.status(t, e.images, ref); img != nil {
		t.Errorf("ImageStatus(%s) = %v; want absent, prod's rule does not allow it", ref, img)
	}
}

func (s *presentEnv) testRestartWithRegistryDown(t *testing.T) {
	e, _ := s.startGate(t, s.enforceConfig())
	if _, err := e.pull(t, s.signed, nil, "default"); err != nil {
		t.Fatal(err)
	}
	stopGate(t, e)

	s.reg.SetDown(true)
	defer s.reg.SetDown(false)
	e, rt := s.startGate(t, s.enforceConfig())
	if img := e.status(t, e.images, s.signed); img == nil {
		t.Errorf("ImageStatus(signed) after a restart with the registry down: absent; want present from the stored decision")
	}
	wantPastGate(t, create(t, rt, s.signedID, s.signed, "default"))
	if img := e.status(t, e.images, s.unsigned); img != nil {
		t.Errorf("ImageStatus(unsigned) after a restart = %v; want absent", img)
	}
	wantRefused(t, create(t, rt, s.unsignedID, s.unsigned, "default"), "")
	// A new pull cannot be checked: it fails closed.
	_, err := e.pull(t, s.unsigned, nil, "default")
	wantCode(t, err, codes.Unknown, "RegistryUnavailable: pullgate: ")
}

func (s *presentEnv) testPolicyChangeToNewKey(t *testing.T) {
	e, rt := s.startGate(t, s.enforceConfig())
	if _, err := e.pull(t, s.signed, nil, "default"); err != nil {
		t.Fatal(err)
	}
	e.waitKept(t, s.signed) // the reload must drop what was kept
	s.reg.SetDown(true)     // the change is applied from stored evidence
	defer s.reg.SetDown(false)
	otherKey := filepath.Join(s.dir, "other.pub")
	if err := os.WriteFile(otherKey, s.other.PublicPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	rotated := strings.Replace(s.enforceConfig(), s.keyFile, otherKey, 1)
	if err := os.WriteFile(e.gate.ConfigPath, []byte(rotated), 0o600); err != nil {
		t.Fatal(err)
	}
	reloads := len(e.gate.LogLines("configuration reloaded"))
	e.gate.Signal(syscall.SIGHUP)
	e.gate.WaitLog("configuration reloaded", func(map[string]any) bool { return len(e.gate.LogLines("configuration reloaded")) > reloads })

	if img := e.status(t, e.images, s.signed); img != nil {
		t.Errorf("ImageStatus(signed) after the key changed = %v; want absent", img)
	}
	wantRefused(t, create(t, rt, s.signedID, s.signed, "default"), "none of 1 signature(s) verified with this key")
}

func (s *presentEnv) testAudit(t *testing.T) {
	e, _ := s.startGate(t, s.enforceConfig())
	if _, err := e.pull(t, s.signed, nil, "default"); err != nil {
		t.Fatal(err)
	}
	// The daemon keeps running: audit reads the state beside it.
	out, err := exec.Command(harness.PullgateBinary(t), "audit", "--config", e.gate.ConfigPath, "--state-dir", s.stateDir,
		"--runtime-endpoint", s.ctrd.Endpoint, "--output", "json").Output()
	if err != nil {
		t.Fatalf("pullgate audit: %v\n%s", err, exitStderr(err))
	}
	var entries []proxy.AuditEntry
	if err := json.Unmarshal(out, &entries); err != nil {
		t.Fatalf("audit output: %v\n%s", err, out)
	}
	verdicts := map[string]proxy.AuditEntry{}
	for _, en := range entries {
		for _, tag := range en.Tags {
			verdicts[tag] = en
		}
	}
	if v := verdicts[s.signed]; v.Verdict != "allowed" || v.Rule != "apps" || v.ID != s.signedID {
		t.Errorf("audit of %s = %+v; want allowed by apps", s.signed, v)
	}
	if v := verdicts[s.unsigned]; v.Verdict != "denied" || !strings.Contains(v.Reason, "no cosign signature") {
		t.Errorf("audit of %s = %+v; want denied, from its denied pull", s.unsigned, v)
	}
	table, err := exec.Command(harness.PullgateBinary(t), "audit", "--config", e.gate.ConfigPath, "--state-dir", s.stateDir,
		"--runtime-endpoint", s.ctrd.Endpoint).Output()
	if err != nil {
		t.Fatalf("pullgate audit: %v", err)
	}
	if !strings.HasPrefix(string(table), "IMAGE") || !strings.Contains(string(table), "present-signed@sha256:") {
		t.Errorf("audit table:\n%s", table)
	}
}

func exitStderr(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		return string(ee.Stderr)
	}
	return ""
}

// A state directory that cannot be used does not stop pullgate: it serves, fails closed for
// images it has not verified itself, and remembers what it verifies until it restarts.
func (s *presentEnv) testStateUnavailable(t *testing.T) {
	e := &env{ctrd: s.ctrd, node: s.reg}
	e.gate = harness.StartPullgate(t, harness.PullgateBinary(t), s.enforceConfig(), "--state-dir", "/dev/null/state")
	e.images = imageService(t, e.gate.Endpoint)
	e.gate.WaitLog("state unavailable; decisions are kept in memory only until pullgate restarts with a working stateDir", nil)
	if img := e.status(t, e.images, s.signed); img != nil {
		t.Errorf("ImageStatus(signed) without a state = %v; want absent", img)
	}
	if _, err := e.pull(t, s.signed, nil, "default"); err != nil {
		t.Fatal(err)
	}
	if img := e.status(t, e.images, s.signed); img == nil {
		t.Error("ImageStatus(signed) after its pull: absent; want present from memory")
	}
}
