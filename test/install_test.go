package test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/pullgate/pullgate/test/harness"
)

// fakeSystemctl stands in for the host's systemctl: it records its arguments, and runs the
// installed binary for pullgate.service, so that the installer's probe talks to the real thing.
const fakeSystemctl = `#!/bin/sh
echo "$*" >> "$STATE/systemctl.log"
running() { [ -f "$STATE/pid" ] && kill -0 "$(cat "$STATE/pid")" 2>/dev/null; }
stop() { if running; then kill "$(cat "$STATE/pid")"; while running; do sleep 0.05; done; fi; }
case "$*" in
"start pullgate.service"|"restart pullgate.service")
	if [ "$1" = start ] && running; then exit 0; fi
	stop
	mkdir -p "$ROOT/run/pullgate"
	"$ROOT/usr/local/bin/pullgate" serve --config "$ROOT/etc/pullgate/config.yaml" \
		--listen "unix://$ROOT/run/pullgate/pullgate.sock" --runtime-endpoint "$RUNTIME" >>"$STATE/pullgate.log" 2>&1 </dev/null &
	echo $! > "$STATE/pid" ;;
"disable --now pullgate.service pullgate.socket") stop ;;
esac
`

// pullgate install and uninstall against a temporary host root, with the real binary serving
// and containerd answering behind it, and systemctl and kubelet stood in by fakes.
func TestInstallCommand(t *testing.T) {
	t.Parallel()
	ctrd := harness.StartContainerd(t, harness.ContainerdBinaries(t)["1.6"])
	for _, tc := range []struct {
		name     string
		runtime  string
		wantErr  string
		switched bool
	}{
		{name: "pullgate answers", runtime: ctrd.Endpoint, switched: true},
		{name: "runtime does not answer", runtime: "unix:///nonexistent/containerd.sock", wantErr: "kubelet left as it was"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			state := tempDir(t, "pg-inst-")
			root := filepath.Join(state, "root")
			t.Cleanup(func() {
				if pid, err := os.ReadFile(filepath.Join(state, "pid")); err == nil {
					var p int
					fmt.Sscan(string(pid), &p)
					syscall.Kill(p, syscall.SIGKILL)
				}
				if t.Failed() {
					log, _ := os.ReadFile(filepath.Join(state, "pullgate.log"))
					t.Logf("pullgate log:\n%s", log)
				}
			})
			kubeletCfg := "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n# by kubeadm\ncgroupDriver: systemd\n"
			mustWrite(t, filepath.Join(root, "var/lib/kubelet/config.yaml"), kubeletCfg, 0o644)
			systemctl := filepath.Join(state, "systemctl")
			mustWrite(t, systemctl, fakeSystemctl, 0o755)
			config := filepath.Join(state, "config.yaml")
			mustWrite(t, config, "apiVersion: pullgate.io/v1alpha1\nkind: PullgateConfig\nstateDir: "+state+"\nmetricsAddress: \"\"\ndefaultAction: allow\n", 0o644)
			var healthz atomic.Int32
			kubelet := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { healthz.Add(1) }))
			t.Cleanup(kubelet.Close)

			run := func(args ...string) error {
				cmd := exec.Command(harness.PullgateBinary(t), args...)
				cmd.Env = append(os.Environ(), "ROOT="+root, "STATE="+state, "RUNTIME="+tc.runtime)
				out, err := cmd.CombinedOutput()
				if err != nil {
					return fmt.Errorf("%v\n%s", err, out)
				}
				return nil
			}
			common := []string{"--host-root", root, "--systemctl", systemctl, "--kubelet-healthz", kubelet.URL, "--kubelet-settle", "500ms"}
			// No kubelet runs in this host root; the machine's own (other tests) is not its.
			noKubelet := []string{"--proc", t.TempDir()}
			err := run(slices.Concat([]string{"install", "--config", config, "--probe-timeout", "3s"}, noKubelet, common)...)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("install: %v, want %q", err, tc.wantErr)
				}
				if got := readFile(t, filepath.Join(root, "var/lib/kubelet/config.yaml")); got != kubeletCfg {
					t.Errorf("kubelet configuration changed although pullgate did not answer:\n%s", got)
				}
				if strings.Contains(readFile(t, filepath.Join(state, "systemctl.log")), "kubelet") || healthz.Load() > 0 {
					t.Errorf("kubelet restarted although pullgate did not answer")
				}
				return
			}
			if err != nil {
				t.Fatalf("install: %v", err)
			}
			if got, want := readFile(t, filepath.Join(root, "var/lib/kubelet/config.yaml")), kubeletCfg+"imageServiceEndpoint: unix:///run/pullgate/pullgate.sock\n"; got != want {
				t.Errorf("kubelet configuration:\n%s\nwant\n%s", got, want)
			}
			images := imageService(t, "unix://"+filepath.Join(root, "run/pullgate/pullgate.sock"))
			if _, err := images.ImageFsInfo(t.Context()); err != nil {
				t.Fatalf("ImageFsInfo through the installed pullgate: %v", err)
			}
			if err := run(slices.Concat([]string{"install", "--config", config}, noKubelet, common)...); err != nil {
				t.Fatalf("second install: %v", err)
			}
			if err := run(slices.Concat([]string{"uninstall"}, noKubelet, common)...); err != nil {
				t.Fatalf("uninstall: %v", err)
			}
			want := strings.Join([]string{
				"daemon-reload", "enable pullgate.socket pullgate.service", "start pullgate.socket", "restart pullgate.service", "restart kubelet.service",
				"enable pullgate.socket pullgate.service", "start pullgate.socket", "start pullgate.service",
				"restart kubelet.service", "disable --now pullgate.service pullgate.socket", "daemon-reload",
			}, "\n") + "\n"
			if got := readFile(t, filepath.Join(state, "systemctl.log")); got != want {
				t.Errorf("systemctl calls:\n%s\nwant\n%s", got, want)
			}
			if got := readFile(t, filepath.Join(root, "var/lib/kubelet/config.yaml")); got != kubeletCfg {
				t.Errorf("kubelet configuration after uninstall:\n%s", got)
			}
			for _, gone := range []string{"usr", "etc", "var/lib/pullgate"} {
				if _, err := os.Stat(filepath.Join(root, gone)); err == nil {
					t.Errorf("%s left after uninstall", gone)
				}
			}
		})
	}
}

func mustWrite(t *testing.T, path, data string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}
