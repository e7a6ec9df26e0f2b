package install

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pullgate/pullgate/systemd"
)

const kubeletConfig = `# written by kubeadm
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: systemd
imageServiceEndpoint:
  unix:///run/containerd/containerd.sock
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
# kept as it is
authentication:
  anonymous:
    enabled: false
`

const switched = `# written by kubeadm
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: systemd
imageServiceEndpoint: unix:///run/pullgate/pullgate.sock
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
# kept as it is
authentication:
  anonymous:
    enabled: false
`

const kubeletPath = "/etc/kubernetes/kubelet-config.yaml"

// releaseKey and otherKey are PEM public keys, as cosign writes them.
var releaseKey, otherKey = publicKeyPEM(), publicKeyPEM()

func publicKeyPEM() string {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		panic(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

// node is a temporary host root with kubelet's configuration, systemctl and kubelet's health
// stood in by fakes that record what happened in order.
type node struct {
	t      *testing.T
	root   string
	proc   string // the host's /proc, with the kubelets of runKubelet
	src    Sources
	mu     sync.Mutex
	events []string
	// probeErrs and healthErrs are the answers of successive probes and health checks;
	// after the last one, nil.
	probeErrs, healthErrs []error
	// systemctlErrs fail systemctl commands, once each.
	systemctlErrs map[string]error
	// kill ends the installer, as if its process were killed, when it runs this systemctl
	// command (see installKilled).
	kill string
}

func newNode(t *testing.T) *node {
	t.Helper()
	n := &node{t: t, root: t.TempDir(), proc: t.TempDir()}
	n.write(kubeletPath, kubeletConfig, 0o600)
	n.write("/etc/systemd/system/containerd.service", "[Service]\n", 0o644)
	src := t.TempDir()
	n.src = Sources{Binary: filepath.Join(src, "pullgate"), Config: "../systemd/config.yaml", Keys: filepath.Join(src, "keys")}
	writeFile(t, n.src.Binary, "binary v1", 0o755)
	// As a mounted Secret: files are links into a hidden, timestamped directory.
	writeFile(t, filepath.Join(n.src.Keys, "..2026_11_23", "release.pub"), releaseKey, 0o644)
	if err := os.Symlink("..2026_11_23", filepath.Join(n.src.Keys, "..data")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("..data/release.pub", filepath.Join(n.src.Keys, "release.pub")); err != nil {
		t.Fatal(err)
	}
	return n
}

func (n *node) write(path, data string, mode fs.FileMode) {
	n.t.Helper()
	writeFile(n.t, filepath.Join(n.root, path), data, mode)
}

func writeFile(t *testing.T, path, data string, mode fs.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

// runProcess shows a process with this command line in the node's /proc.
func (n *node) runProcess(pid int, args ...string) {
	n.t.Helper()
	writeFile(n.t, filepath.Join(n.proc, fmt.Sprint(pid), "cmdline"), strings.Join(args, "\x00")+"\x00", 0o444)
}

func (n *node) chown(path string, uid, gid int) {
	n.t.Helper()
	if err := os.Lchown(filepath.Join(n.root, path), uid, gid); err != nil {
		n.t.Fatal(err)
	}
}

func (n *node) read(path string) string {
	n.t.Helper()
	data, err := os.ReadFile(filepath.Join(n.root, path))
	if err != nil {
		n.t.Fatal(err)
	}
	return string(data)
}

// kubeletEndpoint is kubelet's image service endpoint as its configuration file says now.
func (n *node) kubeletEndpoint() string {
	m, err := decodeMap([]byte(n.read(kubeletPath)))
	if err != nil {
		n.t.Fatal(err)
	}
	return fmt.Sprint(m["imageServiceEndpoint"])
}

func (n *node) record(e string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.events = append(n.events, e)
}

func (n *node) Run(_ context.Context, args ...string) error {
	e := "systemctl " + strings.Join(args, " ")
	if e == "systemctl restart kubelet.service" {
		e += " -> " + n.kubeletEndpoint()
	}
	n.record(e)
	if e == n.kill {
		runtime.Goexit()
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	err := n.systemctlErrs[e]
	delete(n.systemctlErrs, e)
	return err
}

func (n *node) probe(_ context.Context, socket string) error {
	if socket != filepath.Join(n.root, Socket) {
		n.t.Errorf("probed %s, want the socket under the host root", socket)
	}
	n.record("probe, kubelet on " + n.kubeletEndpoint())
	return pop(&n.probeErrs)
}

func (n *node) health(context.Context) error {
	n.record("healthz")
	return pop(&n.healthErrs)
}

func pop(errs *[]error) error {
	if len(*errs) == 0 {
		return nil
	}
	err := (*errs)[0]
	*errs = (*errs)[1:]
	return err
}

func (n *node) installer(opts ...Option) *Installer {
	return New(n.root, n, append([]Option{WithProbe(n.probe), WithKubeletHealth(n.health), WithKubeletConfig(kubeletPath), WithProc(n.proc)}, opts...)...)
}

// installKilled runs Install until it is killed at systemctl command e: nothing of the
// installer runs after that, as when the pod is killed.
func (n *node) installKilled(in *Installer, e string) {
	n.t.Helper()
	n.kill = e
	returned := make(chan error, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		returned <- in.Install(n.t.Context(), n.src)
	}()
	<-done
	n.kill = ""
	select {
	case err := <-returned:
		n.t.Fatalf("Install returned %v, want it killed at %q", err, e)
	default:
	}
}

// takeEvents returns what happened since the last call.
func (n *node) takeEvents() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	e := n.events
	n.events = nil
	return e
}

// snapshot describes every file and directory under the root: type, mode, owner and content.
func (n *node) snapshot() map[string]string {
	n.t.Helper()
	s := map[string]string{}
	err := filepath.WalkDir(n.root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		desc := fmt.Sprintf("%v %d:%d", fi.Mode(), st.Uid, st.Gid)
		if fi.Mode().IsRegular() {
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			desc += " " + string(data)
		}
		s[strings.TrimPrefix(p, n.root)] = desc
		return nil
	})
	if err != nil {
		n.t.Fatal(err)
	}
	return s
}

func equalEvents(t *testing.T, step string, got, want []string) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s: systemctl, probe and healthz calls:\n  got  %q\n  want %q", step, got, want)
	}
}

func TestInstall(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	in := n.installer()
	if err := in.Install(t.Context(), n.src); err != nil {
		t.Fatal(err)
	}
	// kubelet is switched only after pullgate answered, and restarted after the switch.
	equalEvents(t, "install", n.takeEvents(), []string{
		"systemctl daemon-reload",
		"systemctl enable pullgate.socket pullgate.service",
		"systemctl start pullgate.socket",
		"systemctl restart pullgate.service",
		"probe, kubelet on unix:///run/containerd/containerd.sock",
		"systemctl restart kubelet.service -> unix:///run/pullgate/pullgate.sock",
		"healthz",
	})
	shippedConfig, _ := os.ReadFile("../systemd/config.yaml")
	for _, f := range []struct {
		path string
		mode fs.FileMode
		want string
	}{
		{BinaryPath, 0o755, "binary v1"},
		{"/etc/systemd/system/pullgate.socket", 0o644, string(unit("pullgate.socket"))},
		{"/etc/systemd/system/pullgate.service", 0o644, string(unit("pullgate.service"))},
		{KubeletDrop, 0o644, string(unit("10-pullgate.conf"))},
		{ConfigPath, 0o644, string(shippedConfig)},
		{KeysDir + "/release.pub", 0o644, releaseKey},
		// Only the endpoint's lines changed; mode kept.
		{kubeletPath, 0o600, switched},
	} {
		fi, err := os.Stat(filepath.Join(n.root, f.path))
		if err != nil {
			t.Errorf("%s: %v", f.path, err)
			continue
		}
		if fi.Mode().Perm() != f.mode {
			t.Errorf("%s: mode %v, want %v", f.path, fi.Mode().Perm(), f.mode)
		}
		if got := n.read(f.path); got != f.want {
			t.Errorf("%s:\n%s\nwant\n%s", f.path, got, f.want)
		}
	}
	if _, err := os.Lstat(filepath.Join(n.root, KeysDir, "..data")); err == nil {
		t.Errorf("the Secret's hidden entries were copied")
	}
	if got, _ := systemd.Files.ReadFile("pullgate.service"); !strings.Contains(string(got), "ExecStart="+BinaryPath+" serve") {
		t.Errorf("the unit does not run %s", BinaryPath)
	}

	// Again: nothing changes, nothing restarts.
	before := n.snapshot()
	if err := in.Install(t.Context(), n.src); err != nil {
		t.Fatal(err)
	}
	equalEvents(t, "second install", n.takeEvents(), []string{
		"systemctl enable pullgate.socket pullgate.service",
		"systemctl start pullgate.socket",
		"systemctl start pullgate.service",
		"probe, kubelet on unix:///run/pullgate/pullgate.sock",
	})
	if after := n.snapshot(); !reflect.DeepEqual(before, after) {
		t.Errorf("second install changed files:\nbefore %v\nafter  %v", before, after)
	}
}

func TestInstallRuntimeService(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	if err := n.installer(WithRuntimeService()).Install(t.Context(), n.src); err != nil {
		t.Fatal(err)
	}
	want := strings.Replace(switched, "containerRuntimeEndpoint: unix:///run/containerd/containerd.sock", "containerRuntimeEndpoint: unix:///run/pullgate/pullgate.sock", 1)
	if got := n.read(kubeletPath); got != want {
		t.Errorf("kubelet configuration:\n%s\nwant\n%s", got, want)
	}
}

// Nothing about kubelet changes until pullgate answers.
func TestInstallPullgateDoesNotAnswer(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	n.probeErrs = []error{errors.New("connection refused")}
	err := n.installer().Install(t.Context(), n.src)
	if err == nil || !strings.Contains(err.Error(), "kubelet left as it was") || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("Install = %v, want the probe's error and kubelet left alone", err)
	}
	if got := n.read(kubeletPath); got != kubeletConfig {
		t.Errorf("kubelet configuration changed:\n%s", got)
	}
	for _, e := range n.takeEvents() {
		if strings.Contains(e, "kubelet.service") || e == "healthz" {
			t.Errorf("kubelet touched: %s", e)
		}
	}
}

