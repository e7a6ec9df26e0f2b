package proxy_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/pullgate/pullgate/proxy"
	"github.com/pullgate/pullgate/verify"
)

const storeRepo = "registry.example.com/apps/web"

// storedImage is what containerd's ImageStatus says of an image pulled as storeRepo:v1.
func storedImage() *runtimeapi.ImageStatusResponse {
	return &runtimeapi.ImageStatusResponse{Image: &runtimeapi.Image{
		Id:          imageID,
		RepoTags:    []string{storeRepo + ":v1"},
		RepoDigests: []string{storeRepo + "@" + tagDigest.String(), "registry.example.com/mirror/web@" + pinDigest.String()},
		Size:        1234,
	}, Info: map[string]string{"info": "{}"}}
}

// refuse is a verifier's answer for an image never verified on the node.
func refuse(req verify.Request) (verify.Decision, error) {
	return verify.Decision{Rule: "apps", Unknown: true, Reason: "never verified on this node"}, nil
}

func TestImageStatusGate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		gate  bool
		ref   string
		known func(verify.Request) (verify.Decision, error)
		// reply is the runtime's answer; storedImage() when nil.
		reply *runtimeapi.ImageStatusResponse
		// present is whether the runtime's answer comes through.
		present bool
		// asked is what the verifier is asked, as image@digest; nil: nothing.
		asked []string
	}{
		{name: "gate off", ref: storeRepo + ":v1", known: refuse, present: true},
		{name: "verified", gate: true, ref: storeRepo + ":v1", present: true, asked: []string{storeRepo + "@" + tagDigest.String()}},
		{name: "not verified", gate: true, ref: storeRepo + ":v1", known: refuse, asked: []string{storeRepo + "@" + tagDigest.String()}},
		{name: "state unreadable", gate: true, ref: storeRepo + ":v1", known: func(verify.Request) (verify.Decision, error) {
			return verify.Decision{}, errors.New("disk on fire")
		}, asked: []string{storeRepo + "@" + tagDigest.String()}},
		{name: "pinned by a digest the store holds", gate: true, ref: "registry.example.com/mirror/web@" + pinDigest.String(), present: true, asked: []string{"registry.example.com/mirror/web@" + pinDigest.String()}},
		{name: "imported without a registry digest", gate: true, ref: "registry.example.com/tools/imported:v2", known: refuse,
			reply: &runtimeapi.ImageStatusResponse{Image: &runtimeapi.Image{Id: imageID, RepoTags: []string{"registry.example.com/tools/imported:v2"}}},
			asked: []string{"registry.example.com/tools/imported@"}},
		// Lookups by ID, or by any spelling the runtime resolves that is not one of the image's
		// names, are decided by the image's names in the store: a pod may name its image by ID.
		{name: "by image ID, not verified", gate: true, ref: imageID, known: refuse, asked: []string{storeRepo + "@" + tagDigest.String(), "registry.example.com/mirror/web@" + pinDigest.String()}},
		{name: "by bare image ID, not verified", gate: true, ref: strings.TrimPrefix(imageID, "sha256:"), known: refuse, asked: []string{storeRepo + "@" + tagDigest.String(), "registry.example.com/mirror/web@" + pinDigest.String()}},
		{name: "by image ID, verified", gate: true, ref: imageID, present: true, asked: []string{storeRepo + "@" + tagDigest.String()}},
		{name: "by a digest prefix", gate: true, ref: "sha256:cccc", known: refuse, asked: []string{storeRepo + "@" + tagDigest.String(), "registry.example.com/mirror/web@" + pinDigest.String()}},
		// An image with no name (its tags removed, `ctr image import` of a bare config) has
		// nothing to be verified by: whatever the verifier would say, it is absent.
		{name: "no names in the store", gate: true, ref: imageID,
			reply: &runtimeapi.ImageStatusResponse{Image: &runtimeapi.Image{Id: imageID, Size: 1234}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var opts []proxy.Option
			if tt.gate {
				opts = append(opts, proxy.WithPresentImageChecks())
			}
			if tt.reply == nil {
				tt.reply = storedImage()
			}
			e := start(t, setup{
				runtime:  &fakeRuntime{replies: map[string]proto.Message{"ImageStatus": tt.reply}},
				verifier: &fakeVerifier{known: tt.known},
				opts:     opts,
			})
			img, err := e.images(t).ImageStatus(t.Context(), &runtimeapi.ImageSpec{Image: tt.ref}, true)
			if err != nil {
				t.Fatal(err)
			}
			if tt.present {
				if !proto.Equal(img, tt.reply) {
					t.Errorf("ImageStatus = %v, want the runtime's answer unchanged", img)
				}
			} else if img.GetImage() != nil || len(img.GetInfo()) != 0 {
				t.Errorf("ImageStatus = %v, want the empty answer of a missing image", img)
			}
			var asked []string
			for _, r := range e.verifier.seenKnown() {
				if !r.AllNamespaces {
					t.Errorf("Known asked for namespace %q, want every namespace", r.Namespace)
				}
				asked = append(asked, r.Image.Name()+"@"+r.Digest.String())
			}
			if strings.Join(asked, " ") != strings.Join(tt.asked, " ") {
				t.Errorf("verifier asked %v, want %v", asked, tt.asked)
			}
		})
	}
}

