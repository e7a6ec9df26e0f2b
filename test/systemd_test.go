package test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/pullgate/pullgate/test/harness"
)

// pullgate tells systemd READY=1 only once the runtime answers, then pings the watchdog.
func TestNotifyReadyAndWatchdog(t *testing.T) {
	t.Parallel()
	ctrd := harness.StartContainerd(t, harness.ContainerdBinaries(t)["1.6"])
	dir := tempDir(t, "pg-notify-")
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(dir, "notify.sock"), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { notify.Close() })
	messages := make(chan string, 64)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := notify.Read(buf)
			if err != nil {
				return
			}
			messages <- string(buf[:n])
		}
	}()

	// The runtime's socket appears only after pullgate started.
	runtimeSock := filepath.Join(dir, "runtime.sock")
	cfg := writeConfig(t, dir, filepath.Join(dir, "pullgate.sock"), "unix://"+runtimeSock)
	cmd := exec.Command(harness.PullgateBinary(t), "serve", "--config", cfg)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+notify.LocalAddr().String(), "WATCHDOG_USEC=4000000")
	logs := startLogged(t, cmd)

	logs.wait(t, "not ready yet, retrying")
	// A reload during start-up says nothing to systemd either.
	cmd.Process.Signal(syscall.SIGHUP)
	logs.wait(t, "configuration reloaded")
	select {
	case m := <-messages:
		t.Fatalf("pullgate sent %q before the runtime answered", m)
	default:
	}
	if err := os.Symlink(ctrd.Socket, runtimeSock); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"READY=1", "WATCHDOG=1", "WATCHDOG=1"} {
		select {
		case m := <-messages:
			if m != want {
				t.Fatalf("notify message %q, want %q\n%s", m, want, logs)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("no %q on NOTIFY_SOCKET\n%s", want, logs)
		}
	}
}

// With the socket held by someone else (systemd's pullgate.socket), a client that connects
// while pullgate restarts waits in the socket's queue and is served by the next process.
func TestSocketActivationRestart(t *testing.T) {
	t.Parallel()
	ctrd := harness.StartContainerd(t, harness.ContainerdBinaries(t)["1.6"])
	dir := tempDir(t, "pg-restart-")
	sock := filepath.Join(dir, "held.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	held, err := l.File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { held.Close() })
	configured := filepath.Join(dir, "configured.sock")
	cfg := writeConfig(t, dir, configured, ctrd.Endpoint)

	// As systemd does: the socket as fd 3, LISTEN_PID naming the process that gets it.
	start := func() (*exec.Cmd, *lineLog) {
		cmd := exec.Command("/bin/sh", "-c", `export LISTEN_PID=$$ LISTEN_FDS=1; exec "$0" "$@"`, harness.PullgateBinary(t), "serve", "--config", cfg)
		cmd.ExtraFiles = []*os.File{held}
		return cmd, startLogged(t, cmd)
	}
	first, firstLogs := start()
	images := imageService(t, "unix://"+sock)
	if _, err := images.ImageFsInfo(t.Context()); err != nil {
		t.Fatalf("ImageFsInfo through the held socket: %v\n%s", err, firstLogs)
	}
	first.Process.Signal(syscall.SIGTERM)
	if err := first.Wait(); err != nil {
		t.Fatalf("first pullgate: %v\n%s", err, firstLogs)
	}

	// No pullgate runs now. A client connects: the connection is accepted by the kernel, not refused.
	dialed := make(chan struct{})
	var once sync.Once
	conn, err := grpc.NewClient("passthrough:///pullgate", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, "unix", sock)
			if err == nil {
				once.Do(func() { close(dialed) })
			}
			return c, err
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	errc := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
		defer cancel()
		_, err := runtimeapi.NewImageServiceClient(conn).ImageFsInfo(ctx, &runtimeapi.ImageFsInfoRequest{})
		errc <- err
	}()
	select {
	case <-dialed:
	case err := <-errc:
		t.Fatalf("call while no pullgate runs: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("could not connect while no pullgate runs")
	}
	select {
	case err := <-errc:
		t.Fatalf("call answered while no pullgate runs: %v", err)
	default:
	}

	_, secondLogs := start()
	if err := <-errc; err != nil {
		t.Fatalf("call made during the restart: %v\n%s", err, secondLogs)
	}
	if _, err := os.Stat(configured); err == nil {
		t.Errorf("pullgate created %s although it was passed a socket", configured)
	}
}

func tempDir(t *testing.T, prefix string) string {
	t.Helper()
	// Under /tmp: Unix socket paths must stay short.
	dir, err := os.MkdirTemp("/tmp", prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func writeConfig(t *testing.T, dir, listen, runtimeEndpoint string) string {
	t.Helper()
	path := filepath.Join(dir, "config.yaml")
	config := fmt.Sprintf("apiVersion: pullgate.io/v1alpha1\nkind: PullgateConfig\nlisten: unix://%s\nruntimeEndpoint: %s\nstateDir: %s\nmetricsAddress: \"\"\ndefaultAction: allow\n", listen, runtimeEndpoint, dir)
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// lineLog collects a process's output and lets a test wait for a line.
type lineLog struct {
	mu    sync.Mutex
	lines []string
	added chan struct{}
}

// startLogged starts cmd, collects its output, and stops it with SIGTERM when the test ends.
func startLogged(t *testing.T, cmd *exec.Cmd) *lineLog {
	t.Helper()
	r, w := io.Pipe()
	cmd.Stdout, cmd.Stderr = w, w
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	l := &lineLog{added: make(chan struct{}, 1)}
	go func() {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			l.mu.Lock()
			l.lines = append(l.lines, sc.Text())
			l.mu.Unlock()
			select {
			case l.added <- struct{}{}:
			default:
			}
		}
	}()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Signal(syscall.SIGTERM)
			cmd.Wait()
		}
		w.Close()
	})
	return l
}

func (l *lineLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

func (l *lineLog) wait(t *testing.T, substr string) {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		if strings.Contains(l.String(), substr) {
			return
		}
		select {
		case <-l.added:
		case <-timeout:
			t.Fatalf("no log line with %q:\n%s", substr, l)
		}
	}
}
