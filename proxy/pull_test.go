package proxy_test

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/pullgate/pullgate/proxy"
	"github.com/pullgate/pullgate/verify"
	"github.com/pullgate/pullgate/verify/auth"
)

var sandbox = &runtimeapi.PodSandboxConfig{
	Metadata:    &runtimeapi.PodSandboxMetadata{Name: "web-0", Uid: "3f6c", Namespace: "prod-web", Attempt: 1},
	Labels:      map[string]string{"app": "web"},
	Annotations: map[string]string{"kubernetes.io/config.source": "api"},
	Linux:       &runtimeapi.LinuxPodSandboxConfig{CgroupParent: "/kubepods/pod3f6c"},
}

// pullRequest is what kubelet sends for image with auth.
func pullRequest(image string, a *runtimeapi.AuthConfig) *runtimeapi.PullImageRequest {
	return &runtimeapi.PullImageRequest{
		Image:         &runtimeapi.ImageSpec{Image: image, Annotations: map[string]string{"io.kubernetes.cri.untrusted": "false"}, RuntimeHandler: "runc", UserSpecifiedImage: image},
		Auth:          a,
		SandboxConfig: sandbox,
	}
}

func unauthorized(code int) error {
	return fmt.Errorf("HEAD manifest: %w", &transport.Error{StatusCode: code})
}

