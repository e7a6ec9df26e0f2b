package harness

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"time"
)

// Pullgate is a `pullgate serve` process.
type Pullgate struct {
	Socket     string // path of its CRI socket
	Endpoint   string // "unix://" + Socket
	MetricsURL string // "http://127.0.0.1:PORT"
	ConfigPath string
	// StateDir is its state directory, unless StartPullgate's args named another.
	StateDir string

	t    T
	bin  string
	args []string
	cmd  *exec.Cmd
	logs *syncBuffer
	done chan struct{}
	err  error
}

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
)

// PullgateBinary returns the pullgate binary under test: $PULLGATE_BIN (the Makefile builds it
// once for the whole run), or one built now, once per test binary.
func PullgateBinary(t T) string {
	t.Helper()
	if p := os.Getenv("PULLGATE_BIN"); p != "" {
		return p
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "pullgate-bin-")
		if err != nil {
			buildErr = err
			return
		}
		buildPath = filepath.Join(dir, "pullgate")
		_, file, _, _ := runtime.Caller(0)
		cmd := exec.Command("go", "build", "-o", buildPath, "./cmd/pullgate")
		cmd.Dir = filepath.Join(filepath.Dir(file), "..", "..")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0") // as the Makefile builds it
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/pullgate: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildPath
}

// StartPullgate runs `pullgate serve` with config (YAML) and waits until it accepts connections.
// Its state is kept in a directory of its own unless args (added to the command line) name
// another with --state-dir. It is stopped with SIGTERM when the test ends; its log is shown if
// the test failed.
func StartPullgate(t T, bin, config string, args ...string) *Pullgate {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "pg-gate-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	p := &Pullgate{t: t, bin: bin, Socket: filepath.Join(dir, "pullgate.sock"), ConfigPath: filepath.Join(dir, "config.yaml"), logs: &syncBuffer{}}
	p.Endpoint = "unix://" + p.Socket
	p.StateDir = filepath.Join(dir, "state")
	if err := os.WriteFile(p.ConfigPath, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	p.args = append([]string{"serve", "--config", p.ConfigPath, "--listen", p.Endpoint, "--state-dir", p.StateDir}, args...)
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("pullgate log:\n%s", p.Logs())
		}
	})
	p.start()
	return p
}

// Restart stops pullgate with SIGTERM and starts it again, on the same socket, configuration
// and state, as systemd restarts it.
func (p *Pullgate) Restart() {
	p.t.Helper()
	p.stop()
	p.start()
}

func (p *Pullgate) start() {
	p.t.Helper()
	served := len(p.LogLines("metrics serving"))
	p.cmd = exec.Command(p.bin, p.args...)
	p.cmd.Stdout = p.logs
	p.cmd.Stderr = p.logs
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p.done = make(chan struct{})
	if err := p.cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	cmd, done := p.cmd, p.done
	go func() { p.err = cmd.Wait(); close(done) }()
	deadline := time.Now().Add(startTimeout)
	for {
		if c, err := net.Dial("unix", p.Socket); err == nil {
			c.Close()
			break
		}
		select {
		case <-done:
			p.t.Fatalf("pullgate exited: %v\n%s", p.err, p.Logs())
		default:
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("pullgate did not listen on %s within %s\n%s", p.Socket, startTimeout, p.Logs())
		}
		time.Sleep(20 * time.Millisecond)
	}
	for time.Now().Before(deadline) {
		if lines := p.LogLines("metrics serving"); len(lines) > served {
			if addr, ok := lines[len(lines)-1]["address"].(string); ok {
				p.MetricsURL = "http://" + addr
			}
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.t.Fatalf("pullgate did not log \"metrics serving\" within %s\n%s", startTimeout, p.Logs())
}

// stop ends pullgate with SIGTERM, or SIGKILL after 30 s.
func (p *Pullgate) stop() {
	p.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// Logs returns everything pullgate wrote so far.
func (p *Pullgate) Logs() string { return p.logs.String() }

// LogLines returns pullgate's JSON log lines with message msg.
func (p *Pullgate) LogLines(msg string) []map[string]any {
	var lines []map[string]any
	sc := bufio.NewScanner(bytes.NewReader([]byte(p.Logs())))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil && m["msg"] == msg {
			lines = append(lines, m)
		}
	}
	return lines
}

// WaitLog waits until pullgate logs a line with message msg for which match (if any) is true.
func (p *Pullgate) WaitLog(msg string, match func(map[string]any) bool) map[string]any {
	p.t.Helper()
	deadline := time.Now().Add(startTimeout)
	for {
		for _, l := range p.LogLines(msg) {
			if match == nil || match(l) {
				return l
			}
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("pullgate did not log %q within %s\n%s", msg, startTimeout, p.Logs())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Signal sends sig to pullgate.
func (p *Pullgate) Signal(sig os.Signal) {
	select {
	case <-p.done:
	default:
		p.cmd.Process.Signal(sig)
	}
}

// Wait waits for pullgate to exit and returns its exit error.
func (p *Pullgate) Wait(timeout time.Duration) error {
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		return fmt.Errorf("pullgate still running after %s", timeout)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
