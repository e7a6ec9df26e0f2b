package harness

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// ControlPlane names the binaries of a Kubernetes control plane, built from k8s.io/kubernetes
// at kubelet's version and etcd at the version it requires (test/kubelet, see the Makefile).
type ControlPlane struct {
	Etcd              string // $PULLGATE_ETCD
	APIServer         string // $PULLGATE_KUBE_APISERVER
	ControllerManager string // $PULLGATE_KUBE_CONTROLLER_MANAGER
	Scheduler         string // $PULLGATE_KUBE_SCHEDULER
}

// ControlPlaneBinaries returns the control plane's binaries from the environment the Makefile
// sets. A missing binary fails the test in CI (CI=true) and skips it elsewhere.
func ControlPlaneBinaries(t T) ControlPlane {
	t.Helper()
	cp := ControlPlane{
		Etcd:              os.Getenv("PULLGATE_ETCD"),
		APIServer:         os.Getenv("PULLGATE_KUBE_APISERVER"),
		ControllerManager: os.Getenv("PULLGATE_KUBE_CONTROLLER_MANAGER"),
		Scheduler:         os.Getenv("PULLGATE_KUBE_SCHEDULER"),
	}
	var missing []string
	for _, b := range []struct{ env, path, build string }{
		{"PULLGATE_ETCD", cp.Etcd, "go build ./etcd"},
		{"PULLGATE_KUBE_APISERVER", cp.APIServer, "go build k8s.io/kubernetes/cmd/kube-apiserver"},
		{"PULLGATE_KUBE_CONTROLLER_MANAGER", cp.ControllerManager, "go build k8s.io/kubernetes/cmd/kube-controller-manager"},
		{"PULLGATE_KUBE_SCHEDULER", cp.Scheduler, "go build k8s.io/kubernetes/cmd/kube-scheduler"},
	} {
		if !isExecutable(b.path) {
			missing = append(missing, fmt.Sprintf("%s=%q is no executable (by hand: `cd test/kubelet && %s`)", b.env, b.path, b.build))
		}
	}
	if len(missing) > 0 {
		Missing(t, "control plane not found: `make e2e` (or `make control-plane`) builds it into bin/ and sets PULLGATE_ETCD, PULLGATE_KUBE_*; "+strings.Join(missing, "; "))
	}
	return cp
}

// Cluster is a single-node Kubernetes control plane on loopback: etcd, kube-apiserver (Node and
// RBAC authorization, the NodeRestriction admission plugin, client certificates from the
// cluster's own CA), kube-controller-manager and kube-scheduler, each with its own identity.
// Nodes join with NodeKubeconfig (see WithCluster for kubelet).
type Cluster struct {
	URL             string                // kube-apiserver, "https://127.0.0.1:PORT"
	CAFile          string                // the cluster's CA (PEM): it signed the API server's certificate and every client certificate
	AdminKubeconfig string                // a kubeconfig for user kubernetes-admin in group system:masters, certificates embedded
	Config          *rest.Config          // as AdminKubeconfig
	Client          *kubernetes.Clientset // as AdminKubeconfig
	Dir             string                // everything the cluster keeps: certificates, kubeconfigs, etcd's data, logs

	t       T
	bins    ControlPlane
	ca      *authority
	etcdURL string
	nodes   int // nodes named so far by nodeAddress
	mu      sync.Mutex
	procs   []*process // in the order they started
}

// clusterStartTimeout bounds how long each part of the control plane may take to be ready.
// kube-apiserver takes 10 to 30 seconds on a 2-core machine; more while other tests run.
const clusterStartTimeout = 2 * time.Minute

// Addresses of the cluster's virtual networks. Nothing routes them: the node has no kube-proxy
// and pods run on the host's network.
const (
	serviceCIDR      = "10.0.0.0/24"
	apiServiceIP     = "10.0.0.1" // the first address of serviceCIDR: the "kubernetes" service
	clusterDomain    = "cluster.local"
	serviceAccountIs = "https://kubernetes.default.svc." + clusterDomain
)