func TestPullImage(t *testing.T) {
	t.Parallel()
	kubeletAuth := &runtimeapi.AuthConfig{Username: "kubelet-user", Password: "kubelet-pass"}
	nodeA := auth.Credential{Username: "node-a", Password: "pass-a"}
	nodeB := auth.Credential{Username: "node-b", Password: "pass-b", IdentityToken: "id-b"}
	deny := func(verify.Request) (verify.Decision, error) {
		return verify.Decision{Rule: "internal-apps", Reason: `no signature by authority "release-key": found 0 signatures`}, nil
	}
	runtimeErr, err := status.New(codes.NotFound, "failed to pull and unpack image: not found").WithDetails(wrapperspb.String("detail"))
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		image   string
		auth    *runtimeapi.AuthConfig
		keyring *fakeKeyring // nil: no WithKeyring
		resolve func(verify.Image, auth.Credential) (digest.Digest, error)
		decide  func(verify.Request) (verify.Decision, error)
		byName  *verify.Decision
		pullErr error
		tagErr  error

		wantCode   codes.Code
		wantMsg    string // exact message, if set
		wantPrefix string
		// wantForward is the image the runtime is asked to pull, "" if it must never be asked.
		wantForward     string
		wantForwardAuth *runtimeapi.AuthConfig
		// wantResolve lists the credentials tags are resolved with, in order.
		wantResolve []auth.Credential
		// wantVerify is the digest the verifier is asked about, "" if never.
		wantVerify     digest.Digest
		wantVerifyCred auth.Credential
		wantTags       []tagCall
		wantLookups    int
		// wantStatus is the exact status the caller gets, details included.
		wantStatus *status.Status
	}{{
		name:            "tag is pulled by its digest and recorded",
		image:           "nginx:1.27",
		auth:            kubeletAuth,
		wantForward:     "docker.io/library/nginx@" + tagDigest.String(),
		wantForwardAuth: kubeletAuth,
		wantResolve:     []auth.Credential{{Username: "kubelet-user", Password: "kubelet-pass"}},
		wantVerify:      tagDigest,
		wantVerifyCred:  auth.Credential{Username: "kubelet-user", Password: "kubelet-pass"},
		wantTags:        []tagCall{{"docker.io/library/nginx:1.27", "docker.io/library/nginx@" + tagDigest.String()}},
	}, {
		name:        "bare name is latest",
		image:       "nginx",
		wantForward: "docker.io/library/nginx@" + tagDigest.String(),
		wantResolve: []auth.Credential{{}},
		wantVerify:  tagDigest,
		wantTags:    []tagCall{{"docker.io/library/nginx:latest", "docker.io/library/nginx@" + tagDigest.String()}},
	}, {
		name:        "registry with port",
		image:       "localhost:5000/team/app:v1",
		wantForward: "localhost:5000/team/app@" + tagDigest.String(),
		wantResolve: []auth.Credential{{}},
		wantVerify:  tagDigest,
		wantTags:    []tagCall{{"localhost:5000/team/app:v1", "localhost:5000/team/app@" + tagDigest.String()}},
	}, {
		name:            "digest reference is neither resolved nor tagged",
		image:           "registry.example.com/team/app@" + pinDigest.String(),
		auth:            kubeletAuth,
		wantForward:     "registry.example.com/team/app@" + pinDigest.String(),
		wantForwardAuth: kubeletAuth,
		wantVerify:      pinDigest,
		wantVerifyCred:  auth.Credential{Username: "kubelet-user", Password: "kubelet-pass"},
	}, {
		name:        "tag and digest is pinned by the digest",
		image:       "registry.example.com/team/app:v1@" + pinDigest.String(),
		wantForward: "registry.example.com/team/app@" + pinDigest.String(),
		wantVerify:  pinDigest,
	}, {
		name:     "uppercase repository",
		image:    "registry.example.com/Team/app:v1",
		wantCode: codes.InvalidArgument,
	}, {
		name:     "bad digest",
		image:    "nginx@sha256:abc",
		wantCode: codes.InvalidArgument,
	}, {
		name:     "empty reference",
		image:    "",
		wantCode: codes.InvalidArgument,
	}, {
		name:     "credentials for another registry",
		image:    "registry.example.com/team/app:v1",
		auth:     &runtimeapi.AuthConfig{ServerAddress: "registry.example.com.evil.io", Username: "u", Password: "p"},
		wantCode: codes.InvalidArgument,
	}, {
		name:            "credentials naming the image's registry",
		image:           "nginx:1.27",
		auth:            &runtimeapi.AuthConfig{ServerAddress: "https://index.docker.io/v1/", Username: "u", Password: "p"},
		wantForward:     "docker.io/library/nginx@" + tagDigest.String(),
		wantForwardAuth: &runtimeapi.AuthConfig{ServerAddress: "https://index.docker.io/v1/", Username: "u", Password: "p"},
		wantResolve:     []auth.Credential{{Username: "u", Password: "p"}},
		wantVerify:      tagDigest,
		wantVerifyCred:  auth.Credential{Username: "u", Password: "p"},
		wantTags:        []tagCall{{"docker.io/library/nginx:1.27", "docker.io/library/nginx@" + tagDigest.String()}},
	}, {
		name:            "auth field is user:password",
		image:           "nginx:1.27",
		auth:            &runtimeapi.AuthConfig{Auth: base64.StdEncoding.EncodeToString([]byte("alice:pw:with:colons"))},
		wantForward:     "docker.io/library/nginx@" + tagDigest.String(),
		wantForwardAuth: &runtimeapi.AuthConfig{Auth: base64.StdEncoding.EncodeToString([]byte("alice:pw:with:colons"))},
		wantResolve:     []auth.Credential{{Username: "alice", Password: "pw:with:colons"}},
		wantVerify:      tagDigest,
		wantVerifyCred:  auth.Credential{Username: "alice", Password: "pw:with:colons"},
		wantTags:        []tagCall{{"docker.io/library/nginx:1.27", "docker.io/library/nginx@" + tagDigest.String()}},
	}, {
		name:     "auth field that is not user:password",
		image:    "nginx:1.27",
		auth:     &runtimeapi.AuthConfig{Auth: base64.StdEncoding.EncodeToString([]byte("alice"))},
		wantCode: codes.InvalidArgument,
	}, {
		name:        "denied by policy",
		image:       "nginx:1.27",
		decide:      deny,
		wantCode:    codes.Unknown,
		wantMsg:     `SignatureValidationFailed: pullgate: docker.io/library/nginx@` + tagDigest.String() + ` denied by policy "internal-apps": no signature by authority "release-key": found 0 signatures`,
		wantResolve: []auth.Credential{{}},
		wantVerify:  tagDigest,
	}, {
		name:  "registry unavailable",
		image: "registry.example.com/team/app:v1",
		resolve: func(img verify.Image, _ auth.Credential) (digest.Digest, error) {
			return "", &verify.RegistryError{Image: img, Unavailable: true, Err: errors.New("dial tcp 10.0.0.1:443: connect: connection refused")}
		},
		wantCode:    codes.Unknown,
		wantPrefix:  "RegistryUnavailable: pullgate: ",
		wantResolve: []auth.Credential{{}},
	}, {
		name:        "denied by name alone: no resolve, no credentials sent",
		image:       "registry.example.com/team/app:v1",
		keyring:     &fakeKeyring{creds: []auth.Credential{nodeA}},
		wantLookups: 1,
		byName:      &verify.Decision{Rule: verify.DefaultRule, Reason: "no policy matches (defaultAction: deny); add a policy for it or set defaultAction: allow"},
		wantCode:    codes.Unknown,
		wantMsg:     "SignatureValidationFailed: pullgate: registry.example.com/team/app:v1 denied: no policy matches (defaultAction: deny); add a policy for it or set defaultAction: allow",
	}, {
		name:  "image cannot prove itself within the bounds",
		image: "registry.example.com/team/app:v1",
		resolve: func(img verify.Image, _ auth.Credential) (digest.Digest, error) {
			return "", &verify.RegistryError{Image: img, Err: &verify.Denial{Reason: "the manifest is larger than 4194304 bytes, the most a registry must accept"}}
		},
		wantCode:    codes.Unknown,
		wantPrefix:  "SignatureValidationFailed: pullgate: resolve registry.example.com/team/app:v1: the manifest is larger",
		wantResolve: []auth.Credential{{}},
	}, {
		name:  "a bound while verifying",
		image: "registry.example.com/team/app:v1",
		decide: func(req verify.Request) (verify.Decision, error) {
			return verify.Decision{Rule: "internal-apps"}, &verify.Denial{Reason: "40 sigstore bundles refer to the image, more than the 32 allowed"}
		},
		wantCode:    codes.Unknown,
		wantPrefix:  "SignatureValidationFailed: pullgate: 40 sigstore bundles",
		wantResolve: []auth.Credential{{}},
		wantVerify:  tagDigest,
	}, {
		name:  "registry's certificate does not verify: a definite answer",
		image: "registry.example.com/team/app:v1",
		resolve: func(img verify.Image, _ auth.Credential) (digest.Digest, error) {
			return "", &verify.RegistryError{Image: img, Err: &url.Error{Op: "Head", URL: "https://registry.example.com/v2/", Err: x509.UnknownAuthorityError{}}}
		},
		wantCode:    codes.Unknown,
		wantPrefix:  "pullgate: resolve registry.example.com/team/app:v1: Head",
		wantResolve: []auth.Credential{{}},
	}, {
		name:  "registry says the tag does not exist",
		image: "registry.example.com/team/app:v1",
		resolve: func(img verify.Image, _ auth.Credential) (digest.Digest, error) {
			return "", &verify.RegistryError{Image: img, Err: &transport.Error{StatusCode: 404}}
		},
		wantCode:    codes.Unknown,
		wantPrefix:  "pullgate: resolve registry.example.com/team/app:v1: ",
		wantResolve: []auth.Credential{{}},
	}, {
		name:  "verification cannot reach the registry",
		image: "registry.example.com/team/app:v1",
		decide: func(req verify.Request) (verify.Decision, error) {
			return verify.Decision{Rule: "internal-apps"}, &verify.RegistryError{Image: req.Image, Unavailable: true, Err: errors.New("503 Service Unavailable")}
		},
		wantCode:    codes.Unknown,
		wantPrefix:  "RegistryUnavailable: pullgate: ",
		wantResolve: []auth.Credential{{}},
		wantVerify:  tagDigest,
	}, {
		name:    "kubelet's credential refused: keyring not consulted",
		image:   "registry.example.com/team/app:v1",
		auth:    kubeletAuth,
		keyring: &fakeKeyring{creds: []auth.Credential{nodeA}},
		resolve: func(verify.Image, auth.Credential) (digest.Digest, error) {
			return "", unauthorized(401)
		},
		wantCode:    codes.Unknown,
		wantPrefix:  "pullgate: ",
		wantResolve: []auth.Credential{{Username: "kubelet-user", Password: "kubelet-pass"}},
	}, {
		name:            "kubelet's credential is used alone",
		image:           "registry.example.com/team/app:v1",
		auth:            kubeletAuth,
		keyring:         &fakeKeyring{creds: []auth.Credential{nodeA, nodeB}},
		wantForward:     "registry.example.com/team/app@" + tagDigest.String(),
		wantForwardAuth: kubeletAuth,
		wantResolve:     []auth.Credential{{Username: "kubelet-user", Password: "kubelet-pass"}},
		wantVerify:      tagDigest,
		wantVerifyCred:  auth.Credential{Username: "kubelet-user", Password: "kubelet-pass"},
		wantTags:        []tagCall{{"registry.example.com/team/app:v1", "registry.example.com/team/app@" + tagDigest.String()}},
	}, {
		name:    "node credentials are tried in order",
		image:   "registry.example.com/team/app:v1",
		keyring: &fakeKeyring{creds: []auth.Credential{nodeA, nodeB}},
		resolve: func(_ verify.Image, c auth.Credential) (digest.Digest, error) {
			if c == nodeB {
				return tagDigest, nil
			}
			return "", unauthorized(401)
		},
		wantForward:     "registry.example.com/team/app@" + tagDigest.String(),
		wantForwardAuth: &runtimeapi.AuthConfig{Username: "node-b", Password: "pass-b", IdentityToken: "id-b"},
		wantResolve:     []auth.Credential{nodeA, nodeB},
		wantVerify:      tagDigest,
		wantVerifyCred:  nodeB,
		wantTags:        []tagCall{{"registry.example.com/team/app:v1", "registry.example.com/team/app@" + tagDigest.String()}},
		wantLookups:     1,
	}, {
		name:    "node credentials refused, anonymous allowed",
		image:   "registry.example.com/team/app:v1",
		keyring: &fakeKeyring{creds: []auth.Credential{nodeA, nodeB}},
		resolve: func(_ verify.Image, c auth.Credential) (digest.Digest, error) {
			if c.IsZero() {
				return tagDigest, nil
			}
			return "", unauthorized(403)
		},
		wantForward: "registry.example.com/team/app@" + tagDigest.String(),
		wantResolve: []auth.Credential{nodeA, nodeB, {}},
		wantVerify:  tagDigest,
		wantTags:    []tagCall{{"registry.example.com/team/app:v1", "registry.example.com/team/app@" + tagDigest.String()}},
		wantLookups: 1,
	}, {
		name:    "a refused node credential after a broken file",
		image:   "registry.example.com/team/app:v1",
		keyring: &fakeKeyring{creds: []auth.Credential{nodeA}, err: errors.New("/root/.docker/config.json: bad json")},
		resolve: func(_ verify.Image, c auth.Credential) (digest.Digest, error) {
			return "", unauthorized(401)
		},
		wantCode:    codes.Unknown,
		wantPrefix:  "pullgate: ",
		wantResolve: []auth.Credential{nodeA, {}},
		wantLookups: 1,
	}, {
		name:        "runtime error passes through",
		image:       "nginx:1.27",
		pullErr:     runtimeErr.Err(),
		wantStatus:  runtimeErr,
		wantForward: "docker.io/library/nginx@" + tagDigest.String(),
		wantResolve: []auth.Credential{{}},
		wantVerify:  tagDigest,
	}, {
		name:        "tag cannot be recorded",
		image:       "nginx:1.27",
		tagErr:      errors.New("images service: unavailable"),
		wantCode:    codes.Unknown,
		wantPrefix:  "pullgate: pulled docker.io/library/nginx@" + tagDigest.String() + " but could not record tag docker.io/library/nginx:1.27: ",
		wantForward: "docker.io/library/nginx@" + tagDigest.String(),
		wantResolve: []auth.Credential{{}},
		wantVerify:  tagDigest,
		wantTags:    []tagCall{{"docker.io/library/nginx:1.27", "docker.io/library/nginx@" + tagDigest.String()}},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rt := &fakeRuntime{fail: func(m string, _ proto.Message) error {
				if m == "PullImage" {
					return tc.pullErr
				}
				return nil
			}}
			s := setup{
				runtime:  rt,
				resolver: &fakeResolver{resolve: tc.resolve},
				verifier: &fakeVerifier{decide: tc.decide, byName: tc.byName},
				tagger:   &fakeTagger{err: tc.tagErr},
			}
			if tc.keyring != nil {
				s.opts = append(s.opts, proxy.WithKeyring(tc.keyring))
			}
			e := start(t, s)
			req := pullRequest(tc.image, tc.auth)
			resp, err := e.imageClient().PullImage(t.Context(), req)

			st := status.Convert(err)
			switch {
			case tc.wantStatus != nil:
				if !proto.Equal(st.Proto(), tc.wantStatus.Proto()) {
					t.Errorf("status = %v, want %v", st.Proto(), tc.wantStatus.Proto())
				}
			case st.Code() != tc.wantCode:
				t.Errorf("code = %v (%v), want %v", st.Code(), err, tc.wantCode)
			case tc.wantMsg != "" && st.Message() != tc.wantMsg:
				t.Errorf("message = %q\nwant      %q", st.Message(), tc.wantMsg)
			case !strings.HasPrefix(st.Message(), tc.wantPrefix):
				t.Errorf("message = %q, want prefix %q", st.Message(), tc.wantPrefix)
			}
			if err == nil && resp.GetImageRef() != imageID {
				t.Errorf("image_ref = %q, want the runtime's %q", resp.GetImageRef(), imageID)
			}
			// A pull the runtime made records whom the registry served the digest to.
			var wantServed []string
			if tc.wantForward != "" && tc.pullErr == nil {
				wantServed = []string{tc.wantForward + " " + tc.wantVerifyCred.Username}
			}
			if got := e.verifier.seenServed(); fmt.Sprint(got) != fmt.Sprint(wantServed) {
				t.Errorf("served = %q, want %q", got, wantServed)
			}

			pulls := rt.callsTo("PullImage")
			if tc.wantForward == "" {
				if len(pulls) != 0 {
					t.Errorf("runtime was asked to pull %v", pulls[0].req)
				}
			} else {
				want := proto.CloneOf(req)
				want.Image.Image = tc.wantForward
				want.Auth = proto.CloneOf(tc.wantForwardAuth)
				if want.Auth != nil && want.Auth.ServerAddress == "" {
					// Forwarded credentials are bound to the registry's own endpoint.
					host, _, _ := strings.Cut(tc.wantForward, "/")
					if host == "docker.io" {
						host = "registry-1.docker.io"
					}
					want.Auth.ServerAddress = "https://" + host
				}
				switch {
				case len(pulls) != 1:
					t.Errorf("runtime got %d pulls, want 1", len(pulls))
				case !proto.Equal(pulls[0].req, want):
					t.Errorf("runtime got %v\nwant        %v", pulls[0].req, want)
				}
			}

			if got := e.resolver.seen(); len(got) != len(tc.wantResolve) {
				t.Errorf("resolved %v, want %v", got, tc.wantResolve)
			} else {
				for i, c := range got {
					if c.cred != tc.wantResolve[i] {
						t.Errorf("resolve %d used %v, want %v", i, c.cred, tc.wantResolve[i])
					}
				}
			}

			vs := e.verifier.seen()
			switch {
			case tc.wantVerify == "" && len(vs) > 0:
				t.Errorf("verifier asked about %v", vs)
			case tc.wantVerify != "" && len(vs) != 1:
				t.Errorf("verifier asked %d times, want once", len(vs))
			case tc.wantVerify != "":
				v := vs[0]
				if v.Digest != tc.wantVerify || v.Namespace != "prod-web" || v.Credential != tc.wantVerifyCred {
					t.Errorf("verifier got digest %s namespace %q credential %v, want %s, prod-web, %v", v.Digest, v.Namespace, v.Credential, tc.wantVerify, tc.wantVerifyCred)
				}
				if want, _ := verify.ParseImage(tc.image); v.Image != want {
					t.Errorf("verifier got image %+v, want %+v", v.Image, want)
				}
			}

			if got := e.tagger.seen(); fmt.Sprint(got) != fmt.Sprint(tc.wantTags) {
				t.Errorf("tags = %v, want %v", got, tc.wantTags)
			}
			if tc.keyring != nil && len(tc.keyring.seen()) != tc.wantLookups {
				t.Errorf("keyring looked up %v, want %d lookups", tc.keyring.seen(), tc.wantLookups)
			}
			if tc.keyring != nil && tc.wantLookups > 0 && tc.keyring.seen()[0] != "registry.example.com/team/app" {
				t.Errorf("keyring looked up %q", tc.keyring.seen()[0])
			}
		})
	}
}

