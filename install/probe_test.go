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
	const settle = 100 * time.Millisecond
	for _, tc := range []struct {
		name      string
		settle    time.Duration
		status    func(call int32) int // of the nth call, from 1
		wantErr   string               // with the deadline
		wantCalls int32                // at least
	}{
		{name: "no settle period", status: func(int32) int { return 200 }, wantCalls: 1},
		{name: "down, then up", settle: settle, status: func(n int32) int { return map[bool]int{true: 500, false: 200}[n < 3] }, wantCalls: 4},
		// The first 200 alone does not count, nor a run of them broken by a failure.
		{name: "a failure starts again", settle: settle, status: func(n int32) int { return map[bool]int{true: 500, false: 200}[n == 2] }, wantCalls: 4},
		{name: "flapping", settle: settle, status: func(n int32) int { return map[bool]int{true: 500, false: 200}[n%2 == 0] }, wantErr: "500 Internal Server Error"},
		{name: "down", settle: settle, status: func(int32) int { return 503 }, wantErr: "503"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var calls atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				w.WriteHeader(tc.status(calls.Add(1)))
			}))
			t.Cleanup(srv.Close)
			ctx, cancel := context.WithTimeout(t.Context(), 4*settle)
			defer cancel()
			err := HTTPHealth(srv.URL, tc.settle)(ctx)
			if tc.wantErr != "" {
				if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("HTTPHealth = %v, want the deadline and %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || calls.Load() < tc.wantCalls {
				t.Fatalf("HTTPHealth = %v after %d calls, want healthy after %d at least", err, calls.Load(), tc.wantCalls)
			}
		})
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