// StartCluster starts a control plane from bins and waits until kube-apiserver is ready and
// kube-controller-manager and kube-scheduler are healthy. Everything is stopped and removed when
// the test ends; the parts' logs are shown only if it failed.
func StartCluster(t T, bins ControlPlane) *Cluster {
	t.Helper()
	start := time.Now()
	dir, err := os.MkdirTemp("/tmp", "pg-cluster-")
	if err != nil {
		t.Fatal(err)
	}
	c := &Cluster{Dir: dir, CAFile: filepath.Join(dir, "ca.crt"), AdminKubeconfig: filepath.Join(dir, "admin.kubeconfig"), t: t, bins: bins}
	t.Cleanup(c.cleanup)
	if err := c.writeCertificates(); err != nil {
		t.Fatal(err)
	}
	if err := c.startEtcd(); err != nil {
		t.Fatal(err)
	}
	if err := c.startAPIServer(); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, f := range []func() error{c.startControllerManager, c.startScheduler} {
		wg.Go(func() { errs[i] = f() })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	t.Logf("control plane ready at %s after %v (admin kubeconfig %s)", c.URL, time.Since(start).Round(100*time.Millisecond), c.AdminKubeconfig)
	return c
}

// writeCertificates makes the cluster's CA, the API server's serving and kubelet-client
// certificates and the service account signing key.
func (c *Cluster) writeCertificates() error {
	ca, err := newAuthority("pullgate-test-ca")
	if err != nil {
		return err
	}
	c.ca = ca
	files := map[string][]byte{"ca.crt": ca.CertPEM, "ca.key": ca.KeyPEM}
	cert, key, err := ca.servingCert("kube-apiserver",
		[]string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc." + clusterDomain},
		[]net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback, net.ParseIP(apiServiceIP)})
	if err != nil {
		return err
	}
	files["apiserver.crt"], files["apiserver.key"] = cert, key
	// kube-apiserver's identity towards kubelets (logs, exec), as kubeadm makes it.
	cert, key, err = ca.clientCert("kube-apiserver-kubelet-client", "system:masters")
	if err != nil {
		return err
	}
	files["apiserver-kubelet-client.crt"], files["apiserver-kubelet-client.key"] = cert, key
	sa, err := newAuthority("service-accounts") // only its key is used
	if err != nil {
		return err
	}
	files["sa.key"] = sa.KeyPEM
	// The aggregation layer's front proxy: its own CA, as kubeadm makes it. kube-apiserver
	// presents the client certificate to extension API servers, and kube-controller-manager
	// and kube-scheduler find the CA in kube-system/extension-apiserver-authentication.
	proxyCA, err := newAuthority("front-proxy-ca")
	if err != nil {
		return err
	}
	cert, key, err = proxyCA.clientCert("front-proxy-client")
	if err != nil {
		return err
	}
	files["front-proxy-ca.crt"], files["front-proxy-client.crt"], files["front-proxy-client.key"] = proxyCA.CertPEM, cert, key
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(c.Dir, name), b, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// startEtcd starts etcd on two free loopback ports, with its data in Dir/etcd.
func (c *Cluster) startEtcd() error {
	return c.retryPorts("etcd", 2, func(ports []int) (*process, error) {
		client := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
		p, err := c.start("etcd", c.bins.Etcd, "--name", "pullgate-test", "--data-dir", filepath.Join(c.Dir, "etcd"),
			"--listen-client-urls", client, "--listen-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", ports[1]),
			"--unsafe-no-fsync", "--log-level", "warn")
		if err != nil {
			return nil, err
		}
		c.etcdURL = client
		return p, p.wait(http.DefaultClient, client+"/health")
	})
}

func (c *Cluster) startAPIServer() error {
	return c.retryPorts("kube-apiserver", 1, func(ports []int) (*process, error) {
		c.URL = fmt.Sprintf("https://127.0.0.1:%d", ports[0])
		if err := c.writeKubeconfig(c.AdminKubeconfig, "kubernetes-admin", "system:masters"); err != nil {
			return nil, err
		}
		f := func(name string) string { return filepath.Join(c.Dir, name) }
		p, err := c.start("kube-apiserver", c.bins.APIServer,
			"--etcd-servers", c.etcdURL,
			"--bind-address", "127.0.0.1",
			"--advertise-address", "127.0.0.1",
			// As Kubernetes' integration tests run it: the "kubernetes" service gets no
			// endpoints, since a loopback address may not be one.
			"--endpoint-reconciler-type=none",
			fmt.Sprintf("--secure-port=%d", ports[0]),
			"--tls-cert-file", f("apiserver.crt"), "--tls-private-key-file", f("apiserver.key"),
			"--client-ca-file", f("ca.crt"),
			"--kubelet-client-certificate", f("apiserver-kubelet-client.crt"), "--kubelet-client-key", f("apiserver-kubelet-client.key"),
			"--kubelet-preferred-address-types", "InternalIP,Hostname",
			"--requestheader-client-ca-file", f("front-proxy-ca.crt"),
			"--requestheader-allowed-names", "front-proxy-client",
			"--requestheader-username-headers", "X-Remote-User",
			"--requestheader-group-headers", "X-Remote-Group",
			"--requestheader-extra-headers-prefix", "X-Remote-Extra-",
			"--proxy-client-cert-file", f("front-proxy-client.crt"), "--proxy-client-key-file", f("front-proxy-client.key"),
			"--service-account-issuer", serviceAccountIs,
			"--service-account-key-file", f("sa.key"),
			"--service-account-signing-key-file", f("sa.key"),
			"--service-cluster-ip-range", serviceCIDR,
			"--authorization-mode", "Node,RBAC",
			"--enable-admission-plugins", "NodeRestriction",
			"--allow-privileged=true",
			"--profiling=false",
			"-v=1")
		if err != nil {
			return nil, err
		}
		c.Config, err = clientcmd.BuildConfigFromFlags("", c.AdminKubeconfig)
		if err != nil {
			return p, err
		}
		c.Client, err = kubernetes.NewForConfig(c.Config)
		if err != nil {
			return p, err
		}
		httpClient, err := rest.HTTPClientFor(c.Config)
		if err != nil {
			return p, err
		}
		// /readyz includes the bootstrap of RBAC's default roles and bindings.
		return p, p.wait(httpClient, c.URL+"/readyz")
	})
}