// A kubelet that does not come back healthy gets its previous configuration back.
func TestInstallKubeletRollback(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	n.healthErrs = []error{errors.New("healthz: 500")}
	err := n.installer().Install(t.Context(), n.src)
	if err == nil || !strings.Contains(err.Error(), "put back the previous "+kubeletPath) || !strings.Contains(err.Error(), "kubelet is healthy again") {
		t.Fatalf("Install = %v, want a rollback report", err)
	}
	equalEvents(t, "install", n.takeEvents()[4:], []string{
		"probe, kubelet on unix:///run/containerd/containerd.sock",
		"systemctl restart kubelet.service -> unix:///run/pullgate/pullgate.sock",
		"healthz",
		"systemctl restart kubelet.service -> unix:///run/containerd/containerd.sock",
		"healthz",
	})
	if got := n.read(kubeletPath); got != kubeletConfig {
		t.Errorf("kubelet configuration not put back:\n%s", got)
	}
}

// kubelet's health is awaited no longer than the timeout.
func TestKubeletTimeout(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	in := New(n.root, n, WithProbe(n.probe), WithKubeletConfig(kubeletPath), WithTimeouts(time.Minute, 50*time.Millisecond),
		WithKubeletHealth(func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }))
	err := in.Install(t.Context(), n.src)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Install = %v, want the health check's deadline", err)
	}
	if got := n.read(kubeletPath); got != kubeletConfig {
		t.Errorf("kubelet configuration not put back:\n%s", got)
	}
}

