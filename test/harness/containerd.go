// Package harness starts the real parts the end-to-end tests run against: a containerd on a
// temporary root and socket, and a registry with real basic or token auth on loopback.
package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"text/template"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/image-spec/identity"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Containerd is a containerd process on its own root, state dir and socket.
// Stop and Start fail the test given to StartContainerd, so call them from that test's goroutine.
type Containerd struct {
	Socket    string // path of the gRPC socket
	Endpoint  string // "unix://" + Socket, as kubelet and pullgate take it
	CertsDir  string // registry.config_path of the CRI plugin; see HostsTOML
	Namespace string // containerd namespace the CRI plugin uses
	Version   string // as printed by `containerd --version`, e.g. "1.6.20~ds1" or "2.4.2+unknown"

	t            T
	sandboxImage string // set by WithPods
	networkReady bool   // set by WithNetworkReady
	snapshotter  string // the CRI plugin's
	bin          string
	dir          string
	config       string
	logPath      string
	cmd          *exec.Cmd
	exited       chan struct{} // closed when cmd has been waited for
}

// startTimeout bounds how long containerd may take to answer CRI calls after it was started.
const startTimeout = 30 * time.Second

// ContainerdOption configures StartContainerd.
type ContainerdOption func(*Containerd)

// WithPods makes containerd 2.x ready to run kubelet's pods: the overlayfs snapshotter, runc
// through the containerd-shim-runc-v2 next to the containerd binary, and sandboxImage as the
// pinned pause image. containerd pulls the pause image itself, without credentials, so a
// sandbox image on a registry that needs them must be pulled first (see Pull).
func WithPods(sandboxImage string) ContainerdOption {
	return func(c *Containerd) { c.sandboxImage = sandboxImage }
}

// WithNetworkReady gives containerd a CNI network configuration, of the loopback plugin alone,
// so that its CRI reports NetworkReady and a kubelet registered as a Node becomes Ready. No CNI
// plugin is installed: pods must run on the host's network (hostNetwork: true), as all the
// tests' pods do.
func WithNetworkReady() ContainerdOption {
	return func(c *Containerd) { c.networkReady = true }
}

// networkConfig is the CNI configuration of WithNetworkReady. containerd asks the plugins of a
// network for its status only from CNI 1.1.0 on; at 1.0.0 the file alone makes the network ready.
const networkConfig = `{"cniVersion": "1.0.0", "name": "pullgate-test", "plugins": [{"type": "loopback"}]}
`

