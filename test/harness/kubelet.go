package harness

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"text/template"
	"time"
)

// Kubelet is a real kubelet: in standalone mode (no API server, static pods from ManifestDir), or
// registered as a Node with a Cluster (WithCluster), running the pods the scheduler binds to it
// as well as its static pods.
type Kubelet struct {
	NodeName    string // static pod "P" in the manifests runs as pod "P-NodeName"; with a cluster, the Node's name
	ManifestDir string // staticPodPath
	RootDir     string // --root-dir; kubelet reads registry credentials from RootDir/config.json
	LogsDir     string // podLogsDir: NAMESPACE_POD_UID/CONTAINER/N.log
	URL         string // kubelet's HTTPS API, e.g. URL+"/containerLogs/NS/POD/CONTAINER"
	LogPath     string // kubelet's own log

	t       T
	dir     string
	cluster *Cluster
	cmd     *exec.Cmd
	exited  chan struct{}
}

// KubeletOption configures StartKubelet.
type KubeletOption func(*Kubelet)

// WithCluster registers kubelet with c's API server as a Node, with the client certificate that
// c.NodeKubeconfig issues for it (user system:node:NodeName), instead of running it standalone.
// The Node is named by a loopback address of its own, 127.0.0.1 for c's first node, 127.0.0.2
// for the next: kubelet reports a loopback address as the node's InternalIP only when that is
// its name (it refuses one given with --node-ip), and the API server reaches kubelet's API
// (logs, exec) at that address, where kubelet listens. That API then authenticates clients by
// certificates of c's CA and asks the API server whether they may: Get presents
// kube-apiserver's own kubelet-client certificate. Wait for the Node with c.WaitNodeReady.
func WithCluster(c *Cluster) KubeletOption {
	return func(k *Kubelet) { k.cluster = c }
}

// KubeletEndpoints are the CRI endpoints kubelet talks to, as in its KubeletConfiguration.
type KubeletEndpoints struct {
	Runtime string // containerRuntimeEndpoint
	Image   string // imageServiceEndpoint
}

// kubeletStartTimeout bounds how long kubelet may take to answer /healthz.
const kubeletStartTimeout = 60 * time.Second

// DevicePluginSocket is where every kubelet serves device plugins, whatever its --root-dir. At
// start a kubelet deletes the sockets there and listens anew; it leaves its socket behind when it
// stops. Two kubelets doing that at once can leave one unable to listen, and it exits:
// lockKubeletStarts keeps starts one at a time, in this process and in others (`go test` runs
// packages at once), until the new kubelet serves its socket.
const DevicePluginSocket = "/var/lib/kubelet/device-plugins/kubelet.sock"

// lockKubeletStarts waits until no other kubelet start is under way, and returns the function
// that ends this one. It locks the device-plugin directory with flock(2): a lock of its own open
// file, so that starts in one process exclude each other as well.
func lockKubeletStarts() (unlock func(), err error) {
	dir := filepath.Dir(DevicePluginSocket)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, err
	}
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	return func() { f.Close() }, nil // closing the file releases the lock
}