// TestPullImageKubeletClient pulls with kubelet's own client, which keeps only the message of
// an Unknown status: that message is what kubelet classifies and shows in pod events.
func TestPullImageKubeletClient(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		image      string
		decide     func(verify.Request) (verify.Decision, error)
		wantRef    string
		wantErrMsg string
	}{{
		name:    "allowed",
		image:   "registry.example.com/team/app:v1",
		wantRef: imageID,
	}, {
		name:  "denied",
		image: "registry.example.com/team/app:v1",
		decide: func(verify.Request) (verify.Decision, error) {
			return verify.Decision{Rule: "internal-apps", Reason: "unsigned"}, nil
		},
		wantErrMsg: `SignatureValidationFailed: pullgate: registry.example.com/team/app@` + tagDigest.String() + ` denied by policy "internal-apps": unsigned`,
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rt := &fakeRuntime{}
			e := start(t, setup{runtime: rt, verifier: &fakeVerifier{decide: tc.decide}})
			a := &runtimeapi.AuthConfig{Username: "u", Password: "p"}
			ref, err := e.images(t).PullImage(t.Context(), &runtimeapi.ImageSpec{Image: tc.image}, a, sandbox)
			if tc.wantErrMsg != "" {
				if err == nil || err.Error() != tc.wantErrMsg {
					t.Fatalf("error = %v, want %q", err, tc.wantErrMsg)
				}
				return
			}
			if err != nil || ref != tc.wantRef {
				t.Fatalf("PullImage = %q, %v; want %q", ref, err, tc.wantRef)
			}
			want := &runtimeapi.PullImageRequest{
				Image:         &runtimeapi.ImageSpec{Image: "registry.example.com/team/app@" + tagDigest.String()},
				Auth:          &runtimeapi.AuthConfig{Username: "u", Password: "p", ServerAddress: "https://registry.example.com"},
				SandboxConfig: sandbox,
			}
			got := rt.callsTo("PullImage")
			if len(got) != 1 {
				t.Fatalf("runtime got %d pulls, want 1", len(got))
			}
			if !proto.Equal(got[0].req, want) {
				t.Errorf("runtime got %v\nwant        %v", got[0].req, want)
			}
		})
	}
}

