package harness_test

import (
	"errors"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"go.opentelemetry.io/otel/trace/noop"
	internalapi "k8s.io/cri-api/pkg/apis"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	remoteclient "k8s.io/cri-client/pkg"

	"github.com/pullgate/pullgate/test/harness"
)

const timeout = 30 * time.Second

// TestContainerd pulls through each containerd version's CRI, with kubelet's own client, from
// registries that require basic and token auth.
func TestContainerd(t *testing.T) {
	for version, bin := range harness.ContainerdBinaries(t) {
		t.Run(version, func(t *testing.T) {
			t.Parallel()
			ctrd := harness.StartContainerd(t, bin)
			if !strings.HasPrefix(ctrd.Version, strings.TrimSuffix(version, "x")) {
				t.Errorf("Version = %q, want %s", ctrd.Version, version)
			}
			images := imageService(t, ctrd.Endpoint)

			t.Run("RuntimeService", func(t *testing.T) {
				rs, err := remoteclient.NewRemoteRuntimeService(t.Context(), ctrd.Endpoint, timeout, noop.NewTracerProvider(), false)
				if err != nil {
					t.Fatal(err)
				}
				v, err := rs.Version(t.Context(), "v1")
				if err != nil {
					t.Fatalf("Version: %v", err)
				}
				if v.RuntimeName != "containerd" || !strings.Contains(ctrd.Version, strings.TrimPrefix(v.RuntimeVersion, "v")) {
					t.Errorf("Version = %s %s, want containerd %s", v.RuntimeName, v.RuntimeVersion, ctrd.Version)
				}
				if _, err := rs.Status(t.Context(), false); err != nil {
					t.Errorf("Status: %v", err)
				}
			})

			for _, tc := range []struct {
				name string
				opts []harness.RegistryOption
			}{
				{name: "basic", opts: []harness.RegistryOption{harness.WithUser("alice", "wonderland")}},
				{name: "token", opts: []harness.RegistryOption{harness.WithUser("alice", "wonderland"), harness.WithTokenAuth()}},
			} {
				t.Run(tc.name, func(t *testing.T) {
					reg := harness.StartRegistry(t, tc.opts...)
					ctrd.HostsTOML(reg.Host, reg.URL, "")
					testPull(t, images, reg)
				})
			}

			t.Run("Restart", func(t *testing.T) {
				reg := harness.StartRegistry(t)
				ctrd.HostsTOML(reg.Host, reg.URL, "")
				img := reg.PushRandomImage(t, "restart", "v1")
				ref := reg.Host + "/restart:v1"
				pull(t, images, ref, reg.Username, reg.Password)

				ctrd.Stop()
				if _, err := images.ImageStatus(t.Context(), &runtimeapi.ImageSpec{Image: ref}, false); err == nil {
					t.Error("ImageStatus answered while containerd was stopped")
				}
				ctrd.Start()
				// The same root: the image pulled before the restart is still there.
				wantImage(t, images, ref, configName(t, img))
			})
		})
	}
}

