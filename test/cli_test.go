package test

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pullgate/pullgate/test/harness"
)

func TestCheckConfig(t *testing.T) {
	t.Parallel()
	bin := harness.PullgateBinary(t)
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte(`apiVersion: pullgate.io/v1
kind: PullgateConfig
listen: /run/pullgate.sock
log: {format: xml, level: info}
auth: {nodeCredentials: always}
verification: {timeout: 0s}
defaultAction: maybe
`), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		file     string
		wantCode int
		want     []string
	}{
		{name: "shipped example", file: "../systemd/config.yaml", wantCode: 0, want: []string{"ok"}},
		{name: "every problem at once", file: bad, wantCode: 1, want: []string{
			"6 problem(s)", "apiVersion: must be", "listen: must be unix://", "log.format: must be json or text",
			"auth.nodeCredentials: must be fallback or never", "verification.timeout: must be positive", "defaultAction: must be deny or allow",
		}},
		{name: "missing file", file: filepath.Join(dir, "nope.yaml"), wantCode: 1, want: []string{"no such file"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			out, err := exec.Command(bin, "check-config", tc.file).CombinedOutput()
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != tc.wantCode {
				t.Errorf("exit code %d, want %d\n%s", code, tc.wantCode, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(string(out), w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
		})
	}
}

func TestVersion(t *testing.T) {
	t.Parallel()
	out, err := exec.Command(harness.PullgateBinary(t), "version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "pullgate ") || len(strings.TrimSpace(string(out))) <= len("pullgate ") {
		t.Fatalf("pullgate version = %q, %v", out, err)
	}
}

// The shipped units pass systemd's own checks, with the binary where the units expect it.
func TestSystemdUnit(t *testing.T) {
	t.Parallel()
	analyze := lookPath(t, "systemd-analyze")
	dir := t.TempDir()
	var paths []string
	for _, name := range []string{"pullgate.service", "pullgate.socket"} {
		unit, err := os.ReadFile(filepath.Join("../systemd", name))
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(strings.ReplaceAll(string(unit), "/usr/local/bin/pullgate", harness.PullgateBinary(t))), 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, path)
	}
	if out, err := exec.Command(analyze, append([]string{"verify", "--man=no"}, paths...)...).CombinedOutput(); err != nil || len(out) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// Under systemd socket activation pullgate serves on the socket it is handed.
func TestSocketActivation(t *testing.T) {
	t.Parallel()
	activate := lookPath(t, "systemd-socket-activate")
	bins := harness.ContainerdBinaries(t)
	ctrd := harness.StartContainerd(t, bins["1.6"])
	dir, err := os.MkdirTemp("/tmp", "pg-act-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "activated.sock")
	cfg := filepath.Join(dir, "config.yaml")
	configured := filepath.Join(dir, "configured.sock")
	config := fmt.Sprintf("apiVersion: pullgate.io/v1alpha1\nkind: PullgateConfig\nlisten: unix://%s\nruntimeEndpoint: %s\nstateDir: %s\nmetricsAddress: \"\"\ndefaultAction: allow\n", configured, ctrd.Endpoint, dir)
	if err := os.WriteFile(cfg, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(activate, "-l", sock, harness.PullgateBinary(t), "serve", "--config", cfg)
	var logs strings.Builder
	cmd.Stdout, cmd.Stderr = &logs, &logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() })
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never listened", sock)
		}
		time.Sleep(20 * time.Millisecond)
	}
	images := imageService(t, "unix://"+sock)
	if _, err := images.ImageFsInfo(t.Context()); err != nil {
		t.Fatalf("ImageFsInfo through the activated socket: %v\n%s", err, logs.String())
	}
	// The activated socket replaces the configured one, which is never created.
	if _, err := os.Stat(configured); err == nil {
		t.Errorf("pullgate created %s although systemd passed it a socket", configured)
	}
}

func lookPath(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		harness.Missing(t, name+" not found: install Debian's systemd package")
	}
	return p
}
