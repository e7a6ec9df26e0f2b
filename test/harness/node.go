package harness

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"time"
)

// Node is a node of a cluster as kubeadm leaves one, on a Machine: containerd 2.x and kubelet
// as systemd units, kubelet with its configuration in /var/lib/kubelet/config.yaml, its own
// client certificate in /etc/kubernetes/kubelet.conf and the registry's credentials in
// /var/lib/kubelet/config.json, registered as a Node and Ready. What runs on it (the installer
// DaemonSet) changes it as it would a real node: systemctl, files, kubelet's restarts.
type Node struct {
	*Machine
	// Name is the Node's name, also its loopback address.
	Name string
}

// Paths on a node, as kubeadm's nodes have them.
const (
	NodeKubeletConfig = "/var/lib/kubelet/config.yaml"
	nodeSocket        = "/run/containerd/containerd.sock"
)

// nodeStartTimeout bounds the wait for the Node to be Ready after boot.
const nodeStartTimeout = 2 * time.Minute

// StartNode starts a node of c whose containerd pulls from reg (with reg's credentials, also
// kubelet's) and runs pod sandboxes of pause, an image in reg. kubelet's healthz is on
// 127.0.0.1:10248, its default: one node at a time.
func StartNode(t T, c *Cluster, reg *Registry, pause string) *Node {
	t.Helper()
	ctrd := Containerd2Binary(t)
	if err := podTools(ctrd); err != nil {
		Missing(t, err.Error())
	}
	kubelet := KubeletBinary(t)
	name := c.nodeAddress()
	if err := holdKernelSettings(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := releaseKernelSettings(); err != nil {
			t.Errorf("restore the kernel settings: %v", err)
		}
	})
	// A machine's /proc/sys is read-only: the host is set to kubelet's values beforehand, and
	// kubelet finds nothing to do.
	for setting, v := range kernelSettings {
		if err := os.WriteFile("/proc/sys/"+setting, []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	var ctrdConfig bytes.Buffer
	if err := configV3.Execute(&ctrdConfig, struct {
		*Containerd
		Platform     string
		Snapshotter  string
		SandboxImage string
	}{&Containerd{Socket: nodeSocket, CertsDir: "/etc/containerd/certs.d", dir: "/var/lib/containerd"}, "linux/" + runtime.GOARCH, "overlayfs", pause}); err != nil {
		t.Fatal(err)
	}
	ports, err := freePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	var kubeletConf bytes.Buffer
	if err := kubeletConfig.Execute(&kubeletConf, map[string]any{
		"K":             &Kubelet{ManifestDir: "/etc/kubernetes/manifests", LogsDir: "/var/log/pods"},
		"Endpoints":     KubeletEndpoints{Runtime: "unix://" + nodeSocket, Image: "unix://" + nodeSocket},
		"Address":       name,
		"Port":          ports[0],
		"HealthzPort":   10248,
		"ClientCAFile":  "/etc/kubernetes/pki/ca.crt",
		"ClusterDomain": clusterDomain,
	}); err != nil {
		t.Fatal(err)
	}
	kubeconfig, err := os.ReadFile(c.NodeKubeconfig(name))
	if err != nil {
		t.Fatal(err)
	}
	credentials, err := reg.dockerConfig()
	if err != nil {
		t.Fatal(err)
	}

	m := StartMachine(t, name, MachineConfig{
		Files: map[string][]byte{
			"/etc/containerd/config.toml":                             ctrdConfig.Bytes(),
			"/etc/containerd/certs.d/" + reg.Host + "/hosts.toml":     hostsTOML(reg.URL, ""),
			"/var/lib/containerd/cni/net.d/10-pullgate-test.conflist": []byte(networkConfig),
			"/etc/systemd/system/containerd.service":                  []byte(nodeContainerdUnit),
			"/etc/systemd/system/kubelet.service":                     fmt.Appendf(nil, nodeKubeletUnit, name),
			NodeKubeletConfig:                                         kubeletConf.Bytes(),
			"/var/lib/kubelet/config.json":                            credentials,
			"/etc/kubernetes/kubelet.conf":                            kubeconfig,
			"/etc/kubernetes/pki/ca.crt":                              c.ca.CertPEM,
			"/etc/kubernetes/manifests/.keep":                         nil,
			"/var/lib/containerd/cni/bin/.keep":                       nil, // no plugins: pods run on the host's network
		},
		Binaries: map[string]string{
			"/usr/local/bin/containerd":              ctrd,
			"/usr/local/bin/containerd-shim-runc-v2": filepath.Join(filepath.Dir(ctrd), "containerd-shim-runc-v2"),
			"/usr/local/bin/kubelet":                 kubelet,
		},
		Wants: []string{"containerd.service", "kubelet.service"},
	})
	n := &Node{Machine: m, Name: name}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("node %s, kubelet's and pullgate's journal:\n%s", name, tail([]byte(m.Journal("kubelet.service", "pullgate.service", "containerd.service")), 256<<10))
		}
	})
	// containerd pulls the sandbox image by itself, without credentials: it must be there.
	pull := []string{"--address", nodeSocket, "-n", "k8s.io", "images", "pull", "--plain-http", "--user", reg.Username + ":" + reg.Password, pause}
	c.Wait("containerd on node "+name+" to pull the pause image", time.Minute, func() (bool, error) {
		return m.Command("ctr", pull...).Run() == nil, nil
	})
	c.WaitNodeReady(name, nodeStartTimeout)
	return n
}

// nodeContainerdUnit runs containerd 2.x as Debian's unit does.
const nodeContainerdUnit = `[Unit]
Description=containerd container runtime
After=local-fs.target

[Service]
ExecStart=/usr/local/bin/containerd --config /etc/containerd/config.toml
Type=notify
Delegate=yes
KillMode=process
Restart=always
RestartSec=1
LimitNOFILE=infinity
TasksMax=infinity
OOMScoreAdjust=-999

[Install]
WantedBy=multi-user.target
`

// nodeKubeletUnit runs kubelet as kubeadm's packages do, for the Node named %s.
const nodeKubeletUnit = `[Unit]
Description=kubelet
Wants=containerd.service
After=containerd.service

[Service]
ExecStart=/usr/local/bin/kubelet --config=/var/lib/kubelet/config.yaml --kubeconfig=/etc/kubernetes/kubelet.conf --hostname-override=%s -v=2
Restart=always
RestartSec=1

[Install]
WantedBy=multi-user.target
`