// servesDevicePlugins says whether the socket at DevicePluginSocket was created at or after start
// and accepts connections. A socket an earlier kubelet left there refuses them. One that a
// kubelet still running listens on was created before start: its starts are over. Which inode
// the socket has says nothing, as the file system may give a new socket the inode of the one
// that kubelet deleted before.
func servesDevicePlugins(start time.Time) bool {
	fi, err := os.Lstat(DevicePluginSocket)
	if err != nil || fi.Mode()&fs.ModeSocket == 0 {
		return false
	}
	// ctime, which no one can set back. The kernel's coarse clock for file times may lag
	// time.Now by a tick; kubelet takes far longer than that to listen after it started.
	if ctime := time.Unix(fi.Sys().(*syscall.Stat_t).Ctim.Unix()); ctime.Before(start) {
		return false
	}
	c, err := net.DialTimeout("unix", DevicePluginSocket, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// KubeletBinary returns $PULLGATE_KUBELET (the Makefile builds it). A missing binary fails the
// test in CI (CI=true) and skips it elsewhere.
func KubeletBinary(t T) string {
	t.Helper()
	bin := os.Getenv("PULLGATE_KUBELET")
	if !isExecutable(bin) {
		Missing(t, fmt.Sprintf("kubelet not found (PULLGATE_KUBELET=%q): `make e2e` builds it into bin/kubelet-VERSION/ and sets PULLGATE_KUBELET; by hand: `cd test/kubelet && go build k8s.io/kubernetes/cmd/kubelet`", bin))
	}
	return bin
}

// StartKubelet starts kubelet with the given endpoints and waits until it answers /healthz.
// credentials, if not empty, is written to RootDir/config.json, where kubelet reads registry
// credentials from. kubelet runs standalone unless an option (WithCluster) says otherwise. It is
// stopped when the test ends, and its log shown if the test failed; its pods are left to
// containerd's cleanup.
func StartKubelet(t T, bin string, endpoints KubeletEndpoints, credentials []byte, opts ...KubeletOption) *Kubelet {
	t.Helper()
	// Under /tmp, not t.TempDir: kubelet's sockets live under its root directory.
	dir, err := os.MkdirTemp("/tmp", "pg-kubelet-")
	if err != nil {
		t.Fatal(err)
	}
	k := &Kubelet{
		NodeName:    "node-" + randomHex(4),
		ManifestDir: filepath.Join(dir, "manifests"),
		RootDir:     filepath.Join(dir, "root"),
		LogsDir:     filepath.Join(dir, "pods"),
		t:           t,
		dir:         dir,
		LogPath:     filepath.Join(dir, "kubelet.log"),
	}
	for _, o := range opts {
		o(k)
	}
	address := "127.0.0.1"
	if k.cluster != nil {
		k.NodeName = k.cluster.nodeAddress()
		address = k.NodeName
	}
	if err := holdKernelSettings(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.cleanup)
	for _, d := range []string{k.ManifestDir, k.RootDir, k.LogsDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if len(credentials) > 0 {
		if err := os.WriteFile(filepath.Join(k.RootDir, "config.json"), credentials, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// The ports are free when chosen, but another test may take one before kubelet binds it:
	// then kubelet exits at start, and a second try with other ports goes through.
	err = k.launch(bin, address, endpoints)
	if errors.Is(err, errExitedAtStart) {
		t.Logf("%v; starting it again on other ports", err)
		err = k.launch(bin, address, endpoints)
	}
	if err != nil {
		t.Fatal(err)
	}
	return k
}

var errExitedAtStart = errors.New("kubelet exited during start")

// launch starts kubelet with its API on address and free ports, and waits until it is healthy
// and serves its device-plugin socket.
func (k *Kubelet) launch(bin, address string, endpoints KubeletEndpoints) error {
	ports, err := freePorts(2)
	if err != nil {
		return err
	}
	k.URL = fmt.Sprintf("https://%s:%d", address, ports[0])
	var cfg bytes.Buffer
	data := map[string]any{"K": k, "Endpoints": endpoints, "Address": address, "Port": ports[0], "HealthzPort": ports[1]}
	args := []string{"--root-dir", k.RootDir, "--cert-dir", filepath.Join(k.dir, "pki"), "--hostname-override", k.NodeName, "-v=3"}
	if k.cluster != nil {
		data["ClientCAFile"], data["ClusterDomain"] = k.cluster.CAFile, clusterDomain
		args = append(args, "--kubeconfig", k.cluster.NodeKubeconfig(k.NodeName))
	}
	if err := kubeletConfig.Execute(&cfg, data); err != nil {
		return err
	}
	cfgPath := filepath.Join(k.dir, "kubelet.yaml")
	if err := os.WriteFile(cfgPath, cfg.Bytes(), 0o644); err != nil {
		return err
	}
	logFile, err := os.OpenFile(k.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logFile.Close() // the child has its own copy
	unlock, err := lockKubeletStarts()
	if err != nil {
		return err
	}
	defer unlock()
	start := time.Now()
	// Without --kubeconfig, standalone mode. -v=3 logs the events kubelet sends (or would send)
	// to the API server.
	k.cmd = exec.Command(bin, append([]string{"--config", cfgPath}, args...)...)
	k.cmd.Stdout, k.cmd.Stderr = logFile, logFile
	k.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := k.cmd.Start(); err != nil {
		return fmt.Errorf("start kubelet: %w", err)
	}
	k.exited = make(chan struct{})
	cmd, exited := k.cmd, k.exited
	go func() { _ = cmd.Wait(); close(exited) }()

	healthz := fmt.Sprintf("http://127.0.0.1:%d/healthz", ports[1])
	deadline := time.Now().Add(kubeletStartTimeout)
	healthy := false
	for {
		// Healthy, then serving the socket it created: kubelet logs nothing once it listens.
		if resp, err := http.Get(healthz); err == nil {
			resp.Body.Close()
			if healthy = resp.StatusCode == http.StatusOK; healthy && servesDevicePlugins(start) {
				return nil
			}
		}
		select {
		case <-exited:
			return fmt.Errorf("%w: %v", errExitedAtStart, cmd.ProcessState)
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			if healthy {
				return fmt.Errorf("kubelet healthy but not serving a new %s after %v", DevicePluginSocket, kubeletStartTimeout)
			}
			return fmt.Errorf("kubelet not healthy after %v", kubeletStartTimeout)
		}
	}
}

// Exited says, with the end of its log, that kubelet has exited, or returns nil while it runs:
// waiting for a pod of a kubelet that is gone would only time out.
func (k *Kubelet) Exited() error {
	select {
	case <-k.exited:
		b, _ := os.ReadFile(k.LogPath)
		return fmt.Errorf("kubelet exited: %v\n%s", k.cmd.ProcessState, tail(b, 8<<10))
	default:
		return nil
	}
}

// WritePod writes a static pod manifest as ManifestDir/name.yaml; kubelet starts it.
func (k *Kubelet) WritePod(name, manifest string) {
	k.t.Helper()
	// Written beside and renamed, so that kubelet never reads half a file (it ignores dot files).
	tmp := filepath.Join(k.ManifestDir, "."+name+".yaml")
	if err := os.WriteFile(tmp, []byte(manifest), 0o644); err != nil {
		k.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(k.ManifestDir, name+".yaml")); err != nil {
		k.t.Fatal(err)
	}
}

// DeletePod removes the manifest that WritePod wrote, if it is there; kubelet stops the pod.
func (k *Kubelet) DeletePod(name string) {
	k.t.Helper()
	if err := os.Remove(filepath.Join(k.ManifestDir, name+".yaml")); err != nil && !errors.Is(err, fs.ErrNotExist) {
		k.t.Fatal(err)
	}
}

// Log returns what kubelet logged so far.
func (k *Kubelet) Log() string {
	b, err := os.ReadFile(k.LogPath)
	if err != nil {
		k.t.Fatal(err)
	}
	return string(b)
}

// LogLine returns the first line kubelet logged for which match is true, if there is one.
func (k *Kubelet) LogLine(match func(line string) bool) (string, bool) {
	sc := bufio.NewScanner(strings.NewReader(k.Log()))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if match(sc.Text()) {
			return sc.Text(), true
		}
	}
	return "", false
}

// Get GETs path from kubelet's API, as the API server does for `kubectl logs`.
func (k *Kubelet) Get(path string) (string, error) {
	// kubelet serves with the self-signed certificate it made at start.
	tlsConfig := &tls.Config{InsecureSkipVerify: true}
	if k.cluster != nil {
		cert, err := k.cluster.kubeletClientCertificate()
		if err != nil {
			return "", err
		}
		tlsConfig.Certificates = []tls.Certificate{cert}
	}
	c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsConfig}}
	resp, err := c.Get(k.URL + path)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s: %s", path, resp.Status, b)
	}
	return string(b), nil
}

func (k *Kubelet) cleanup() {
	if k.cmd != nil && k.cmd.Process != nil {
		_ = k.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-k.exited:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-k.cmd.Process.Pid, syscall.SIGKILL)
			<-k.exited
		}
	}
	if err := releaseKernelSettings(); err != nil {
		k.t.Errorf("restore the kernel settings kubelet changed: %v", err)
	}
	if k.t.Failed() {
		if b, err := os.ReadFile(k.LogPath); err == nil {
			k.t.Logf("kubelet log (%s):\n%s", k.LogPath, tail(b, 256<<10))
		}
	}
	// kubelet makes its root directory a shared bind mount of itself.
	unmountUnder(k.dir)
	if err := os.RemoveAll(k.dir); err != nil {
		k.t.Errorf("remove kubelet dir: %v", err)
	}
}