func TestUpgrade(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	in := n.installer()
	if err := in.Install(t.Context(), n.src); err != nil {
		t.Fatal(err)
	}
	n.takeEvents()
	writeFile(t, n.src.Binary, "binary v2", 0o755)
	if err := in.Install(t.Context(), n.src); err != nil {
		t.Fatal(err)
	}
	// The service restarts behind its socket; kubelet is not touched.
	equalEvents(t, "upgrade", n.takeEvents(), []string{
		"systemctl enable pullgate.socket pullgate.service",
		"systemctl start pullgate.socket",
		"systemctl restart pullgate.service",
		"probe, kubelet on unix:///run/pullgate/pullgate.sock",
	})
	if got := n.read(BinaryPath); got != "binary v2" {
		t.Errorf("binary = %q", got)
	}
	leftovers, _ := filepath.Glob(filepath.Join(n.root, "/usr/local/bin/.pullgate*"))
	if len(leftovers) > 0 {
		t.Errorf("temporary files left: %v", leftovers)
	}

	// An upgrade that does not answer is rolled back: kubelet already depends on pullgate.
	writeFile(t, n.src.Binary, "binary v3", 0o755)
	n.probeErrs = []error{errors.New("Unavailable")}
	err := in.Install(t.Context(), n.src)
	if err == nil || !strings.Contains(err.Error(), "pullgate answers again") {
		t.Fatalf("Install = %v, want a rollback of the upgrade", err)
	}
	if got := n.read(BinaryPath); got != "binary v2" {
		t.Errorf("binary after a failed upgrade = %q, want v2 back", got)
	}
	equalEvents(t, "failed upgrade", n.takeEvents()[2:], []string{
		"systemctl restart pullgate.service",
		"probe, kubelet on unix:///run/pullgate/pullgate.sock",
		"systemctl restart pullgate.service",
		"probe, kubelet on unix:///run/pullgate/pullgate.sock",
	})
}

// A run cut short after it changed files leaves the rest to the next run, which restarts what
// the files changed and checks it, rather than finding nothing changed and reporting success.
func TestInstallResumes(t *testing.T) {
	t.Parallel()
	installed := []string{
		"systemctl enable pullgate.socket pullgate.service",
		"systemctl start pullgate.socket",
		"systemctl start pullgate.service",
		"probe, kubelet on unix:///run/pullgate/pullgate.sock",
	}
	for _, tc := range []struct {
		name    string
		upgrade bool   // installed once before, then v2
		kill    string // where the first run ends
		probe   []error
		health  []error
		want    []string // the re-run
		kubelet string   // kubelet's endpoint after the re-run
	}{
		{name: "before daemon-reload", kill: "systemctl daemon-reload", want: []string{
			"systemctl daemon-reload",
			"systemctl enable pullgate.socket pullgate.service",
			"systemctl start pullgate.socket",
			"systemctl restart pullgate.service",
			"probe, kubelet on unix:///run/containerd/containerd.sock",
			"systemctl restart kubelet.service -> unix:///run/pullgate/pullgate.sock",
			"healthz",
		}, kubelet: Endpoint},
		{name: "upgrade before the restart", upgrade: true, kill: "systemctl restart pullgate.service", want: []string{
			"systemctl enable pullgate.socket pullgate.service",
			"systemctl start pullgate.socket",
			"systemctl restart pullgate.service",
			"probe, kubelet on unix:///run/pullgate/pullgate.sock",
		}, kubelet: Endpoint},
		// The resumed upgrade does not answer: the files are put back as they were when
		// pullgate last answered, before the run that was cut short.
		{name: "upgrade before the restart, then no answer", upgrade: true, kill: "systemctl restart pullgate.service",
			probe: []error{errors.New("Unavailable")}, want: []string{
				"systemctl enable pullgate.socket pullgate.service",
				"systemctl start pullgate.socket",
				"systemctl restart pullgate.service",
				"probe, kubelet on unix:///run/pullgate/pullgate.sock",
				"systemctl restart pullgate.service",
				"probe, kubelet on unix:///run/pullgate/pullgate.sock",
			}, kubelet: Endpoint},
		{name: "before kubelet's restart", kill: "systemctl restart kubelet.service -> unix:///run/pullgate/pullgate.sock", want: append(slices.Clone(installed),
			"systemctl restart kubelet.service -> unix:///run/pullgate/pullgate.sock",
			"healthz",
		), kubelet: Endpoint},
		{name: "before kubelet's restart, then unhealthy", kill: "systemctl restart kubelet.service -> unix:///run/pullgate/pullgate.sock",
			health: []error{errors.New("healthz: 500")}, want: append(slices.Clone(installed),
				"systemctl restart kubelet.service -> unix:///run/pullgate/pullgate.sock",
				"healthz",
				"systemctl restart kubelet.service -> unix:///run/containerd/containerd.sock",
				"healthz",
			), kubelet: "unix:///run/containerd/containerd.sock"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			n := newNode(t)
			in := n.installer()
			if tc.upgrade {
				if err := in.Install(t.Context(), n.src); err != nil {
					t.Fatal(err)
				}
				writeFile(t, n.src.Binary, "binary v2", 0o755)
			}
			n.installKilled(in, tc.kill)
			n.takeEvents()
			n.probeErrs, n.healthErrs = tc.probe, tc.health
			err := in.Install(t.Context(), n.src)
			failed := tc.probe != nil || tc.health != nil
			if (err != nil) != failed {
				t.Fatalf("re-run: Install = %v", err)
			}
			equalEvents(t, "re-run", n.takeEvents(), tc.want)
			if got := n.kubeletEndpoint(); got != tc.kubelet {
				t.Errorf("kubelet on %s, want %s", got, tc.kubelet)
			}
			if tc.probe != nil {
				if got := n.read(BinaryPath); got != "binary v1" {
					t.Errorf("binary after a resumed upgrade that did not answer = %q, want v1 back", got)
				}
			}
			if failed {
				return
			}
			// Seen through: the next run has nothing left to do.
			if err := in.Install(t.Context(), n.src); err != nil {
				t.Fatal(err)
			}
			equalEvents(t, "third run", n.takeEvents(), installed)
		})
	}
}