func testPull(t *testing.T, images internalapi.ImageManagerService, reg *harness.Registry) {
	img := reg.PushRandomImage(t, "app", "v1")
	ref := reg.Host + "/app:v1"
	digest, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}

	if _, err := images.PullImage(t.Context(), &runtimeapi.ImageSpec{Image: ref}, &runtimeapi.AuthConfig{Username: reg.Username, Password: "wrong"}, nil); err == nil {
		t.Fatal("PullImage with a wrong password succeeded")
	}
	if _, err := images.PullImage(t.Context(), &runtimeapi.ImageSpec{Image: ref}, nil, nil); err == nil {
		t.Fatal("PullImage without credentials succeeded")
	}
	if got := reg.Requests(); got.Unauthorized == 0 || got.BlobGET != 0 {
		t.Errorf("after denied pulls: Requests = %+v, want some Unauthorized and no BlobGET", got)
	}

	reg.Reset()
	pull(t, images, ref, reg.Username, reg.Password)
	got := reg.Requests()
	if got.ManifestHEAD["app:v1"]+got.ManifestGET["app:v1"] == 0 || got.BlobGET == 0 {
		t.Errorf("after pull: Requests = %+v, want manifest requests for app:v1 and blob GETs", got)
	}
	st := wantImage(t, images, ref, configName(t, img))
	if want := reg.Host + "/app@" + digest.String(); !slices.Contains(st.RepoDigests, want) {
		t.Errorf("RepoDigests = %v, want %s", st.RepoDigests, want)
	}

	list, err := images.ListImages(t.Context(), nil)
	if err != nil {
		t.Fatalf("ListImages: %v", err)
	}
	if !slices.ContainsFunc(list, func(i *runtimeapi.Image) bool { return slices.Contains(i.RepoTags, ref) }) {
		t.Errorf("ListImages has no %s", ref)
	}

	// Moving the tag is seen by the next pull.
	img2 := reg.PushRandomImage(t, "app", "v2")
	digest2, err := img2.Digest()
	if err != nil {
		t.Fatal(err)
	}
	reg.Tag(t, "app", "v1", digest2)
	pull(t, images, ref, reg.Username, reg.Password)
	wantImage(t, images, ref, configName(t, img2))

	// An index resolves to the image for this platform.
	idx := reg.PushIndex(t, "multi", "v1", "linux/s390x", "linux/"+runtime.GOARCH)
	pull(t, images, reg.Host+"/multi:v1", reg.Username, reg.Password)
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	var want string
	for _, m := range im.Manifests {
		if m.Platform.Architecture == runtime.GOARCH {
			sub, err := idx.Image(m.Digest)
			if err != nil {
				t.Fatal(err)
			}
			want = configName(t, sub)
		}
	}
	wantImage(t, images, reg.Host+"/multi:v1", want)
}

