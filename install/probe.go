package install

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Command runs systemctl as the words of a command line: {"systemctl"} on the host.
type Command []string

var _ Systemctl = Command(nil)

func (c Command) Run(ctx context.Context, args ...string) error {
	return run(exec.CommandContext(ctx, c[0], append(c[1:len(c):len(c)], args...)...))
}

// HostSystemctl reaches the host's systemd from a privileged container with hostPID: the host's
// own nsenter, run inside the host's root, enters the mount, UTS, IPC, network and PID
// namespaces of the host's init and runs systemctl there. The installer image then needs
// nothing but pullgate itself.
type HostSystemctl struct {
	// Root is the host's root directory, as mounted in the container.
	Root string
}

var _ Systemctl = HostSystemctl{}

// nsenterPaths are where distributions keep util-linux's nsenter.
var nsenterPaths = []string{"/usr/bin/nsenter", "/bin/nsenter", "/usr/sbin/nsenter", "/sbin/nsenter"}

func (h HostSystemctl) Run(ctx context.Context, args ...string) error {
	nsenter := ""
	for _, p := range nsenterPaths {
		if fi, err := os.Stat(filepath.Join(h.Root, p)); err == nil && fi.Mode().IsRegular() {
			nsenter = p
			break
		}
	}
	if nsenter == "" {
		return fmt.Errorf("no nsenter on the host under %s (looked in %s): install util-linux on the node", h.Root, strings.Join(nsenterPaths, ", "))
	}
	cmd := exec.CommandContext(ctx, nsenter, append([]string{"--target", "1", "--mount", "--uts", "--ipc", "--net", "--pid", "--", "systemctl"}, args...)...)
	// The path is looked up before the chroot, so it must be absolute inside the host's root.
	cmd.Path = nsenter
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: h.Root}
	return run(cmd)
}

func run(cmd *exec.Cmd) error {
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(cmd.Args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// CRIProbe calls Version and ImageFsInfo through the socket, as kubelet does first, until both
// answer or ctx ends.
func CRIProbe(ctx context.Context, socket string) error {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("probe %s: %w", socket, err)
	}
	defer conn.Close()
	for {
		err := probeOnce(ctx, conn)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("probe %s: %w", socket, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func probeOnce(ctx context.Context, conn *grpc.ClientConn) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := runtimeapi.NewRuntimeServiceClient(conn).Version(ctx, &runtimeapi.VersionRequest{}); err != nil {
		return fmt.Errorf("Version: %w", err)
	}
	if _, err := runtimeapi.NewImageServiceClient(conn).ImageFsInfo(ctx, &runtimeapi.ImageFsInfoRequest{}); err != nil {
		return fmt.Errorf("ImageFsInfo: %w", err)
	}
	return nil
}