// Any systemctl failure of an upgrade, not only the restart's, puts back the files pullgate
// answered with: kubelet depends on it.
func TestUpgradeSystemctlFails(t *testing.T) {
	t.Parallel()
	for _, fail := range []string{"systemctl enable pullgate.socket pullgate.service", "systemctl start pullgate.socket"} {
		t.Run(fail, func(t *testing.T) {
			t.Parallel()
			n := newNode(t)
			in := n.installer()
			if err := in.Install(t.Context(), n.src); err != nil {
				t.Fatal(err)
			}
			writeFile(t, n.src.Binary, "binary v2", 0o755)
			n.systemctlErrs = map[string]error{fail: errors.New("exit status 1")}
			err := in.Install(t.Context(), n.src)
			if err == nil || !strings.Contains(err.Error(), "pullgate answers again") || !strings.Contains(err.Error(), "exit status 1") {
				t.Fatalf("Install = %v, want a rollback", err)
			}
			if got := n.read(BinaryPath); got != "binary v1" {
				t.Errorf("binary = %q, want v1 back", got)
			}
		})
	}
}

// A new configuration that pullgate refuses to start with (ExecStartPre) is rolled back too.
func TestUpgradeRefusedConfig(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	in := n.installer()
	if err := in.Install(t.Context(), n.src); err != nil {
		t.Fatal(err)
	}
	shipped := n.read(ConfigPath)
	// Its key is checked on the host, where it is installed, not where the installer runs.
	n.src.Config = filepath.Join(t.TempDir(), "config.yaml")
	writeFile(t, n.src.Config, "apiVersion: pullgate.io/v1alpha1\nkind: PullgateConfig\npolicies:\n- name: a\n  images: [\"**\"]\n  mode: enforce\n  authorities:\n  - name: k\n    key: {file: /etc/pullgate/keys/missing.pub}\n", 0o644)
	n.systemctlErrs = map[string]error{"systemctl restart pullgate.service": errors.New("exit status 1")}
	n.takeEvents()
	err := in.Install(t.Context(), n.src)
	if err == nil || !strings.Contains(err.Error(), "pullgate answers again") {
		t.Fatalf("Install = %v, want a rollback", err)
	}
	if got := n.read(ConfigPath); got != shipped {
		t.Errorf("configuration after a refused upgrade:\n%s", got)
	}
	equalEvents(t, "refused upgrade", n.takeEvents()[2:], []string{
		"systemctl restart pullgate.service",
		"systemctl restart pullgate.service",
		"probe, kubelet on unix:///run/pullgate/pullgate.sock",
	})
}

// An upgrade that also switches the runtime service is rolled back too when it does not answer:
// kubelet already uses pullgate for images.
func TestUpgradeWithRuntimeServiceRollback(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	if err := n.installer().Install(t.Context(), n.src); err != nil {
		t.Fatal(err)
	}
	writeFile(t, n.src.Binary, "binary v2", 0o755)
	n.probeErrs = []error{errors.New("Unavailable")}
	err := n.installer(WithRuntimeService()).Install(t.Context(), n.src)
	if err == nil || !strings.Contains(err.Error(), "pullgate answers again") {
		t.Fatalf("Install = %v, want a rollback", err)
	}
	if got := n.read(BinaryPath); got != "binary v1" {
		t.Errorf("binary = %q, want v1 back", got)
	}
	if got := n.read(kubeletPath); got != switched {
		t.Errorf("kubelet configuration changed:\n%s", got)
	}
}

func TestUninstall(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		setup func(n *node)
	}{
		{name: "fresh node", setup: func(*node) {}},
		{name: "earlier hand-made install", setup: func(n *node) {
			n.write(BinaryPath, "hand-built binary", 0o700)
			n.write(ConfigPath, "apiVersion: pullgate.io/v1alpha1\nkind: PullgateConfig\ndefaultAction: allow\n", 0o640)
			n.write("/etc/systemd/system/pullgate.service", "[Service]\nExecStart=/usr/local/bin/pullgate serve\n", 0o600)
			// Owners other than root's come back too.
			n.chown(ConfigPath, 1234, 5678)
			n.chown(kubeletPath, 4321, 8765)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			n := newNode(t)
			tc.setup(n)
			before := n.snapshot()
			in := n.installer()
			if err := in.Install(t.Context(), n.src); err != nil {
				t.Fatal(err)
			}
			writeFile(t, n.src.Binary, "binary v2", 0o755)
			if err := in.Install(t.Context(), n.src); err != nil {
				t.Fatal(err)
			}
			n.takeEvents()
			if err := in.Uninstall(t.Context()); err != nil {
				t.Fatal(err)
			}
			// kubelet leaves pullgate while pullgate still runs.
			equalEvents(t, "uninstall", n.takeEvents(), []string{
				"systemctl restart kubelet.service -> unix:///run/containerd/containerd.sock",
				"healthz",
				"systemctl disable --now pullgate.service pullgate.socket",
				"systemctl daemon-reload",
			})
			if after := n.snapshot(); !reflect.DeepEqual(before, after) {
				t.Errorf("uninstall did not restore the node:\nbefore %v\nafter  %v", before, after)
			}
			if err := in.Uninstall(t.Context()); err != nil {
				t.Fatal(err)
			}
			equalEvents(t, "second uninstall", n.takeEvents(), nil)
		})
	}
}

