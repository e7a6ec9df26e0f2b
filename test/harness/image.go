package harness

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// BusyboxPath is Debian's statically linked busybox (package busybox-static), the one program in
// the images that containers run.
const BusyboxPath = "/bin/busybox"

// busyboxApplets are linked to busybox in the images, for scripts and exec probes.
var busyboxApplets = []string{"sh", "sleep", "echo", "cat", "true"}

var (
	busyboxOnce  sync.Once
	busyboxLayer v1.Layer
	busyboxErr   error
)

// PushShellImage pushes repo:tag, an image for the host's platform that runs `sh -c script` with
// Debian's static busybox, and returns it. Images with different scripts have different digests.
func (r *Registry) PushShellImage(t T, repo, tag, script string) v1.Image {
	t.Helper()
	img := shellImage(t, script)
	if err := remote.Write(r.tag(t, repo, tag), img, r.remoteOptions()...); err != nil {
		t.Fatalf("push %s/%s:%s: %v", r.Host, repo, tag, err)
	}
	return img
}

// Push pushes img as repo:tag.
func (r *Registry) Push(t T, repo, tag string, img v1.Image) {
	t.Helper()
	if err := remote.Write(r.tag(t, repo, tag), img, r.remoteOptions()...); err != nil {
		t.Fatalf("push %s/%s:%s: %v", r.Host, repo, tag, err)
	}
}

// shellImage is the image PushShellImage pushes.
func shellImage(t T, script string) v1.Image {
	t.Helper()
	busyboxOnce.Do(func() { busyboxLayer, busyboxErr = makeBusyboxLayer() })
	if busyboxErr != nil {
		Missing(t, busyboxErr.Error())
	}
	img, err := mutate.AppendLayers(empty.Image, busyboxLayer)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Config.Env = []string{"PATH=/bin"}
	cf.Config.Cmd = []string{"/bin/sh", "-c", script}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// makeBusyboxLayer makes a layer holding /bin/busybox and its applets' links.
func makeBusyboxLayer() (v1.Layer, error) {
	bin, err := os.ReadFile(BusyboxPath)
	if err != nil {
		return nil, fmt.Errorf("%w: install Debian's busybox-static package", err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	headers := []*tar.Header{
		{Typeflag: tar.TypeDir, Name: "bin/", Mode: 0o755},
		{Typeflag: tar.TypeDir, Name: "tmp/", Mode: 0o1777},
		{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755, Size: int64(len(bin))},
	}
	for _, a := range busyboxApplets {
		headers = append(headers, &tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + a, Linkname: "busybox", Mode: 0o777})
	}
	for _, h := range headers {
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if h.Name == "bin/busybox" {
			if _, err := tw.Write(bin); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
}
