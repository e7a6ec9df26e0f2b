package harness_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pullgate/pullgate/test/harness"
)

// A machine boots systemd with the harness's files over the host's root, starts the units it
// wants, lets systemctl manage them, and leaves the host's files alone.
func TestMachine(t *testing.T) {
	hello := filepath.Join(t.TempDir(), "hello")
	if err := os.WriteFile(hello, []byte("#!/bin/sh\necho $$ >> /var/lib/hello\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	m := harness.StartMachine(t, "machine-test", harness.MachineConfig{
		Files: map[string][]byte{
			"/etc/systemd/system/hello.service": []byte("[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/usr/local/bin/hello\n"),
		},
		Binaries: map[string]string{"/usr/local/bin/hello": hello},
		Wants:    []string{"hello.service"},
	})
	if out := m.Run("systemctl", "is-active", "hello.service"); strings.TrimSpace(out) != "active" {
		t.Fatalf("hello.service is %q", out)
	}
	m.Run("systemctl", "restart", "hello.service")
	b, err := m.ReadFile("/var/lib/hello")
	if err != nil || len(strings.Fields(string(b))) != 2 {
		t.Errorf("/var/lib/hello in the machine = %q, %v; want two runs", b, err)
	}
	if _, err := os.Stat("/var/lib/hello"); !os.IsNotExist(err) {
		t.Errorf("the machine wrote to the host's /var/lib/hello: %v", err)
	}
	if out := m.Run("cat", "/proc/1/comm"); strings.TrimSpace(out) != "systemd" {
		t.Errorf("the machine's PID 1 is %q, want systemd", out)
	}
}