// A kubelet configuration rewritten since the install (a kubeadm upgrade) keeps its changes:
// only the endpoints that point at pullgate are set back.
func TestUninstallKeepsLaterKubeletChanges(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		runtime bool
		change  func(string) string
		want    string
	}{
		{name: "field added", change: func(s string) string { return s + "maxPods: 200\n" },
			want: strings.Replace(kubeletConfig, "imageServiceEndpoint:\n  unix:///run/containerd/containerd.sock\n", "imageServiceEndpoint: unix:///run/containerd/containerd.sock\n", 1) + "maxPods: 200\n"},
		{name: "runtime endpoint too", runtime: true, change: func(s string) string { return "# kubeadm\n" + s },
			want: "# kubeadm\n" + strings.Replace(kubeletConfig, "imageServiceEndpoint:\n  unix:///run/containerd/containerd.sock\n", "imageServiceEndpoint: unix:///run/containerd/containerd.sock\n", 1)},
		{name: "respelled", change: func(s string) string {
			return strings.Replace(s, "imageServiceEndpoint: "+Endpoint, "imageServiceEndpoint: /var/run/pullgate/pullgate.sock", 1) + "maxPods: 200\n"
		}, want: strings.Replace(kubeletConfig, "imageServiceEndpoint:\n  unix:///run/containerd/containerd.sock\n", "imageServiceEndpoint: unix:///run/containerd/containerd.sock\n", 1) + "maxPods: 200\n"},
		{name: "already pointed elsewhere", change: func(s string) string {
			return strings.Replace(s, "imageServiceEndpoint: "+Endpoint, "imageServiceEndpoint: unix:///other.sock", 1)
		}, want: strings.Replace(switched, "imageServiceEndpoint: "+Endpoint, "imageServiceEndpoint: unix:///other.sock", 1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			n := newNode(t)
			var opts []Option
			if tc.runtime {
				opts = append(opts, WithRuntimeService())
			}
			in := n.installer(opts...)
			if err := in.Install(t.Context(), n.src); err != nil {
				t.Fatal(err)
			}
			n.write(kubeletPath, tc.change(n.read(kubeletPath)), 0o600)
			if err := in.Uninstall(t.Context()); err != nil {
				t.Fatal(err)
			}
			if got := n.read(kubeletPath); got != tc.want {
				t.Errorf("kubelet configuration after uninstall:\n%s\nwant\n%s", got, tc.want)
			}
			if _, err := os.Stat(filepath.Join(n.root, BackupDir)); err == nil {
				t.Errorf("backups left")
			}
		})
	}
}

// The manifest is saved before the first change, so an install cut short is undone exactly.
func TestUninstallAfterInstallCutShort(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, fail, kill string }{
		{name: "daemon-reload fails", fail: "systemctl daemon-reload"},
		{name: "killed at pullgate's restart", kill: "systemctl restart pullgate.service"},
		{name: "killed at kubelet's restart", kill: "systemctl restart kubelet.service -> " + Endpoint},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			n := newNode(t)
			n.write(ConfigPath, "apiVersion: pullgate.io/v1alpha1\nkind: PullgateConfig\ndefaultAction: allow\n", 0o640)
			n.chown(ConfigPath, 1234, 5678)
			before := n.snapshot()
			in := n.installer()
			if tc.kill != "" {
				n.installKilled(in, tc.kill)
			} else {
				n.systemctlErrs = map[string]error{tc.fail: errors.New("exit status 1")}
				if err := in.Install(t.Context(), n.src); err == nil {
					t.Fatal("Install succeeded")
				}
			}
			if err := in.Uninstall(t.Context()); err != nil {
				t.Fatal(err)
			}
			if after := n.snapshot(); !reflect.DeepEqual(before, after) {
				t.Errorf("uninstall did not restore the node:\nbefore %v\nafter  %v", before, after)
			}
		})
	}
}

// kubelet pointed at pullgate before the install (by hand), so uninstall has no other endpoint
// to give it back: it refuses rather than stop the socket kubelet uses.
func TestUninstallKubeletStillOnPullgate(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, endpoint string }{
		{name: "as install writes it", endpoint: Endpoint},
		{name: "bare path", endpoint: Socket},
		{name: "through /var/run", endpoint: "unix:///var/run/pullgate/pullgate.sock"},
		{name: "not clean", endpoint: "unix:///run//pullgate/./pullgate.sock"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			n := newNode(t)
			n.write(kubeletPath, strings.Replace(kubeletConfig, "imageServiceEndpoint:\n  unix:///run/containerd/containerd.sock", "imageServiceEndpoint: "+tc.endpoint, 1), 0o600)
			uninstallRefused(t, n, "still points imageServiceEndpoint at pullgate")
		})
	}
}

// The same for a kubelet pointed at pullgate by its flags or drop-ins, which install never
// writes.
func TestUninstallKubeletFlagsOnPullgate(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, dropIn, want string
		args               []string
	}{
		{name: "flag", args: []string{"--image-service-endpoint=/var/run/pullgate/pullgate.sock"}, want: "its flag --image-service-endpoint=/var/run/pullgate/pullgate.sock"},
		{name: "runtime flag", args: []string{"--container-runtime-endpoint", Endpoint}, want: "its flag --container-runtime-endpoint=" + Endpoint},
		{name: "drop-in", args: []string{"--config-dir=/etc/kubernetes/kubelet.conf.d"}, dropIn: "imageServiceEndpoint: " + Endpoint + "\n",
			want: "imageServiceEndpoint in its drop-in /etc/kubernetes/kubelet.conf.d/50-pullgate.conf"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			n := newNode(t)
			n.runProcess(77, append([]string{"/usr/bin/kubelet", "--config=" + kubeletPath}, tc.args...)...)
			if tc.dropIn != "" {
				n.write("/etc/kubernetes/kubelet.conf.d/50-pullgate.conf", "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n"+tc.dropIn, 0o644)
			}
			uninstallRefused(t, n, tc.want)
		})
	}
}

// uninstallRefused installs, then checks that uninstall refuses with want and leaves pullgate
// running.
func uninstallRefused(t *testing.T, n *node, want string) {
	t.Helper()
	in := n.installer()
	if err := in.Install(t.Context(), n.src); err != nil {
		t.Fatal(err)
	}
	n.takeEvents()
	err := in.Uninstall(t.Context())
	if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "pullgate left running") {
		t.Fatalf("Uninstall = %v, want a refusal naming %q", err, want)
	}
	for _, e := range n.takeEvents() {
		if strings.Contains(e, "pullgate.service") {
			t.Errorf("pullgate stopped: %s", e)
		}
	}
}