// TestPullImageReloadedPolicy checks that the verifier is asked for on every pull, so that a
// reloaded policy applies to the next pull without a restart.
func TestPullImageReloadedPolicy(t *testing.T) {
	t.Parallel()
	allow := &fakeVerifier{}
	deny := &fakeVerifier{decide: func(verify.Request) (verify.Decision, error) {
		return verify.Decision{Rule: "new-rule", Reason: "unsigned"}, nil
	}}
	var current atomic.Pointer[fakeVerifier]
	current.Store(allow)
	e := start(t, setup{verifiers: func() proxy.Verifier { return current.Load() }})
	c := e.imageClient()
	if _, err := c.PullImage(t.Context(), pullRequest("nginx:1.27", nil)); err != nil {
		t.Fatalf("first pull: %v", err)
	}
	current.Store(deny)
	_, err := c.PullImage(t.Context(), pullRequest("nginx:1.27", nil))
	if !strings.Contains(status.Convert(err).Message(), `denied by policy "new-rule"`) {
		t.Fatalf("pull after reload: %v, want denied by new-rule", err)
	}
	if len(allow.seen()) != 1 || len(deny.seen()) != 1 {
		t.Errorf("verifiers asked %d and %d times, want 1 and 1", len(allow.seen()), len(deny.seen()))
	}
}

