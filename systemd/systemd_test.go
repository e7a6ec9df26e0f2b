package systemd

import (
	"bufio"
	"bytes"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// directives reads a unit file into its key=value lines per section, keys repeated in order.
func directives(t *testing.T, name string) map[string][]string {
	t.Helper()
	data, err := Files.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	d := map[string][]string{}
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "["):
			section = strings.Trim(line, "[]")
		default:
			k, v, _ := strings.Cut(line, "=")
			d[section+"."+k] = append(d[section+"."+k], v)
		}
	}
	return d
}

// The promises docs/install.md makes about the units.
func TestUnits(t *testing.T) {
	t.Parallel()
	service := directives(t, "pullgate.service")
	socket := directives(t, "pullgate.socket")
	kubelet := directives(t, "10-pullgate.conf")
	tests := []struct {
		name  string
		got   []string
		value string
	}{
		{"socket path", socket["Socket.ListenStream"], "/run/pullgate/pullgate.sock"},
		{"socket mode", socket["Socket.SocketMode"], "0660"},
		{"socket owner", socket["Socket.SocketUser"], "root"},
		{"ready when serving", service["Service.Type"], "notify"},
		{"watchdog", service["Service.WatchdogSec"], "30"},
		{"restart", service["Service.Restart"], "always"},
		{"after containerd", strings.Fields(strings.Join(service["Unit.After"], " ")), "containerd.service"},
		{"before kubelet", service["Unit.Before"], "kubelet.service"},
		{"needs its socket", service["Unit.Requires"], "pullgate.socket"},
		{"reload", service["Service.ExecReload"], "/bin/kill -HUP $MAINPID"},
		{"read-only system", service["Service.ProtectSystem"], "strict"},
		{"writes only state and runtime", service["Service.ReadWritePaths"], "/run/pullgate /var/lib/pullgate"},
		{"no new privileges", service["Service.NoNewPrivileges"], "yes"},
		{"no capabilities", service["Service.CapabilityBoundingSet"], ""},
		{"killed late on OOM", service["Service.OOMScoreAdjust"], "-900"},
		// Without it, every stop of the service deletes /run/pullgate and with it the socket
		// that pullgate.socket holds open for kubelet.
		{"socket survives a stop", service["Service.RuntimeDirectoryPreserve"], "yes"},
		{"kubelet after the socket", strings.Fields(strings.Join(kubelet["Unit.After"], " ")), "pullgate.socket"},
	}
	for _, tc := range tests {
		if !slices.Contains(tc.got, tc.value) {
			t.Errorf("%s: got %q, want %q among them", tc.name, tc.got, tc.value)
		}
	}
}

func TestKubeletConfigSnippet(t *testing.T) {
	t.Parallel()
	data, err := Files.ReadFile("kubelet-config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		APIVersion           string `json:"apiVersion"`
		Kind                 string `json:"kind"`
		ImageServiceEndpoint string `json:"imageServiceEndpoint"`
	}
	if err := yaml.UnmarshalStrict(data, &c); err != nil {
		t.Fatal(err)
	}
	if c.APIVersion != "kubelet.config.k8s.io/v1beta1" || c.Kind != "KubeletConfiguration" || c.ImageServiceEndpoint != "unix:///run/pullgate/pullgate.sock" {
		t.Errorf("kubelet-config.yaml = %+v", c)
	}
}