// StartContainerd starts the containerd binary bin and waits until its CRI image service answers.
// Everything it creates is removed when the test ends, pods included; its log is shown only if
// the test failed.
func StartContainerd(t T, bin string, opts ...ContainerdOption) *Containerd {
	t.Helper()
	version, major, err := containerdVersion(bin)
	if err != nil {
		t.Fatal(err)
	}
	// A short directory under /tmp, not t.TempDir: Unix socket paths are limited to 108 bytes.
	dir, err := os.MkdirTemp("/tmp", "pg-ctrd-")
	if err != nil {
		t.Fatal(err)
	}
	c := &Containerd{
		Socket:    filepath.Join(dir, "c.sock"),
		CertsDir:  filepath.Join(dir, "certs.d"),
		Namespace: "k8s.io",
		Version:   version,
		t:         t,
		bin:       bin,
		dir:       dir,
		config:    filepath.Join(dir, "config.toml"),
		logPath:   filepath.Join(dir, "containerd.log"),
	}
	c.Endpoint = "unix://" + c.Socket
	for _, o := range opts {
		o(c)
	}
	if c.sandboxImage != "" {
		if major < 2 {
			t.Fatalf("containerd %s: WithPods needs containerd 2.x", version)
		}
		if err := podTools(bin); err != nil {
			Missing(t, err.Error())
		}
	}
	t.Cleanup(c.cleanup)

	for _, d := range []string{c.CertsDir, filepath.Join(dir, "cni", "bin"), filepath.Join(dir, "cni", "net.d")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if c.networkReady {
		if err := os.WriteFile(filepath.Join(dir, "cni", "net.d", "10-pullgate-test.conflist"), []byte(networkConfig), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tmpl := configV2
	if major >= 2 {
		tmpl = configV3
	}
	var cfg bytes.Buffer
	data := struct {
		*Containerd
		Platform     string
		Snapshotter  string
		SandboxImage string
	}{c, "linux/" + runtime.GOARCH, "native", c.sandboxImage}
	if c.sandboxImage != "" {
		data.Snapshotter = "overlayfs"
	}
	c.snapshotter = data.Snapshotter
	if err := tmpl.Execute(&cfg, data); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(c.config, cfg.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	c.Start()
	return c
}

// Dir is the directory holding containerd's root, state, sockets, config and log.
func (c *Containerd) Dir() string { return c.dir }

// Start starts containerd (again) on the same root and waits until it answers ImageFsInfo.
func (c *Containerd) Start() {
	c.t.Helper()
	if c.cmd != nil {
		c.t.Fatal("containerd: Start while running")
	}
	logFile, err := os.OpenFile(c.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		c.t.Fatal(err)
	}
	defer logFile.Close() // the child has its own copy
	cmd := exec.Command(c.bin, "--config", c.config)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// containerd looks for its shim on PATH: its own version's, not another containerd's.
	cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(c.bin)+string(os.PathListSeparator)+os.Getenv("PATH"))
	// Pdeathsig: a test binary killed by `go test -timeout` must not leave containerd behind.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		c.t.Fatalf("start containerd: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	c.cmd, c.exited = cmd, exited

	if err := c.waitReady(); err != nil {
		c.t.Fatalf("containerd %s: %v", c.Version, err)
	}
}

// waitReady polls with a real CRI call, since the socket appears before the CRI plugin is up.
func (c *Containerd) waitReady() error {
	conn, err := grpc.NewClient(c.Endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	client := runtimeapi.NewImageServiceClient(conn)
	deadline := time.Now().Add(startTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := client.ImageFsInfo(ctx, &runtimeapi.ImageFsInfoRequest{})
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-c.exited:
			return fmt.Errorf("exited during start: %v", c.cmd.ProcessState)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %v: %w", startTimeout, err)
		}
	}
}

// Stop stops containerd gracefully (SIGTERM, then SIGKILL after a grace period). Stopping a
// stopped containerd does nothing.
func (c *Containerd) Stop() {
	c.t.Helper()
	if err := c.stop(); err != nil {
		c.t.Fatal(err)
	}
}

func (c *Containerd) stop() error {
	if c.cmd == nil {
		return nil
	}
	defer func() { c.cmd = nil }()
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.exited:
		return nil
	case <-time.After(10 * time.Second):
	}
	_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
	<-c.exited
	return errors.New("containerd did not stop on SIGTERM within 10s; killed")
}

func (c *Containerd) cleanup() {
	// Containers outlive containerd, in their shims: stop and remove them first.
	if c.cmd != nil {
		if err := c.removePods(); err != nil {
			c.t.Errorf("remove pods: %v", err)
		}
	}
	if err := c.stop(); err != nil {
		c.t.Error(err)
	}
	if c.t.Failed() {
		if b, err := os.ReadFile(c.logPath); err == nil {
			c.t.Logf("containerd %s log (%s):\n%s", c.Version, c.logPath, tail(b, 256<<10))
		}
	}
	// The CRI plugin and snapshotters may leave mounts (e.g. a tmpfs for the sandbox /dev/shm) that
	// would make RemoveAll fail with EBUSY.
	unmountUnder(c.dir)
	if err := os.RemoveAll(c.dir); err != nil {
		c.t.Errorf("remove containerd dir: %v", err)
	}
}

// removePods stops and removes every pod sandbox, and with them their containers.
func (c *Containerd) removePods() error {
	return c.call(func(ctx context.Context, conn *grpc.ClientConn) error {
		rt := runtimeapi.NewRuntimeServiceClient(conn)
		resp, err := rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
		if err != nil {
			return err
		}
		var errs []error
		for _, s := range resp.Items {
			if _, err := rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: s.Id}); err != nil {
				errs = append(errs, err)
			}
			if _, err := rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: s.Id}); err != nil {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	})
}

// Pull pulls ref straight into containerd, bypassing pullgate, with basic credentials if user
// is not empty: for images that must be on the node before a test, such as the pause image.
func (c *Containerd) Pull(ref, user, password string) {
	c.t.Helper()
	req := &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}}
	if user != "" {
		req.Auth = &runtimeapi.AuthConfig{Username: user, Password: password}
	}
	err := c.call(func(ctx context.Context, conn *grpc.ClientConn) error {
		_, err := runtimeapi.NewImageServiceClient(conn).PullImage(ctx, req)
		return err
	})
	if err != nil {
		c.t.Fatalf("pull %s into containerd: %v", ref, err)
	}
}

// RemoveSnapshot removes the snapshot of ref's top layer from the CRI plugin's snapshotter,
// leaving the image record and its content: an image whose unpacking is incomplete.
func (c *Containerd) RemoveSnapshot(ref string) {
	c.t.Helper()
	err := c.client(func(ctx context.Context, client *containerd.Client) error {
		img, err := client.GetImage(ctx, ref)
		if err != nil {
			return err
		}
		diffs, err := img.RootFS(ctx)
		if err != nil {
			return err
		}
		return client.SnapshotService(c.snapshotter).Remove(ctx, identity.ChainID(diffs).String())
	})
	if err != nil {
		c.t.Fatalf("remove the snapshot of %s: %v", ref, err)
	}
}