// With the registry down, a tag pulled and allowed before stands for the digest it was, and a
// digest decided from the node's state is answered from the runtime's store (containerd would
// ask the registry again and fail), but only for a credential the registry served that digest
// to: no request can check this pull's own. A pull the registry answered records whom it served.
func TestPullImageRegistryDown(t *testing.T) {
	t.Parallel()
	const ref = "registry.example.com/team/app:v1"
	pinned := "registry.example.com/team/app@" + tagDigest.String()
	down := func(img verify.Image, _ auth.Credential) (digest.Digest, error) {
		return "", &verify.RegistryError{Image: img, Unavailable: true, Err: errors.New("dial tcp 10.0.0.1:443: connect: connection refused")}
	}
	present := map[string]*runtimeapi.ImageStatusResponse{pinned: {Image: &runtimeapi.Image{Id: imageID}}}
	podA := &runtimeapi.AuthConfig{Username: "pod-a", Password: "secret-a"}
	podB := &runtimeapi.AuthConfig{Username: "pod-b", Password: "secret-b"}
	servedA := pinned + " pod-a"
	tests := []struct {
		name      string
		image     string
		auth      *runtimeapi.AuthConfig
		served    string
		recall    map[string]digest.Digest
		present   map[string]*runtimeapi.ImageStatusResponse
		stored    bool
		wantCode  codes.Code
		wantMsg   string
		wantPulls int
		wantTags  []tagCall
	}{
		{name: "tag recalled, image held", image: ref, auth: podA, served: servedA, recall: map[string]digest.Digest{ref: tagDigest}, present: present,
			wantTags: []tagCall{{ref, pinned}}},
		{name: "tag recalled, image held, served anonymously", image: ref, auth: podB, served: pinned + " ", recall: map[string]digest.Digest{ref: tagDigest}, present: present,
			wantTags: []tagCall{{ref, pinned}}},
		{name: "tag recalled, image held, never served to this credential", image: ref, auth: podB, served: servedA, recall: map[string]digest.Digest{ref: tagDigest}, present: present,
			wantCode: codes.Unknown, wantMsg: "RegistryUnavailable: pullgate: " + pinned + ": the registry cannot be asked now, and it never served this image to the credentials of this pull"},
		{name: "tag recalled, image not held", image: ref, auth: podA, served: servedA, recall: map[string]digest.Digest{ref: tagDigest},
			wantCode: codes.Unknown, wantMsg: "RegistryUnavailable: pullgate: "},
		{name: "tag never allowed here", image: ref, auth: podA, served: servedA, present: present, wantCode: codes.Unknown, wantMsg: "RegistryUnavailable: pullgate: "},
		{name: "digest decided from the state, image held", image: pinned, auth: podA, served: servedA, present: present, stored: true},
		{name: "digest decided from the state, image held, never served to this credential", image: pinned, auth: podB, served: servedA, present: present, stored: true,
			wantCode: codes.Unknown, wantMsg: "RegistryUnavailable: pullgate: " + pinned + ": the registry cannot be asked now, and it never served this image to the credentials of this pull"},
		{name: "digest decided from the state, image not held", image: pinned, auth: podA, stored: true, wantPulls: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rt := &fakeRuntime{statusByImage: tc.present}
			v := &fakeVerifier{recall: tc.recall, served: map[string]bool{}, decide: func(req verify.Request) (verify.Decision, error) {
				if req.Digest != tagDigest {
					t.Errorf("verifier asked about %s, want the recalled %s", req.Digest, tagDigest)
				}
				return verify.Decision{Allowed: true, Rule: "internal-apps", Stored: tc.stored || tc.recall != nil}, nil
			}}
			if tc.served != "" {
				v.served[tc.served] = true
			}
			e := start(t, setup{runtime: rt, resolver: &fakeResolver{resolve: down}, verifier: v})
			resp, err := e.imageClient().PullImage(t.Context(), pullRequest(tc.image, tc.auth))
			if st := status.Convert(err); st.Code() != tc.wantCode || !strings.HasPrefix(st.Message(), tc.wantMsg) {
				t.Fatalf("PullImage = %v, %v; want %v %q", resp, err, tc.wantCode, tc.wantMsg)
			}
			if err == nil && tc.wantPulls == 0 && resp.GetImageRef() != imageID {
				t.Errorf("image_ref = %q, want the held image's %q", resp.GetImageRef(), imageID)
			}
			if n := len(rt.callsTo("PullImage")); n != tc.wantPulls {
				t.Errorf("runtime asked to pull %d times, want %d", n, tc.wantPulls)
			}
			if got := e.tagger.seen(); fmt.Sprint(got) != fmt.Sprint(tc.wantTags) {
				t.Errorf("tags = %v, want %v", got, tc.wantTags)
			}
			// Answered from the store, the pull proves nothing about its credential; one the
			// runtime made does.
			want := []string{}
			if tc.served != "" {
				want = append(want, tc.served)
			}
			if tc.wantPulls > 0 {
				want = append(want, pinned+" pod-a")
			}
			if got := v.seenServed(); fmt.Sprint(got) != fmt.Sprint(slices.Sorted(slices.Values(want))) {
				t.Errorf("served = %q, want %q", got, want)
			}
		})
	}
}