// If kubelet is not healthy on its old configuration, pullgate stays so that it can be retried.
func TestUninstallKubeletUnhealthy(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	in := n.installer()
	if err := in.Install(t.Context(), n.src); err != nil {
		t.Fatal(err)
	}
	n.takeEvents()
	n.healthErrs = []error{errors.New("healthz: 500")}
	if err := in.Uninstall(t.Context()); err == nil || !strings.Contains(err.Error(), "pullgate left running") {
		t.Fatalf("Uninstall = %v", err)
	}
	for _, e := range n.takeEvents() {
		if strings.Contains(e, "pullgate.service") {
			t.Errorf("pullgate stopped: %s", e)
		}
	}
	if err := in.Uninstall(t.Context()); err != nil {
		t.Fatal(err)
	}
	equalEvents(t, "retry", n.takeEvents(), []string{"systemctl disable --now pullgate.service pullgate.socket", "systemctl daemon-reload"})
}

func TestInstallRefuses(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		change func(n *node)
		want   string
	}{
		{name: "no configuration", change: func(n *node) { n.src.Config = "" }, want: "pass --config"},
		{name: "invalid configuration", change: func(n *node) {
			n.src.Config = filepath.Join(t.TempDir(), "bad.yaml")
			writeFile(t, n.src.Config, "apiVersion: pullgate.io/v1alpha1\nkind: PullgateConfig\ndefaultAction: maybe\n", 0o644)
		}, want: "defaultAction"},
		{name: "unknown field", change: func(n *node) {
			n.src.Config = filepath.Join(t.TempDir(), "bad.yaml")
			writeFile(t, n.src.Config, "apiVersion: pullgate.io/v1alpha1\nkind: PullgateConfig\ndefaultAktion: allow\n", 0o644)
		}, want: "defaultAktion"},
		{name: "no kubelet configuration", change: func(n *node) { os.Remove(filepath.Join(n.root, kubeletPath)) }, want: "--kubelet-config"},
		{name: "kubelet configuration is a link", change: func(n *node) {
			os.Rename(filepath.Join(n.root, kubeletPath), filepath.Join(n.root, kubeletPath+".real"))
			os.Symlink(filepath.Base(kubeletPath)+".real", filepath.Join(n.root, kubeletPath))
		}, want: "not a regular file"},
		{name: "backups where pullgate writes", change: func(n *node) { n.write("/var/lib/pullgate/backup/manifest.json", "{}", 0o600) }, want: "mv /var/lib/pullgate/backup " + BackupDir},
		{name: "installed file is a link", change: func(n *node) {
			n.write("/etc/pullgate/mine.yaml", "apiVersion: pullgate.io/v1alpha1\nkind: PullgateConfig\n", 0o644)
			if err := os.Symlink("mine.yaml", filepath.Join(n.root, ConfigPath)); err != nil {
				t.Fatal(err)
			}
		}, want: ConfigPath + ": exists and is not a regular file"},
		{name: "not a KubeletConfiguration", change: func(n *node) { n.write(kubeletPath, "kind: Pod\n", 0o600) }, want: "not a KubeletConfiguration"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			n := newNode(t)
			tc.change(n)
			before := n.snapshot()
			err := n.installer().Install(t.Context(), n.src)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Install = %v, want %q", err, tc.want)
			}
			if after := n.snapshot(); !reflect.DeepEqual(before, after) {
				t.Errorf("a refused install changed files")
			}
			equalEvents(t, "refused install", n.takeEvents(), nil)
		})
	}
}

// The backups decide what uninstall writes as root, so pullgate's sandboxed daemon must not be
// able to change them.
func TestBackupsOutOfPullgatesReach(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	if err := n.installer().Install(t.Context(), n.src); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(n.root, BackupDir))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("%s: mode %v, want 0700", BackupDir, fi.Mode().Perm())
	}
	var writable []string
	for _, l := range strings.Split(string(unit("pullgate.service")), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok && k == "ReadWritePaths" {
			writable = append(writable, strings.Fields(v)...)
		}
		if k, v, ok := strings.Cut(l, "="); ok && k == "StateDirectory" {
			writable = append(writable, "/var/lib/"+v)
		}
	}
	if len(writable) == 0 {
		t.Fatal("no ReadWritePaths in pullgate.service")
	}
	for _, w := range writable {
		if BackupDir == w || strings.HasPrefix(BackupDir, w+"/") {
			t.Errorf("%s is in %s, which pullgate.service may write", BackupDir, w)
		}
	}
}

// A manifest naming anything but what the installer writes is refused before anything changes.
func TestManifestRefused(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		change func(m *manifest)
		want   string
	}{
		{name: "path outside the root", change: func(m *manifest) { m.Files[0].Path = "/../outside" }, want: `path "/../outside"`},
		{name: "path not the installer's", change: func(m *manifest) { m.Files[0].Path = "/etc/passwd" }, want: `path "/etc/passwd"`},
		{name: "hidden key", change: func(m *manifest) { m.Files[0].Path = KeysDir + "/..data" }, want: "is not one the installer writes"},
		{name: "backup elsewhere", change: func(m *manifest) {
			m.Files = append(m.Files, original{Path: BinaryPath, Existed: true, Mode: 0o755, Backup: "../../../etc/shadow"})
		}, want: `backup "../../../etc/shadow"`},
		{name: "backup of another file", change: func(m *manifest) {
			m.Files = append(m.Files, original{Path: BinaryPath, Existed: true, Mode: 0o755, Backup: backupName(kubeletPath)})
		}, want: "is not the installer's"},
		{name: "previous version elsewhere", change: func(m *manifest) {
			m.Previous = append(m.Previous, original{Path: BinaryPath, Existed: true, Mode: 0o755, Backup: "../../../etc/shadow"})
		}, want: `backup "../../../etc/shadow"`},
		{name: "setuid", change: func(m *manifest) {
			m.Files = append(m.Files, original{Path: BinaryPath, Existed: true, Mode: 0o755 | fs.ModeSetuid, Backup: backupName(BinaryPath)})
		}, want: "mode"},
		{name: "directory", change: func(m *manifest) { m.Dirs = append(m.Dirs, "/home") }, want: `directory "/home"`},
		{name: "another kubelet configuration", change: func(m *manifest) { m.KubeletConfig = "/etc/shadow" }, want: "pass --kubelet-config /etc/shadow"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			n := newNode(t)
			in := n.installer()
			if err := in.Install(t.Context(), n.src); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(n.root, BackupDir, "manifest.json")
			var m manifest
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(data, &m); err != nil {
				t.Fatal(err)
			}
			tc.change(&m)
			data, _ = json.Marshal(m)
			n.write(BackupDir+"/manifest.json", string(data), 0o600)
			n.takeEvents()
			before := n.snapshot()
			for _, run := range []func() error{
				func() error { return in.Uninstall(t.Context()) },
				func() error { return in.Install(t.Context(), n.src) },
			} {
				if err := run(); err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "backup manifest") {
					t.Errorf("got %v, want a refusal naming %q", err, tc.want)
				}
			}
			equalEvents(t, "refused", n.takeEvents(), nil)
			if after := n.snapshot(); !reflect.DeepEqual(before, after) {
				t.Errorf("a refused manifest changed files")
			}
		})
	}
}

