package install

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func TestCommand(t *testing.T) {
	t.Parallel()
	out := filepath.Join(t.TempDir(), "args")
	c := Command{"sh", "-c", `echo "$@" > ` + out + `; [ "$1" != fail ] || { echo broken >&2; exit 3; }`, "sh"}
	if err := c.Run(t.Context(), "restart", "kubelet.service"); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(out); string(got) != "restart kubelet.service\n" {
		t.Errorf("ran with %q", got)
	}
	if err := c.Run(t.Context(), "fail"); err == nil || !strings.Contains(err.Error(), "broken") {
		t.Errorf("Run = %v, want the command's output in the error", err)
	}
}

func TestHTTPHealth(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if calls.Add(1) < 3 {
			http.Error(w, "not yet", http.StatusInternalServerError)
		}
	}))
	t.Cleanup(srv.Close)
	if err := HTTPHealth(srv.URL)(t.Context()); err != nil || calls.Load() != 3 {
		t.Fatalf("HTTPHealth = %v after %d calls, want healthy on the third", err, calls.Load())
	}
	never := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "no", http.StatusServiceUnavailable) }))
	t.Cleanup(never.Close)
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	if err := HTTPHealth(never.URL)(ctx); !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "503") {
		t.Fatalf("HTTPHealth = %v, want the deadline and the last answer", err)
	}
}

type criServer struct {
	runtimeapi.UnimplementedRuntimeServiceServer
	runtimeapi.UnimplementedImageServiceServer
	calls atomic.Int32
}

func (s *criServer) Version(context.Context, *runtimeapi.VersionRequest) (*runtimeapi.VersionResponse, error) {
	s.calls.Add(1)
	return &runtimeapi.VersionResponse{RuntimeName: "fake"}, nil
}

func (s *criServer) ImageFsInfo(context.Context, *runtimeapi.ImageFsInfoRequest) (*runtimeapi.ImageFsInfoResponse, error) {
	s.calls.Add(1)
	return &runtimeapi.ImageFsInfoResponse{}, nil
}

func TestCRIProbe(t *testing.T) {
	t.Parallel()
	dir, err := os.MkdirTemp("/tmp", "pg-probe-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "cri.sock")

	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	if err := CRIProbe(ctx, sock); err == nil {
		t.Fatal("CRIProbe of a socket nobody serves succeeded")
	}

	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	fake := &criServer{}
	srv := grpc.NewServer()
	runtimeapi.RegisterRuntimeServiceServer(srv, fake)
	runtimeapi.RegisterImageServiceServer(srv, fake)
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	if err := CRIProbe(t.Context(), sock); err != nil || fake.calls.Load() != 2 {
		t.Fatalf("CRIProbe = %v with %d calls, want Version and ImageFsInfo answered", err, fake.calls.Load())
	}
}

// HostSystemctl runs the host's own nsenter inside the host's root. The host here is a
// directory with Debian's static busybox as its shell and an nsenter that records its words.
func TestHostSystemctl(t *testing.T) {
	t.Parallel()
	busybox, err := os.ReadFile("/bin/busybox")
	if err != nil || os.Geteuid() != 0 {
		msg := "needs root and Debian's busybox-static package (apt-get install busybox-static)"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	root := t.TempDir()
	for path, content := range map[string]string{
		"bin/busybox":     string(busybox),
		"usr/bin/nsenter": "#!/bin/sh\ncase \"$*\" in *fail*) echo broken >&2; exit 3;; esac\necho \"$@\" > /args\n",
		"etc/os-release":  "ID=test\n",
	} {
		p := filepath.Join(root, path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("busybox", filepath.Join(root, "bin/sh")); err != nil {
		t.Fatal(err)
	}
	h := HostSystemctl{Root: root}
	if err := h.Run(t.Context(), "restart", "pullgate.service"); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(root, "args")); string(got) != "--target 1 --mount --uts --ipc --net --pid -- systemctl restart pullgate.service\n" {
		t.Errorf("the host's nsenter ran with %q", got)
	}
	if err := h.Run(t.Context(), "start", "fail"); err == nil || !strings.Contains(err.Error(), "broken") {
		t.Errorf("Run = %v, want nsenter's output in the error", err)
	}
	if err := (HostSystemctl{Root: t.TempDir()}).Run(t.Context(), "start", "x"); err == nil || !strings.Contains(err.Error(), "install util-linux") {
		t.Errorf("Run without nsenter on the host = %v", err)
	}
}