// fakeHolder says which pinned images the runtime holds unpacked.
type fakeHolder struct {
	ids map[string]string
	err error

	mu    sync.Mutex
	asked []string
}

var _ proxy.Holder = (*fakeHolder)(nil)

func (h *fakeHolder) Unpacked(_ context.Context, pinned string) (string, error) {
	h.mu.Lock()
	h.asked = append(h.asked, pinned)
	h.mu.Unlock()
	return h.ids[pinned], h.err
}

func (h *fakeHolder) seen() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.asked)
}

// A pull by tag whose resolved and allowed digest the runtime holds unpacked is answered with
// that image, the tag recorded, without the runtime pulling; anything else goes to the runtime.
func TestPullImageHeld(t *testing.T) {
	t.Parallel()
	const ref = "registry.example.com/team/app:v1"
	pinned := "registry.example.com/team/app@" + tagDigest.String()
	heldID := "sha256:" + strings.Repeat("d", 64)
	held := map[string]string{pinned: heldID, "registry.example.com/team/app@" + pinDigest.String(): heldID}
	tests := []struct {
		name    string
		req     *runtimeapi.PullImageRequest
		holder  *fakeHolder
		deny    bool
		wantRef string
		// wantAsked is whether the holder was asked, wantPulls the runtime's PullImage calls.
		wantAsked bool
		wantPulls int
	}{
		{name: "held", req: kubeletPull(ref, ""), holder: &fakeHolder{ids: held}, wantRef: heldID, wantAsked: true},
		{name: "not held", req: kubeletPull(ref, ""), holder: &fakeHolder{}, wantRef: imageID, wantAsked: true, wantPulls: 1},
		{name: "holder fails", req: kubeletPull(ref, ""), holder: &fakeHolder{ids: held, err: errors.New("content store: unavailable")},
			wantRef: imageID, wantAsked: true, wantPulls: 1},
		// No registry request was made with this pull's credentials yet.
		{name: "pinned by digest", req: kubeletPull("registry.example.com/team/app@"+pinDigest.String(), ""), holder: &fakeHolder{ids: held},
			wantRef: imageID, wantPulls: 1},
		// A runtime handler may unpack for another snapshotter.
		{name: "runtime handler", req: kubeletPull(ref, "kata"), holder: &fakeHolder{ids: held}, wantRef: imageID, wantPulls: 1},
		{name: "denied", req: kubeletPull(ref, ""), holder: &fakeHolder{ids: held}, deny: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rt := &fakeRuntime{}
			v := &fakeVerifier{}
			if tc.deny {
				v.decide = func(verify.Request) (verify.Decision, error) {
					return verify.Decision{Rule: "internal-apps", Reason: "unsigned"}, nil
				}
			}
			e := start(t, setup{runtime: rt, verifier: v, opts: []proxy.Option{proxy.WithHeldImages(tc.holder)}})
			resp, err := e.imageClient().PullImage(t.Context(), tc.req)
			if tc.deny {
				if !strings.HasPrefix(status.Convert(err).Message(), "SignatureValidationFailed: ") || len(tc.holder.seen()) != 0 {
					t.Fatalf("denied pull: %v, holder asked %v; want a denial before the holder", err, tc.holder.seen())
				}
				return
			}
			if err != nil || resp.GetImageRef() != tc.wantRef {
				t.Fatalf("PullImage = %v, %v; want image_ref %s", resp, err, tc.wantRef)
			}
			if asked := len(tc.holder.seen()) > 0; asked != tc.wantAsked {
				t.Errorf("holder asked %v, want asked: %v", tc.holder.seen(), tc.wantAsked)
			}
			if n := len(rt.callsTo("PullImage")); n != tc.wantPulls {
				t.Errorf("runtime asked to pull %d times, want %d", n, tc.wantPulls)
			}
			if img := tc.req.GetImage().GetImage(); strings.Contains(img, ":v1") {
				if got := e.tagger.seen(); len(got) != 1 || got[0] != (tagCall{ref, pinned}) {
					t.Errorf("tags = %v, want %s -> %s", got, ref, pinned)
				}
			}
		})
	}
}