// Host files are written under the host root only: a symbolic link on the way that is absolute
// (it would lead into the installer's container) or leads out of the root is refused before
// anything changes, while a relative link within the root is followed.
func TestInstallSymlinks(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, link string
		target     func(outside string) string
		wantErr    string
		want       string // for a link that is followed: where the binary lands
	}{
		{name: "absolute, out of the root", link: "/etc/pullgate", target: func(o string) string { return o }, wantErr: "/etc/pullgate/config.yaml"},
		{name: "absolute, a host path", link: "/etc/pullgate", target: func(string) string { return "/srv/pullgate" }, wantErr: "/etc/pullgate/config.yaml"},
		{name: "relative, out of the root", link: "/etc/pullgate/keys", target: func(o string) string { return "../../../../../../../../../../" + o }, wantErr: KeysDir + "/release.pub"},
		{name: "unit directory", link: "/etc/systemd/system", target: func(o string) string { return o }, wantErr: "/etc/systemd/system/pullgate.socket"},
		{name: "backups", link: "/var/lib", target: func(o string) string { return o }, wantErr: manifestPath},
		{name: "relative, within the root", link: "/usr/local", target: func(string) string { return "../var/usrlocal" }, want: "/var/usrlocal/bin/pullgate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			n := newNode(t)
			outside := t.TempDir()
			if err := os.MkdirAll(filepath.Join(n.root, "srv/pullgate"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.MkdirAll(filepath.Join(n.root, "var/usrlocal"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.MkdirAll(filepath.Dir(filepath.Join(n.root, tc.link)), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.RemoveAll(filepath.Join(n.root, tc.link)); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(tc.target(outside), filepath.Join(n.root, tc.link)); err != nil {
				t.Fatal(err)
			}
			before := n.snapshot()
			err := n.installer().Install(t.Context(), n.src)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if got := n.read(tc.want); got != "binary v1" {
					t.Errorf("%s = %q", tc.want, got)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), "symbolic link") {
				t.Fatalf("Install = %v, want a refusal naming %s", err, tc.wantErr)
			}
			if after := n.snapshot(); !reflect.DeepEqual(before, after) {
				t.Errorf("a refused install changed files")
			}
			if entries, _ := os.ReadDir(outside); len(entries) > 0 {
				t.Errorf("written outside the host root: %v", entries)
			}
			equalEvents(t, "refused install", n.takeEvents(), nil)
		})
	}
}

// Only public keys and certificates are installed, all readable by everyone, and a link is
// followed only within the keys directory, as a mounted Secret has them.
func TestInstallRefusesKeys(t *testing.T) {
	t.Parallel()
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalECPrivateKey(ecKey)
	if err != nil {
		t.Fatal(err)
	}
	private := string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}))
	secret := filepath.Join(t.TempDir(), "secret.pub")
	writeFile(t, secret, otherKey, 0o600)
	for _, tc := range []struct {
		name string
		add  func(dir string) error
		want string
	}{
		{name: "private key", add: func(dir string) error { return os.WriteFile(filepath.Join(dir, "release.key"), []byte(private), 0o600) }, want: "release.key: holds a private key (EC PRIVATE KEY)"},
		{name: "cosign private key", add: func(dir string) error {
			return os.WriteFile(filepath.Join(dir, "cosign.key"), pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED SIGSTORE PRIVATE KEY", Bytes: []byte("x")}), 0o600)
		}, want: "holds a private key"},
		{name: "public key after a private one", add: func(dir string) error {
			return os.WriteFile(filepath.Join(dir, "both.pem"), []byte(private+otherKey), 0o600)
		}, want: "holds a private key"},
		{name: "not PEM", add: func(dir string) error {
			return os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("rotate in May\n"), 0o644)
		}, want: "notes.txt: not a PEM public key"},
		{name: "link out of the directory", add: func(dir string) error { return os.Symlink(secret, filepath.Join(dir, "node.pub")) }, want: "node.pub: a symbolic link"},
		{name: "relative link out of the directory", add: func(dir string) error {
			return os.Symlink("../../../../../../../../.."+secret, filepath.Join(dir, "node.pub"))
		}, want: "node.pub: a symbolic link"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			n := newNode(t)
			if err := tc.add(n.src.Keys); err != nil {
				t.Fatal(err)
			}
			before := n.snapshot()
			err := n.installer().Install(t.Context(), n.src)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Install = %v, want %q", err, tc.want)
			}
			if after := n.snapshot(); !reflect.DeepEqual(before, after) {
				t.Errorf("a refused install changed files")
			}
		})
	}
}