func (c *Cluster) startControllerManager() error {
	kubeconfig := filepath.Join(c.Dir, "controller-manager.kubeconfig")
	if err := c.writeKubeconfig(kubeconfig, "system:kube-controller-manager"); err != nil {
		return err
	}
	return c.retryPorts("kube-controller-manager", 1, func(ports []int) (*process, error) {
		f := func(name string) string { return filepath.Join(c.Dir, name) }
		p, err := c.start("kube-controller-manager", c.bins.ControllerManager,
			"--kubeconfig", kubeconfig, "--authentication-kubeconfig", kubeconfig, "--authorization-kubeconfig", kubeconfig,
			"--bind-address", "127.0.0.1", fmt.Sprintf("--secure-port=%d", ports[0]),
			"--leader-elect=false",
			// Each controller with its own service account, as kubeadm runs it.
			"--use-service-account-credentials=true",
			"--service-account-private-key-file", f("sa.key"),
			"--root-ca-file", f("ca.crt"), // published as ConfigMap kube-root-ca.crt in every namespace
			"--cluster-signing-cert-file", f("ca.crt"), "--cluster-signing-key-file", f("ca.key"),
			"--profiling=false",
			"-v=1")
		if err != nil {
			return nil, err
		}
		return p, p.wait(insecureClient, fmt.Sprintf("https://127.0.0.1:%d/healthz", ports[0]))
	})
}

func (c *Cluster) startScheduler() error {
	kubeconfig := filepath.Join(c.Dir, "scheduler.kubeconfig")
	if err := c.writeKubeconfig(kubeconfig, "system:kube-scheduler"); err != nil {
		return err
	}
	return c.retryPorts("kube-scheduler", 1, func(ports []int) (*process, error) {
		p, err := c.start("kube-scheduler", c.bins.Scheduler,
			"--kubeconfig", kubeconfig, "--authentication-kubeconfig", kubeconfig, "--authorization-kubeconfig", kubeconfig,
			"--bind-address", "127.0.0.1", fmt.Sprintf("--secure-port=%d", ports[0]),
			"--leader-elect=false",
			"--profiling=false",
			"-v=1")
		if err != nil {
			return nil, err
		}
		return p, p.wait(insecureClient, fmt.Sprintf("https://127.0.0.1:%d/healthz", ports[0]))
	})
}

// insecureClient asks the health of kube-controller-manager and kube-scheduler, which serve
// with certificates they made themselves at start.
var insecureClient = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}

// NodeKubeconfig issues a client certificate for the kubelet of node nodeName (user
// system:node:NODENAME in group system:nodes, which the Node authorizer and NodeRestriction
// know) and writes a kubeconfig for it into Dir; it returns the file's path.
func (c *Cluster) NodeKubeconfig(nodeName string) string {
	c.t.Helper()
	path := filepath.Join(c.Dir, "node-"+nodeName+".kubeconfig")
	if err := c.writeKubeconfig(path, "system:node:"+nodeName, "system:nodes"); err != nil {
		c.t.Fatal(err)
	}
	return path
}