// DeleteImage removes the image record name straight from containerd's image store, as
// `ctr -n k8s.io images rm` does, around the CRI.
func (c *Containerd) DeleteImage(name string) {
	c.t.Helper()
	err := c.images(func(ctx context.Context, s images.Store) error { return s.Delete(ctx, name) })
	if err != nil {
		c.t.Fatalf("delete image %s: %v", name, err)
	}
}

// TagImage makes the image record name point where from's does, straight in containerd's
// image store, as `ctr -n k8s.io images tag --force` does.
func (c *Containerd) TagImage(name, from string) {
	c.t.Helper()
	err := c.images(func(ctx context.Context, s images.Store) error {
		src, err := s.Get(ctx, from)
		if err != nil {
			return err
		}
		img := images.Image{Name: name, Target: src.Target, Labels: src.Labels}
		_, err = s.Update(ctx, img, "target")
		if errdefs.IsNotFound(err) {
			_, err = s.Create(ctx, img)
		}
		return err
	})
	if err != nil {
		c.t.Fatalf("tag %s as %s: %v", from, name, err)
	}
}

func (c *Containerd) images(f func(context.Context, images.Store) error) error {
	return c.client(func(ctx context.Context, client *containerd.Client) error { return f(ctx, client.ImageService()) })
}

// client calls f with containerd's own client, in the CRI plugin's namespace.
func (c *Containerd) client(f func(context.Context, *containerd.Client) error) error {
	return c.call(func(ctx context.Context, conn *grpc.ClientConn) error {
		client, err := containerd.NewWithConn(conn)
		if err != nil {
			return err
		}
		return f(namespaces.WithNamespace(ctx, c.Namespace), client)
	})
}

// call calls f with a connection to containerd and a deadline.
func (c *Containerd) call(f func(context.Context, *grpc.ClientConn) error) error {
	conn, err := grpc.NewClient(c.Endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return f(ctx, conn)
}

// HostsTOML writes CertsDir/<host>/hosts.toml so that pulls from host go to server, for example
// "http://127.0.0.1:5000" for plain HTTP. caFile, if not empty, is the CA that signs server's certificate.
// containerd reads this file at each pull, so it can be written while containerd runs.
func (c *Containerd) HostsTOML(host, server, caFile string) {
	c.t.Helper()
	dir := filepath.Join(c.CertsDir, host) // "127.0.0.1:5000" as is: only Windows rewrites the colon
	if err := os.MkdirAll(dir, 0o755); err != nil {
		c.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "hosts.toml"), hostsTOML(server, caFile), 0o644); err != nil {
		c.t.Fatal(err)
	}
}

func hostsTOML(server, caFile string) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "server = %q\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", server, server)
	if caFile != "" {
		fmt.Fprintf(&b, "  ca = %q\n", caFile)
	}
	return []byte(b.String())
}

// containerdVersion runs `bin --version`, which prints
// "containerd github.com/containerd/containerd[/v2] VERSION REVISION".
func containerdVersion(bin string) (version string, major int, err error) {
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		return "", 0, fmt.Errorf("%s --version: %w", bin, err)
	}
	fields := strings.Fields(string(out))
	if len(fields) < 3 {
		return "", 0, fmt.Errorf("%s --version: unexpected output %q", bin, out)
	}
	version = strings.TrimPrefix(fields[2], "v")
	if _, err := fmt.Sscanf(version, "%d.", &major); err != nil {
		return "", 0, fmt.Errorf("%s --version: no major version in %q", bin, out)
	}
	return version, major, nil
}

// ContainerdBinaries returns the containerd binaries to test against, keyed "1.6" and "2.x".
// A missing binary fails the test in CI (CI=true) and skips it elsewhere.
func ContainerdBinaries(t T) map[string]string {
	t.Helper()
	bins := map[string]string{}
	var missing []string
	v1 := os.Getenv("PULLGATE_CONTAINERD1")
	if v1 == "" {
		v1 = "/usr/bin/containerd"
	}
	if isExecutable(v1) {
		bins["1.6"] = v1
	} else {
		missing = append(missing, fmt.Sprintf("containerd 1.6 not found at %s: install Debian's containerd package (apt-get install containerd) or set PULLGATE_CONTAINERD1", v1))
	}
	if v2, err := containerd2Binary(); err == nil {
		bins["2.x"] = v2
	} else {
		missing = append(missing, err.Error())
	}
	if len(missing) > 0 {
		Missing(t, strings.Join(missing, "; "))
	}
	return bins
}