// A key taken out of --keys is removed from the node, and uninstall still puts back what was
// there before pullgate.
func TestInstallRemovesDroppedKeys(t *testing.T) {
	t.Parallel()
	n := newNode(t)
	n.write(KeysDir+"/old.pub", otherKey, 0o640)
	n.chown(KeysDir+"/old.pub", 1234, 5678)
	before := n.snapshot()
	writeFile(t, filepath.Join(n.src.Keys, "old.pub"), otherKey+"\n", 0o644)
	writeFile(t, filepath.Join(n.src.Keys, "ca.crt"), certificatePEM(t), 0o644)
	in := n.installer()
	if err := in.Install(t.Context(), n.src); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(n.root, KeysDir, "ca.crt")); err != nil {
		t.Errorf("certificate not installed: %v", err)
	}
	n.takeEvents()
	for _, k := range []string{"old.pub", "ca.crt"} {
		if err := os.Remove(filepath.Join(n.src.Keys, k)); err != nil {
			t.Fatal(err)
		}
	}
	if err := in.Install(t.Context(), n.src); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"old.pub", "ca.crt"} {
		if _, err := os.Lstat(filepath.Join(n.root, KeysDir, k)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s still installed: %v", k, err)
		}
	}
	// pullgate stops trusting them now.
	equalEvents(t, "keys dropped", n.takeEvents()[2:3], []string{"systemctl restart pullgate.service"})
	if err := in.Uninstall(t.Context()); err != nil {
		t.Fatal(err)
	}
	if after := n.snapshot(); !reflect.DeepEqual(before, after) {
		t.Errorf("uninstall did not restore the node:\nbefore %v\nafter  %v", before, after)
	}
}

func certificatePEM(t *testing.T) string {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

// A running kubelet whose flags or drop-ins set its endpoints would go around pullgate whatever
// its configuration file says: refused before anything changes.
func TestInstallChecksRunningKubelet(t *testing.T) {
	t.Parallel()
	const containerd = "unix:///run/containerd/containerd.sock"
	kubelet := []string{"/usr/bin/kubelet", "--config=" + kubeletPath, "--kubeconfig=/etc/kubernetes/kubelet.conf"}
	for _, tc := range []struct {
		name    string
		args    []string
		dropIn  string // in /etc/kubernetes/kubelet.conf.d/20-x.conf
		runtime bool
		want    string // refusal; none to install
	}{
		{name: "no flags", args: kubelet},
		{name: "image endpoint flag", args: append(kubelet, "--image-service-endpoint="+containerd), want: "kubelet runs with --image-service-endpoint=" + containerd},
		{name: "image endpoint flag, two words", args: append(kubelet, "--image-service-endpoint", containerd), want: "--image-service-endpoint=" + containerd},
		{name: "image endpoint flag to pullgate", args: append(kubelet, "--image-service-endpoint=/run/pullgate/pullgate.sock")},
		{name: "runtime endpoint flag (kubeadm before 1.27)", args: append(kubelet, "--container-runtime-endpoint="+containerd)},
		{name: "runtime endpoint flag with --runtime-service", runtime: true, args: append(kubelet, "--container-runtime-endpoint="+containerd), want: "--container-runtime-endpoint=" + containerd},
		{name: "another configuration file", args: []string{"kubelet", "--config", "/var/lib/kubelet/config.yaml"}, want: "pass --kubelet-config /var/lib/kubelet/config.yaml"},
		{name: "drop-in", args: append(kubelet, "--config-dir=/etc/kubernetes/kubelet.conf.d"), dropIn: "imageServiceEndpoint: " + containerd + "\n", want: "kubelet's drop-in /etc/kubernetes/kubelet.conf.d/20-x.conf sets imageServiceEndpoint"},
		{name: "drop-in of other fields", args: append(kubelet, "--config-dir=/etc/kubernetes/kubelet.conf.d"), dropIn: "maxPods: 200\n"},
		{name: "not kubelet", args: []string{"/usr/bin/kubelet-helper", "--image-service-endpoint=" + containerd}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			n := newNode(t)
			n.runProcess(1, "/sbin/init")
			n.runProcess(4242, tc.args...)
			if tc.dropIn != "" {
				n.write("/etc/kubernetes/kubelet.conf.d/20-x.conf", "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n"+tc.dropIn, 0o644)
				n.write("/etc/kubernetes/kubelet.conf.d/README", "imageServiceEndpoint: not read by kubelet\n", 0o644)
			}
			var opts []Option
			if tc.runtime {
				opts = append(opts, WithRuntimeService())
			}
			before := n.snapshot()
			err := n.installer(opts...).Install(t.Context(), n.src)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Install = %v, want %q", err, tc.want)
			}
			if after := n.snapshot(); !reflect.DeepEqual(before, after) {
				t.Errorf("a refused install changed files")
			}
			equalEvents(t, "refused install", n.takeEvents(), nil)
		})
	}
}

func TestSetFields(t *testing.T) {
	t.Parallel()
	head := "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n"
	image := []field{{key: "imageServiceEndpoint", value: Endpoint}}
	for _, tc := range []struct {
		name    string
		in      string
		fields  []field
		want    string
		wantErr string
	}{
		{name: "added", in: head + "cgroupDriver: systemd", fields: image, want: head + "cgroupDriver: systemd\nimageServiceEndpoint: " + Endpoint + "\n"},
		{name: "replaced", in: head + "imageServiceEndpoint: unix:///old.sock # old\nport: 10250\n", fields: image, want: head + "imageServiceEndpoint: " + Endpoint + "\nport: 10250\n"},
		{name: "both", in: head + "containerRuntimeEndpoint: x\n", fields: append(image, field{key: "containerRuntimeEndpoint", value: Endpoint}),
			want: head + "containerRuntimeEndpoint: " + Endpoint + "\nimageServiceEndpoint: " + Endpoint + "\n"},
		{name: "nested key of the same name stays", in: head + "x:\n  imageServiceEndpoint: keep\n", fields: image, want: head + "x:\n  imageServiceEndpoint: keep\nimageServiceEndpoint: " + Endpoint + "\n"},
		{name: "removed", in: head + "imageServiceEndpoint:\n  unix:///x.sock\nport: 1\n", fields: []field{{key: "imageServiceEndpoint", remove: true}}, want: head + "port: 1\n"},
		{name: "flow style refused", in: `{"apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration"}`, fields: image, wantErr: "by hand"},
		{name: "not kubelet's", in: "kind: Pod\n", fields: image, wantErr: "not a KubeletConfiguration"},
		{name: "not YAML", in: "kind: [\n", fields: image, wantErr: "parse"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := setFields([]byte(tc.in), tc.fields)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("setFields = %q, %v; want error %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || string(got) != tc.want {
				t.Fatalf("setFields = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}