func TestImageStatusGateMissingImage(t *testing.T) {
	t.Parallel()
	e := start(t, setup{verifier: &fakeVerifier{known: refuse}, opts: []proxy.Option{proxy.WithPresentImageChecks()}})
	img, err := e.images(t).ImageStatus(t.Context(), &runtimeapi.ImageSpec{Image: storeRepo + ":v1"}, false)
	if err != nil || img.GetImage() != nil {
		t.Fatalf("ImageStatus = %v, %v", img, err)
	}
	if n := len(e.verifier.seenKnown()); n != 0 {
		t.Errorf("verifier asked %d times about an image the store does not hold", n)
	}
	// The runtime's errors pass through unchanged.
	e.runtime.fail = func(string, proto.Message) error { return status.Error(codes.PermissionDenied, "runtime says no") }
	_, err = runtimeapi.NewImageServiceClient(e.conn).ImageStatus(t.Context(), &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: storeRepo + ":v1"}})
	if status.Code(err) != codes.PermissionDenied || status.Convert(err).Message() != "runtime says no" {
		t.Errorf("error = %v, want the runtime's", err)
	}
}

func createRequest(image, userImage, namespace string) *runtimeapi.CreateContainerRequest {
	sandbox := &runtimeapi.PodSandboxConfig{Metadata: &runtimeapi.PodSandboxMetadata{Name: "web-0", Namespace: namespace, Uid: "uid"}}
	return &runtimeapi.CreateContainerRequest{
		PodSandboxId: "sandbox-1",
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: "web"},
			Image:    &runtimeapi.ImageSpec{Image: image, UserSpecifiedImage: userImage},
			Envs:     []*runtimeapi.KeyValue{{Key: "A", Value: []byte("b")}},
		},
		SandboxConfig: sandbox,
	}
}