// Containerd2Binary returns $PULLGATE_CONTAINERD2, the containerd 2.x binary (the Makefile
// builds it). A missing binary fails the test in CI (CI=true) and skips it elsewhere.
func Containerd2Binary(t T) string {
	t.Helper()
	bin, err := containerd2Binary()
	if err != nil {
		Missing(t, err.Error())
	}
	return bin
}

func containerd2Binary() (string, error) {
	v2 := os.Getenv("PULLGATE_CONTAINERD2")
	if !isExecutable(v2) {
		return "", fmt.Errorf("containerd 2.x not found (PULLGATE_CONTAINERD2=%q): build it with `go install -tags no_btrfs github.com/containerd/containerd/v2/cmd/containerd@v2.4.2` and set PULLGATE_CONTAINERD2 to the binary", v2)
	}
	return v2, nil
}

// podTools tells what running pods with the containerd binary bin lacks: its shim and runc.
func podTools(bin string) error {
	var missing []string
	if shim := filepath.Join(filepath.Dir(bin), "containerd-shim-runc-v2"); !isExecutable(shim) {
		missing = append(missing, fmt.Sprintf("%s not found: build it with `go install github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@VERSION` of containerd's version into the same directory (make e2e does)", shim))
	}
	if _, err := exec.LookPath("runc"); err != nil {
		missing = append(missing, "runc not found: apt-get install runc")
	}
	if len(missing) > 0 {
		return errors.New(strings.Join(missing, "; "))
	}
	return nil
}

// Missing fails the test in CI (CI=true), where a missing real part is a defect, and skips it
// elsewhere.
func Missing(t T, msg string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

func isExecutable(path string) bool {
	if path == "" {
		return false
	}
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// unmountUnder lazily unmounts every mount point below dir, deepest first.
func unmountUnder(dir string) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var points []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			points = append(points, f[4])
		}
	}
	for i := len(points) - 1; i >= 0; i-- {
		_ = unix.Unmount(points[i], unix.MNT_DETACH)
	}
}

func tail(b []byte, n int) []byte {
	if len(b) <= n {
		return b
	}
	return append([]byte("...\n"), b[len(b)-n:]...)
}

// Plugins that need kernel features, tools or services absent in test sandboxes; disabling them
// keeps startup quick and the log free of noise. Unknown names are ignored by both versions.
const disabledPlugins = `[
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.blockfile",
  "io.containerd.snapshotter.v1.erofs",
  "io.containerd.differ.v1.erofs",
  "io.containerd.internal.v1.tracing",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.nri.v1.nri",
]`

// configCommon is what both config versions say alike: paths in the test's directory, the
// test's socket, debug logging.
const configCommon = `root = "{{.Dir}}/root"
state = "{{.Dir}}/state"
imports = []
disabled_plugins = ` + disabledPlugins + `

[grpc]
  address = "{{.Socket}}"

[ttrpc]
  address = "{{.Socket}}.ttrpc"

[debug]
  address = "{{.Dir}}/debug.sock"
  level = "debug"

[plugins."io.containerd.internal.v1.opt"]
  path = "{{.Dir}}/opt"
`

// configV2 is for containerd 1.x: one CRI plugin holds image and runtime settings.
// The native snapshotter works on any filesystem, overlayfs not in every sandbox.
var configV2 = template.Must(template.New("v2").Parse(`version = 2
` + configCommon + `
[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{{.Dir}}/cni/bin"
    conf_dir = "{{.Dir}}/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{{.CertsDir}}"
`))

// configV3 is for containerd 2.x, where the CRI plugin is split into an images and a runtime
// plugin. containerd 2.4 writes version 4 but migrates version 3, which every 2.x reads.
var configV3 = template.Must(template.New("v3").Parse(`version = 3
` + configCommon + `
# CRI pulls through the transfer service in 2.1+, which unpacks only for the snapshotters listed
# here (overlayfs by default): without this entry pulls fail with "no unpack platforms defined".
[plugins."io.containerd.transfer.v1.local"]
  [[plugins."io.containerd.transfer.v1.local".unpack_config]]
    platform = "{{.Platform}}"
    snapshotter = "{{.Snapshotter}}"
    differ = "walking"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "{{.Snapshotter}}"
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = "{{.CertsDir}}"
{{- if .SandboxImage}}
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{{.SandboxImage}}"
{{- end}}

[plugins."io.containerd.cri.v1.runtime"]
{{- if .SandboxImage}}
  # Without CAP_SYS_RESOURCE runc cannot lower a container's oom_score_adj below its own, and
  # fails with "can't get final child's PID".
  restrict_oom_score_adj = true
{{- end}}
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{{.Dir}}/cni/bin"]
    conf_dir = "{{.Dir}}/cni/net.d"

[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
`))