// WriteNodeCertificate issues a client certificate for the kubelet of node nodeName that
// expires after validFor, and writes it with its key to path, as kubelet keeps the one it
// rotates (kubelet-client-current.pem, certificate and key in one file), replacing the file in
// one rename. It returns when the certificate expires.
func (c *Cluster) WriteNodeCertificate(nodeName, path string, validFor time.Duration) time.Time {
	c.t.Helper()
	notAfter := time.Now().Add(validFor)
	cert, key, err := c.ca.clientCertFor(validFor, "system:node:"+nodeName, "system:nodes")
	if err != nil {
		c.t.Fatal(err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(cert, key...), 0o600); err != nil {
		c.t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		c.t.Fatal(err)
	}
	return notAfter
}

// FileKubeconfig writes to path a kubeconfig for server (the API server's URL, or a relay's)
// whose client certificate and key are read from certFile, as kubelet's kubeconfig reads the
// certificate kubelet rotates.
func (c *Cluster) FileKubeconfig(path, server, certFile string) {
	c.t.Helper()
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["pullgate"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: c.ca.CertPEM}
	cfg.AuthInfos["node"] = &clientcmdapi.AuthInfo{ClientCertificate: certFile, ClientKey: certFile}
	cfg.Contexts["pullgate"] = &clientcmdapi.Context{Cluster: "pullgate", AuthInfo: "node"}
	cfg.CurrentContext = "pullgate"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		c.t.Fatal(err)
	}
}

// UserKubeconfig issues a client certificate for user in groups and writes a kubeconfig for it
// into Dir; it returns the file's path. What the user may do is up to RBAC.
func (c *Cluster) UserKubeconfig(user string, groups ...string) string {
	c.t.Helper()
	path := filepath.Join(c.Dir, "user-"+strings.NewReplacer(":", "_", "/", "_").Replace(user)+".kubeconfig")
	if err := c.writeKubeconfig(path, user, groups...); err != nil {
		c.t.Fatal(err)
	}
	return path
}

// ClientFor returns a clientset for the kubeconfig at path, as NodeKubeconfig and
// UserKubeconfig write them.
func (c *Cluster) ClientFor(path string) *kubernetes.Clientset {
	c.t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		c.t.Fatal(err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		c.t.Fatal(err)
	}
	return client
}