func TestCreateContainerGate(t *testing.T) {
	t.Parallel()
	// onlyFor allows the one image@digest in the one namespace.
	onlyFor := func(image string, dg digest.Digest, ns string) func(verify.Request) (verify.Decision, error) {
		return func(r verify.Request) (verify.Decision, error) {
			if r.Image.Name() == image && r.Digest == dg && r.Namespace == ns {
				return verify.Decision{Allowed: true, Rule: "apps"}, nil
			}
			return verify.Decision{Rule: "apps", Reason: "never verified on this node"}, nil
		}
	}
	tests := []struct {
		name      string
		req       *runtimeapi.CreateContainerRequest
		known     func(verify.Request) (verify.Decision, error)
		allowed   bool
		wantError string
	}{
		{name: "verified for the pod's namespace", req: createRequest(imageID, storeRepo+":v1", "prod"), known: onlyFor(storeRepo, tagDigest, "prod"), allowed: true},
		{name: "verified for another namespace only", req: createRequest(imageID, storeRepo+":v1", "dev"), known: onlyFor(storeRepo, tagDigest, "prod"),
			wantError: "SignatureValidationFailed: pullgate: " + storeRepo + "@" + tagDigest.String() + ` denied by policy "apps": never verified on this node`},
		{name: "the pod's name decides, not another name of the same image", req: createRequest(imageID, storeRepo+":v1", "prod"), known: onlyFor("registry.example.com/mirror/web", pinDigest, "prod"),
			wantError: "SignatureValidationFailed: pullgate: " + storeRepo + "@" + tagDigest.String()},
		{name: "without the pod's name, any name of the image", req: createRequest(imageID, "", "prod"), known: onlyFor("registry.example.com/mirror/web", pinDigest, "prod"), allowed: true},
		{name: "the pod names its image by ID", req: createRequest(imageID, imageID, "prod"), known: onlyFor("registry.example.com/mirror/web", pinDigest, "prod"), allowed: true},
		{name: "the pod names its image by ID, never verified", req: createRequest(imageID, imageID, "prod"), known: refuse, wantError: "SignatureValidationFailed: pullgate: " + storeRepo + "@"},
		{name: "no namespace: every namespace's rule", req: createRequest(imageID, storeRepo+":v1", ""), known: func(r verify.Request) (verify.Decision, error) {
			if !r.AllNamespaces {
				return verify.Decision{Rule: "apps", Reason: "asked for one namespace"}, nil
			}
			return verify.Decision{Allowed: true, Rule: "apps"}, nil
		}, allowed: true},
		{name: "state unreadable", req: createRequest(imageID, storeRepo+":v1", "prod"), known: func(verify.Request) (verify.Decision, error) {
			return verify.Decision{}, errors.New("disk on fire")
		}, wantError: "SignatureValidationFailed: pullgate: " + imageID + " could not be checked: disk on fire"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := start(t, setup{
				runtime:  &fakeRuntime{replies: map[string]proto.Message{"ImageStatus": storedImage(), "CreateContainer": &runtimeapi.CreateContainerResponse{ContainerId: "c-1"}}},
				verifier: &fakeVerifier{known: tt.known},
				opts:     []proxy.Option{proxy.WithPresentImageChecks()},
			})
			var warned []string
			var mu sync.Mutex
			e.proxy.SetNodeWarnings(func(reason, message string) {
				mu.Lock()
				warned = append(warned, reason+": "+message)
				mu.Unlock()
			})
			resp, err := e.runtimeClient().CreateContainer(t.Context(), tt.req)
			created := e.runtime.callsTo("CreateContainer")
			mu.Lock()
			defer mu.Unlock()
			refusal := strings.HasPrefix(tt.wantError, "SignatureValidationFailed") && !strings.Contains(tt.wantError, "could not be checked")
			if refusal != (len(warned) == 1) ||
				refusal && !strings.HasPrefix(warned[0], proxy.ReasonContainerRefused+": container ") {
				t.Errorf("node warnings %q; want one %s for a container refused by policy", warned, proxy.ReasonContainerRefused)
			}
			if tt.allowed {
				if err != nil || resp.GetContainerId() != "c-1" {
					t.Fatalf("CreateContainer = %v, %v; want the runtime's answer", resp, err)
				}
				if len(created) != 1 || !proto.Equal(created[0].req, tt.req) {
					t.Errorf("runtime saw %v, want the request unchanged", created)
				}
				return
			}
			if err == nil || !strings.HasPrefix(status.Convert(err).Message(), tt.wantError) {
				t.Fatalf("CreateContainer error = %v, want %q", err, tt.wantError)
			}
			if strings.HasPrefix(tt.wantError, "SignatureValidationFailed") && status.Code(err) != codes.Unknown {
				t.Errorf("code = %v, want Unknown, which kubelet reads the reason of", status.Code(err))
			}
			if len(created) != 0 {
				t.Errorf("the runtime saw a refused CreateContainer")
			}
		})
	}
}

func TestCreateContainerImageNotInStore(t *testing.T) {
	t.Parallel()
	e := start(t, setup{
		runtime:  &fakeRuntime{replies: map[string]proto.Message{"CreateContainer": &runtimeapi.CreateContainerResponse{ContainerId: "c-1"}}},
		verifier: &fakeVerifier{known: refuse},
		opts:     []proxy.Option{proxy.WithPresentImageChecks()},
	})
	// The runtime answers for an image it does not hold, as it does without pullgate.
	if _, err := e.runtimeClient().CreateContainer(context.Background(), createRequest(imageID, storeRepo+":v1", "prod")); err != nil {
		t.Fatal(err)
	}
	if n := len(e.verifier.seenKnown()); n != 0 {
		t.Errorf("verifier asked %d times", n)
	}
	// Without the gate, CreateContainer is not looked at.
	e = start(t, setup{verifier: &fakeVerifier{known: refuse}})
	if _, err := e.runtimeClient().CreateContainer(context.Background(), createRequest(imageID, storeRepo+":v1", "prod")); err != nil {
		t.Fatal(err)
	}
	if n := len(e.runtime.callsTo("ImageStatus")); n != 0 {
		t.Errorf("without the gate, CreateContainer asked the runtime %d times for ImageStatus", n)
	}
}