func imageService(t *testing.T, endpoint string) internalapi.ImageManagerService {
	t.Helper()
	s, err := remoteclient.NewRemoteImageService(t.Context(), endpoint, timeout, noop.NewTracerProvider(), false)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func pull(t *testing.T, images internalapi.ImageManagerService, ref, user, pass string) {
	t.Helper()
	if _, err := images.PullImage(t.Context(), &runtimeapi.ImageSpec{Image: ref}, &runtimeapi.AuthConfig{Username: user, Password: pass}, nil); err != nil {
		t.Fatalf("PullImage %s: %v", ref, err)
	}
}

// wantImage checks that ImageStatus by ref finds the image with the config digest id.
func wantImage(t *testing.T, images internalapi.ImageManagerService, ref, id string) *runtimeapi.Image {
	t.Helper()
	st, err := images.ImageStatus(t.Context(), &runtimeapi.ImageSpec{Image: ref}, false)
	if err != nil {
		t.Fatalf("ImageStatus %s: %v", ref, err)
	}
	if st.Image == nil {
		t.Fatalf("ImageStatus %s: not found", ref)
	}
	if st.Image.Id != id {
		t.Errorf("ImageStatus %s: id %s, want %s", ref, st.Image.Id, id)
	}
	return st.Image
}

// configName is the image id CRI reports: the digest of the image's config.
func configName(t *testing.T, img v1.Image) string {
	t.Helper()
	h, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	return h.String()
}

// TestRegistry checks the auth layer and the counters with go-containerregistry's client.
func TestRegistry(t *testing.T) {
	for _, tc := range []struct {
		name      string
		opts      []harness.RegistryOption
		challenge string
	}{
		{name: "basic", challenge: `Basic realm="pullgate-test"`},
		{name: "token", opts: []harness.RegistryOption{harness.WithTokenAuth()}, challenge: `Bearer realm="http://HOST/token",service="pullgate-test",scope="repository:app:pull"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			reg := harness.StartRegistry(t, append(tc.opts, harness.WithUser("bob", "builder"), harness.WithUser("carol", "secret"))...)
			if reg.Username != "bob" {
				t.Errorf("Username = %q, want the first user", reg.Username)
			}
			img := reg.PushRandomImage(t, "app", "v1")
			digest, err := img.Digest()
			if err != nil {
				t.Fatal(err)
			}
			if got := reg.Requests(); got.Unauthorized != 0 || len(got.ManifestHEAD) != 0 || len(got.ManifestGET) != 0 {
				t.Errorf("pushing counted requests: %+v", got)
			}

			resp, err := http.Head(reg.URL + "/v2/app/manifests/v1")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			want := strings.ReplaceAll(tc.challenge, "HOST", reg.Host)
			if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") != want {
				t.Errorf("anonymous HEAD: %d %q, want 401 %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"), want)
			}

			ref, err := name.ParseReference(reg.Host + "/app:v1")
			if err != nil {
				t.Fatal(err)
			}
			for _, auth := range []authn.Authenticator{authn.Anonymous, &authn.Basic{Username: "carol", Password: "wrong"}} {
				if _, err := remote.Head(ref, remote.WithAuth(auth)); err == nil {
					t.Errorf("HEAD with %v succeeded", auth)
				}
			}
			reg.Reset()
			for _, user := range [][2]string{{"bob", "builder"}, {"carol", "secret"}} {
				desc, err := remote.Head(ref, remote.WithAuth(&authn.Basic{Username: user[0], Password: user[1]}))
				if err != nil {
					t.Fatalf("HEAD as %s: %v", user[0], err)
				}
				if desc.Digest != digest {
					t.Errorf("HEAD digest %s, want %s", desc.Digest, digest)
				}
			}
			pulled, err := remote.Image(ref.Context().Digest(digest.String()), remote.WithAuth(&authn.Basic{Username: "bob", Password: "builder"}))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := pulled.ConfigFile(); err != nil {
				t.Fatal(err)
			}
			got := reg.Requests()
			if got.ManifestHEAD["app:v1"] != 2 || got.ManifestGET["app@"+digest.String()] != 1 || got.BlobGET != 1 {
				t.Errorf("Requests = %+v, want 2 HEAD app:v1, 1 GET app@%s, 1 blob GET", got, digest)
			}
			if tc.name == "token" && got.Tokens == 0 {
				t.Errorf("Requests.Tokens = 0 in token mode")
			}
		})
	}
}

// TestKubeletStaleSocket starts kubelet where an earlier kubelet left its device-plugin socket, as
// on a machine where kubelet ran before: first over a stale socket made here, then over the one
// the first kubelet left when it stopped. Each must come up healthy and serve a socket of its
// own, whatever inode the file system gives it (it may well be the stale socket's).
func TestKubeletStaleSocket(t *testing.T) {
	bin := harness.KubeletBinary(t)
	ctrd := harness.StartContainerd(t, harness.Containerd2Binary(t))
	endpoints := harness.KubeletEndpoints{Runtime: ctrd.Endpoint, Image: ctrd.Endpoint}
	for _, name := range []string{"AfterEarlierRun", "AfterFirst"} {
		t.Run(name, func(t *testing.T) {
			before := staleSocket(t)
			k := harness.StartKubelet(t, bin, endpoints, nil)
			c, err := net.Dial("unix", harness.DevicePluginSocket)
			if err != nil {
				t.Fatalf("StartKubelet returned, but its device-plugin socket refuses: %v", err)
			}
			c.Close()
			if err := k.Exited(); err != nil {
				t.Fatal(err)
			}
			t.Logf("device-plugin socket: inode %d before kubelet started, %d after", before, inode(t, harness.DevicePluginSocket))
		})
	}
}

// staleSocket makes sure that a socket no one listens on is at harness.DevicePluginSocket, and
// returns its inode: the one an earlier kubelet left, or else a new one.
func staleSocket(t *testing.T) uint64 {
	t.Helper()
	unlock, err := harness.LockKubeletStarts()
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	path := harness.DevicePluginSocket
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&fs.ModeSocket != 0 {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Logf("%s: left by an earlier kubelet: %v", path, err)
			return inode(t, path)
		}
		c.Close() // a kubelet of another test listens on it: make a stale one instead
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		t.Fatal(err)
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false) // as a kubelet that stopped leaves it
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: made stale", path)
	return inode(t, path)
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}