// writeKubeconfig writes a kubeconfig for user in groups, with a new client certificate, the
// cluster's CA and URL embedded.
func (c *Cluster) writeKubeconfig(path, user string, groups ...string) error {
	cert, key, err := c.ca.clientCert(user, groups...)
	if err != nil {
		return err
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["pullgate"] = &clientcmdapi.Cluster{Server: c.URL, CertificateAuthorityData: c.ca.CertPEM}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{ClientCertificateData: cert, ClientKeyData: key}
	cfg.Contexts["pullgate"] = &clientcmdapi.Context{Cluster: "pullgate", AuthInfo: user}
	cfg.CurrentContext = "pullgate"
	return clientcmd.WriteToFile(*cfg, path)
}

// Namespace creates namespace name and waits until kube-controller-manager has made its
// default service account, without which the API server admits no pod there.
func (c *Cluster) Namespace(name string) {
	c.t.Helper()
	ctx := context.Background()
	_, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		c.t.Fatalf("create namespace %s: %v", name, err)
	}
	c.Wait(fmt.Sprintf("service account %s/default", name), clusterStartTimeout, func() (bool, error) {
		_, err := c.Client.CoreV1().ServiceAccounts(name).Get(ctx, "default", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return err == nil, err
	})
}

// WaitNodeReady waits until Node name exists, its Ready condition is True and
// kube-controller-manager has lifted the not-ready taint (until then the scheduler binds no pod
// to it), and returns it.
func (c *Cluster) WaitNodeReady(name string, timeout time.Duration) *corev1.Node {
	c.t.Helper()
	var node *corev1.Node
	c.Wait("node "+name+" Ready", timeout, func() (bool, error) {
		n, err := c.Client.CoreV1().Nodes().Get(context.Background(), name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		node = n
		for _, taint := range n.Spec.Taints {
			if taint.Key == corev1.TaintNodeNotReady {
				return false, nil
			}
		}
		for _, cond := range n.Status.Conditions {
			if cond.Type == corev1.NodeReady {
				return cond.Status == corev1.ConditionTrue, nil
			}
		}
		return false, nil
	})
	return node
}

// Wait polls done until it returns true, and fails the test with what it waited for when it
// returns an error that is not temporary, when timeout passes, or when a part of the control
// plane has exited.
func (c *Cluster) Wait(what string, timeout time.Duration, done func() (bool, error)) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	var last error
	for {
		ok, err := done()
		if ok {
			return
		}
		if err != nil {
			last = err
		}
		if err := c.Exited(); err != nil {
			c.t.Fatalf("waiting for %s: %v", what, err)
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("no %s after %v (last error: %v)", what, timeout, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Exited says which part of the control plane has exited, with the end of its log, or returns
// nil while all run.
func (c *Cluster) Exited() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range c.procs {
		if err := p.exitedErr(); err != nil {
			return err
		}
	}
	return nil
}

// LogPath returns the path of the log of a part of the control plane: "etcd", "kube-apiserver",
// "kube-controller-manager" or "kube-scheduler".
func (c *Cluster) LogPath(part string) string { return filepath.Join(c.Dir, part+".log") }

func (c *Cluster) cleanup() {
	c.mu.Lock()
	procs := c.procs
	c.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		procs[i].stop()
	}
	if c.t.Failed() {
		for _, p := range procs {
			if b, err := os.ReadFile(p.logPath); err == nil {
				c.t.Logf("%s log (%s):\n%s", p.name, p.logPath, tail(b, 64<<10))
			}
		}
	}
	if err := os.RemoveAll(c.Dir); err != nil {
		c.t.Errorf("remove cluster dir: %v", err)
	}
}

// start starts bin with args as part name of the cluster, in its own process group, logging
// to LogPath(name).
func (c *Cluster) start(name, bin string, args ...string) (*process, error) {
	logFile, err := os.OpenFile(c.LogPath(name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logFile.Close() // the child has its own copy
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Pdeathsig: a test binary killed by `go test -timeout` must not leave the cluster behind.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, logPath: c.LogPath(name), cmd: cmd, exited: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.exited) }()
	c.mu.Lock()
	c.procs = append(c.procs, p)
	c.mu.Unlock()
	return p, nil
}

// process is a part of the control plane.
type process struct {
	name    string
	logPath string
	cmd     *exec.Cmd
	exited  chan struct{}
}

var errProcessExited = errors.New("exited during start")

// wait polls url with client until it answers 200 OK.
func (p *process) wait(client *http.Client, url string) error {
	deadline := time.Now().Add(clusterStartTimeout)
	var last string
	for {
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		select {
		case <-p.exited:
			return fmt.Errorf("%s %w: %v\n%s", p.name, errProcessExited, p.cmd.ProcessState, p.logTail())
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %s not ready after %v: %s\n%s", p.name, url, clusterStartTimeout, last, p.logTail())
		}
	}
}

func (p *process) exitedErr() error {
	select {
	case <-p.exited:
		return fmt.Errorf("%s exited: %v\n%s", p.name, p.cmd.ProcessState, p.logTail())
	default:
		return nil
	}
}

func (p *process) logTail() []byte {
	b, _ := os.ReadFile(p.logPath)
	return tail(b, 8<<10)
}

// stop ends the process with SIGTERM, and its process group with SIGKILL after 10 seconds.
func (p *process) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.exited
	}
}

// retryPorts runs launch with n free loopback ports, and once more with others if the process
// exited during start: another test may take a port between its choice and its use.
func (c *Cluster) retryPorts(name string, n int, launch func(ports []int) (*process, error)) error {
	var err error
	for range 2 {
		var ports []int
		if ports, err = freePorts(n); err != nil {
			return err
		}
		var p *process
		p, err = launch(ports)
		if err == nil {
			return nil
		}
		if p != nil {
			p.stop()
			c.mu.Lock()
			c.procs = slices.DeleteFunc(c.procs, func(q *process) bool { return q == p })
			c.mu.Unlock()
		}
		if !errors.Is(err, errProcessExited) {
			return err
		}
	}
	return fmt.Errorf("start %s: %w", name, err)
}

// kubeletClientCertificate is kube-apiserver's client certificate for kubelets' APIs.
func (c *Cluster) kubeletClientCertificate() (tls.Certificate, error) {
	return tls.LoadX509KeyPair(filepath.Join(c.Dir, "apiserver-kubelet-client.crt"), filepath.Join(c.Dir, "apiserver-kubelet-client.key"))
}

// nodeAddress names a new node of the cluster by a loopback address of its own: 127.0.0.1 for
// the first, 127.0.0.2 for the next, and so on.
// NextNodeName is the name the next kubelet started WithCluster(c) registers as, for what must
// know it before kubelet starts (pullgate's cluster.nodeName).
func (c *Cluster) NextNodeName() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return fmt.Sprintf("127.0.0.%d", c.nodes+1)
}

func (c *Cluster) nodeAddress() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.nodes++
	if c.nodes > 254 {
		c.t.Fatal("a cluster has room for 254 nodes")
	}
	return fmt.Sprintf("127.0.0.%d", c.nodes)
}