// Images mounted as volumes are checked like the container's own.
func TestCreateContainerImageVolumes(t *testing.T) {
	t.Parallel()
	const volumeID = "sha256:" + "e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0"
	volume := &runtimeapi.ImageStatusResponse{Image: &runtimeapi.Image{Id: volumeID, RepoDigests: []string{"registry.example.com/data/set@" + pinDigest.String()}}}
	e := start(t, setup{
		runtime: &fakeRuntime{
			replies:       map[string]proto.Message{"ImageStatus": storedImage(), "CreateContainer": &runtimeapi.CreateContainerResponse{ContainerId: "c-1"}},
			statusByImage: map[string]*runtimeapi.ImageStatusResponse{volumeID: volume},
		},
		verifier: &fakeVerifier{known: func(r verify.Request) (verify.Decision, error) {
			if r.Image.Name() == "registry.example.com/data/set" {
				return verify.Decision{Rule: "data", Reason: "never verified on this node"}, nil
			}
			return verify.Decision{Allowed: true, Rule: "apps"}, nil
		}},
		opts: []proxy.Option{proxy.WithPresentImageChecks()},
	})
	req := createRequest(imageID, storeRepo+":v1", "prod")
	req.Config.Mounts = []*runtimeapi.Mount{{ContainerPath: "/data", Image: &runtimeapi.ImageSpec{Image: volumeID, UserSpecifiedImage: "registry.example.com/data/set:v1"}}}
	_, err := e.runtimeClient().CreateContainer(t.Context(), req)
	if !strings.HasPrefix(status.Convert(err).Message(), "SignatureValidationFailed: pullgate: registry.example.com/data/set@"+pinDigest.String()+` denied by policy "data"`) {
		t.Fatalf("CreateContainer with an unverified image volume: %v", err)
	}
	if n := len(e.runtime.callsTo("CreateContainer")); n != 0 {
		t.Errorf("the runtime saw %d refused CreateContainer", n)
	}
}

func TestGateMetrics(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	e := start(t, setup{
		runtime: &fakeRuntime{replies: map[string]proto.Message{"ImageStatus": storedImage(), "CreateContainer": &runtimeapi.CreateContainerResponse{ContainerId: "c-1"}}},
		verifier: &fakeVerifier{known: func(r verify.Request) (verify.Decision, error) {
			if r.Namespace == "dev" {
				return verify.Decision{Rule: "apps", Reason: "never verified"}, nil
			}
			return verify.Decision{Allowed: true, Rule: "apps"}, nil
		}},
		opts: []proxy.Option{proxy.WithPresentImageChecks(), proxy.WithMetrics(proxy.NewMetrics(reg))},
	})
	if _, err := e.imageClient().ImageStatus(t.Context(), &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: storeRepo + ":v1"}}); err != nil {
		t.Fatal(err)
	}
	for _, ns := range []string{"prod", "dev", "dev"} {
		e.runtimeClient().CreateContainer(t.Context(), createRequest(imageID, storeRepo+":v1", ns))
	}
	for _, tc := range []struct {
		labels map[string]string
		want   float64
	}{
		{map[string]string{"method": "ImageStatus", "verdict": "present", "rule": "apps"}, 1},
		{map[string]string{"method": "CreateContainer", "verdict": "allowed", "rule": "apps"}, 1},
		{map[string]string{"method": "CreateContainer", "verdict": "denied", "rule": "apps"}, 2},
	} {
		if got := sample(t, reg, "pullgate_present_image_checks_total", tc.labels); got != tc.want {
			t.Errorf("pullgate_present_image_checks_total%v = %v, want %v", tc.labels, got, tc.want)
		}
	}
	if got := sample(t, reg, "pullgate_cri_requests_total", map[string]string{"method": "CreateContainer", "code": "Unknown"}); got != 2 {
		t.Errorf("refused CreateContainer counted %v times as Unknown, want 2", got)
	}
}