// kubeletPull is a PullImage as kubelet sends it, with an optional runtime handler.
func kubeletPull(image, handler string) *runtimeapi.PullImageRequest {
	return &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: image, RuntimeHandler: handler}, SandboxConfig: sandbox}
}

// Concurrent pulls of one digest with the same credentials are one pull for the runtime; other
// credentials, or another runtime handler, are pulls of their own.
func TestPullImageSharesTheRuntimePull(t *testing.T) {
	t.Parallel()
	const ref = "registry.example.com/team/app:v1"
	release := make(chan struct{})
	rt := &fakeRuntime{fail: func(method string, _ proto.Message) error {
		if method == "PullImage" {
			<-release
		}
		return nil
	}}
	e := start(t, setup{runtime: rt})
	kubeletAuth := &runtimeapi.AuthConfig{Username: "kubelet-user", Password: "kubelet-pass"}
	pull := func(a *runtimeapi.AuthConfig, handler string) <-chan error {
		done := make(chan error, 1)
		go func() {
			req := kubeletPull(ref, handler)
			req.Auth = a
			resp, err := e.imageClient().PullImage(t.Context(), req)
			if err == nil && resp.GetImageRef() != imageID {
				err = fmt.Errorf("image_ref %q, want %q", resp.GetImageRef(), imageID)
			}
			done <- err
		}()
		return done
	}
	const n = 5
	var same []<-chan error
	for range n {
		same = append(same, pull(kubeletAuth, ""))
	}
	fwd := kubeletPull("registry.example.com/team/app@"+tagDigest.String(), "")
	fwd.Auth = &runtimeapi.AuthConfig{Username: "kubelet-user", Password: "kubelet-pass", ServerAddress: "https://registry.example.com"}
	for proxy.RuntimePullsWaiting(e.proxy, fwd) < n {
		if len(rt.callsTo("PullImage")) > 1 {
			t.Fatalf("%d runtime pulls for one digest and credential", len(rt.callsTo("PullImage")))
		}
		time.Sleep(time.Millisecond)
	}
	others := []<-chan error{pull(&runtimeapi.AuthConfig{Username: "other", Password: "x"}, ""), pull(kubeletAuth, "kata")}
	for len(rt.callsTo("PullImage")) < 3 {
		time.Sleep(time.Millisecond)
	}
	close(release)
	for _, done := range append(same, others...) {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if got := len(rt.callsTo("PullImage")); got != 3 {
		t.Errorf("runtime pulled %d times, want 3: one for the %d alike, one for other credentials, one for another runtime handler", got, n)
	}
}