// kernelSettings are the sysctls kubelet sets at start, with the values it sets; with
// protectKernelDefaults it refuses to start instead. The harness puts the machine's own values
// back when the last kubelet it started has stopped.
var kernelSettings = map[string]string{
	"vm/overcommit_memory": "1", "vm/panic_on_oom": "0", "kernel/panic": "10", "kernel/panic_on_oops": "1",
	"kernel/keys/root_maxkeys": "1000000", "kernel/keys/root_maxbytes": "25000000",
}

var kernel struct {
	sync.Mutex
	kubelets int
	saved    map[string][]byte
}

// holdKernelSettings saves the machine's kernel settings before the first of the kubelets
// running at once starts.
func holdKernelSettings() error {
	kernel.Lock()
	defer kernel.Unlock()
	if kernel.kubelets == 0 {
		kernel.saved = map[string][]byte{}
		for name := range kernelSettings {
			b, err := os.ReadFile("/proc/sys/" + name)
			if err != nil {
				return err
			}
			kernel.saved[name] = b
		}
	}
	kernel.kubelets++
	return nil
}

// releaseKernelSettings restores them when the last of those kubelets has stopped.
func releaseKernelSettings() error {
	kernel.Lock()
	defer kernel.Unlock()
	if kernel.kubelets--; kernel.kubelets > 0 {
		return nil
	}
	var errs []error
	for name, b := range kernel.saved {
		if err := os.WriteFile("/proc/sys/"+name, b, 0o644); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// freePorts returns n loopback TCP ports that were free a moment ago.
func freePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close() // held until all are chosen, so that they differ
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// kubeletConfig is a KubeletConfiguration for a test node: loopback only, anonymous access to its
// API when standalone (with a cluster: certificates of its CA, and the API server's word), no
// image garbage collection or eviction to disturb the tests, and the settings that a cgroup v1
// machine whose root lacks CAP_SYS_RESOURCE needs.
var kubeletConfig = template.Must(template.New("kubelet").Parse(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
staticPodPath: {{.K.ManifestDir}}
podLogsDir: {{.K.LogsDir}}
fileCheckFrequency: 1s
syncFrequency: 10s
address: {{.Address}}
port: {{.Port}}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {{.HealthzPort}}
{{- if .ClientCAFile}}
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: {{.ClientCAFile}}}
authorization:
  mode: Webhook
clusterDomain: {{.ClusterDomain}}
{{- else}}
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization:
  mode: AlwaysAllow
{{- end}}
containerRuntimeEndpoint: {{.Endpoints.Runtime}}
imageServiceEndpoint: {{.Endpoints.Image}}
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
localStorageCapacityIsolation: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "1Mi", nodefs.available: "1%", imagefs.available: "1%"}
`))
