package install

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Command runs systemctl as the words of a command line: {"systemctl"} on the host, or
// HostSystemctl from a container that shares the host's PID namespace.
type Command []string

var _ Systemctl = Command(nil)

// HostSystemctl reaches the host's systemd from a privileged container with hostPID, through
// the mount, UTS, IPC, network and PID namespaces of the host's init.
var HostSystemctl = Command{"nsenter", "--target", "1", "--mount", "--uts", "--ipc", "--net", "--pid", "--", "systemctl"}

func (c Command) Run(ctx context.Context, args ...string) error {
	argv := append(c[1:len(c):len(c)], args...)
	out, err := exec.CommandContext(ctx, c[0], argv...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", c[0], strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
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
