package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// designSample is the configuration sketch of DESIGN.md without its policies, which this version
// refuses.
const designSample = `apiVersion: pullgate.io/v1alpha1
kind: PullgateConfig
listen: unix:///run/pullgate/pullgate.sock
runtimeEndpoint: unix:///run/containerd/containerd.sock
containerdNamespace: k8s.io
registryConfigPath: /etc/containerd/certs.d
stateDir: /var/lib/pullgate
metricsAddress: 127.0.0.1:9750
log: {format: json, level: info}
auth:
  files: [/var/lib/kubelet/config.json]
  nodeCredentials: fallback          # fallback | never
verification:
  timeout: 30s
  cacheTTL: 24h
  trustedRoot: /etc/pullgate/trusted_root.json   # sigstore trusted root, for keyless and tlog checks
defaultAction: deny                  # for images that match no policy: deny | allow
`

// problems splits a Validate error into its problems.
func problems(err error) []string {
	if err == nil {
		return nil
	}
	var out []string
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			out = append(out, e.Error())
		}
		return out
	}
	return []string{err.Error()}
}

func TestDesignSample(t *testing.T) {
	t.Parallel()
	c, err := Parse([]byte(designSample))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	want := Default()
	want.Verification.TrustedRoot = "/etc/pullgate/trusted_root.json"
	if !reflect.DeepEqual(c, want) {
		t.Errorf("Parse(sample) =\n  %+v\nwant\n  %+v", c, want)
	}
}

func TestParseDefaults(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		yaml string
		want func(*Config)
	}{
		{name: "empty file", yaml: ""},
		{name: "only the version", yaml: "apiVersion: pullgate.io/v1alpha1\nkind: PullgateConfig\n"},
		{
			name: "nested field keeps its siblings' defaults",
			yaml: "log: {level: debug}\nverification: {cacheTTL: 1h}\n",
			want: func(c *Config) {
				c.Log.Level = "debug"
				c.Verification.CacheTTL = Duration{Duration: time.Hour}
			},
		},
		{
			name: "lists replace the default",
			yaml: "auth: {files: [/root/.docker/config.json, /etc/containers/auth.json]}\n",
			want: func(c *Config) {
				c.Auth.Files = []string{"/root/.docker/config.json", "/etc/containers/auth.json"}
			},
		},
		{
			name: "durations",
			yaml: "shutdownGracePeriod: 1m30s\nverification: {timeout: 250ms}\n",
			want: func(c *Config) {
				c.ShutdownGracePeriod = Duration{Duration: 90 * time.Second}
				c.Verification.Timeout = Duration{Duration: 250 * time.Millisecond}
			},
		},
		{
			name: "empty values that disable features",
			yaml: "metricsAddress: \"\"\nregistryConfigPath: \"\"\n",
			want: func(c *Config) {
				c.MetricsAddress = ""
				c.RegistryConfigPath = ""
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := Parse([]byte(tt.yaml))
			if err != nil {
				t.Fatal(err)
			}
			want := Default()
			if tt.want != nil {
				tt.want(&want)
			}
			if !reflect.DeepEqual(c, want) {
				t.Errorf("Parse =\n  %+v\nwant\n  %+v", c, want)
			}
			if err := c.Validate(); err != nil {
				t.Errorf("Validate: %v", err)
			}
		})
	}
}

func TestDefaultIsValid(t *testing.T) {
	t.Parallel()
	if err := Default().Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestParseErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		yaml string
		want string
	}{
		{name: "unknown top-level field", yaml: "listenAddress: /run/x.sock\n", want: `"listenAddress"`},
		{name: "unknown nested field", yaml: "log: {lvl: debug}\n", want: `"lvl"`},
		{name: "misspelt verification field", yaml: "verification: {timout: 5s}\n", want: `"timout"`},
		{name: "wrong type", yaml: "listen: [a, b]\n", want: "listen"},
		{name: "not yaml", yaml: "listen: [\n", want: "parse"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := Parse([]byte(tt.yaml))
			if err == nil {
				t.Fatalf("Parse = %+v, want an error", c)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not mention %s", err, tt.want)
			}
		})
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	t.Parallel()
	c, err := Parse([]byte(`apiVersion: pullgate.io/v1
listen: /run/pullgate/pullgate.sock
log: {level: verbose}
auth: {nodeCredentials: always}
verification: {timeout: 0s}
`))
	if err != nil {
		t.Fatal(err)
	}
	got := problems(c.Validate())
	fields := []string{"apiVersion", "listen", "log.level", "auth.nodeCredentials", "verification.timeout"}
	if len(got) != len(fields) {
		t.Fatalf("got %d problems, want %d:\n%s", len(got), len(fields), strings.Join(got, "\n"))
	}
	for i, f := range fields {
		if !strings.HasPrefix(got[i], f+": ") {
			t.Errorf("problem %d = %q, want it to start with %q", i, got[i], f+": ")
		}
	}
}

func TestValidateFields(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		yaml string
		// want is the path of the one problem, and a part of its message; empty means valid.
		field, mentions string
	}{
		{name: "wrong kind", yaml: "kind: KubeletConfiguration", field: "kind", mentions: "PullgateConfig"},
		{name: "listen on tcp", yaml: "listen: tcp://127.0.0.1:1234", field: "listen", mentions: "tcp://127.0.0.1:1234"},
		{name: "relative listen socket", yaml: "listen: unix://run/pullgate.sock", field: "listen", mentions: "unix:///absolute/path.sock"},
		{name: "runtime endpoint without scheme", yaml: "runtimeEndpoint: /run/containerd/containerd.sock", field: "runtimeEndpoint", mentions: "unix://"},
		{name: "no namespace", yaml: `containerdNamespace: ""`, field: "containerdNamespace", mentions: "k8s.io"},
		{name: "relative registry config path", yaml: "registryConfigPath: certs.d", field: "registryConfigPath", mentions: "certs.d"},
		{name: "relative state dir", yaml: "stateDir: var/lib/pullgate", field: "stateDir", mentions: "absolute"},
		{name: "empty state dir", yaml: `stateDir: ""`, field: "stateDir", mentions: "absolute"},
		{name: "metrics address without port", yaml: "metricsAddress: 127.0.0.1", field: "metricsAddress", mentions: "127.0.0.1"},
		{name: "metrics address with empty port", yaml: "metricsAddress: '127.0.0.1:'", field: "metricsAddress", mentions: "host:port"},
		{name: "metrics on all interfaces", yaml: "metricsAddress: ':9750'"},
		{name: "negative grace period", yaml: "shutdownGracePeriod: -1s", field: "shutdownGracePeriod", mentions: "negative"},
		{name: "zero grace period", yaml: "shutdownGracePeriod: 0s"},
		{name: "bad grace period", yaml: "shutdownGracePeriod: soon", field: "shutdownGracePeriod", mentions: `"soon"`},
		{name: "log format", yaml: "log: {format: xml}", field: "log.format", mentions: "xml"},
		{name: "text log", yaml: "log: {format: text, level: debug}"},
		{name: "log level", yaml: "log: {level: trace}", field: "log.level", mentions: "trace"},
		{name: "relative credential file", yaml: "auth: {files: [/var/lib/kubelet/config.json, config.json]}", field: "auth.files[1]", mentions: "config.json"},
		{name: "no credential files", yaml: "auth: {files: []}"},
		{name: "node credentials never", yaml: "auth: {nodeCredentials: never}"},
		{name: "cluster with kubelet's kubeconfig", yaml: "cluster: {kubeconfig: /var/lib/kubelet/kubeconfig, nodeName: node-1.example}"},
		{name: "cluster, node named by the host name", yaml: "cluster: {kubeconfig: /etc/kubernetes/kubelet.conf}"},
		{name: "cluster with a relative kubeconfig", yaml: "cluster: {kubeconfig: kubelet.conf}", field: "cluster.kubeconfig", mentions: "kubelet.conf"},
		{name: "cluster with a bad node name", yaml: "cluster: {kubeconfig: /etc/kubernetes/kubelet.conf, nodeName: Node_1}", field: "cluster.nodeName", mentions: "Node_1"},
		{name: "node credentials", yaml: "auth: {nodeCredentials: sometimes}", field: "auth.nodeCredentials", mentions: "sometimes"},
		{name: "zero timeout", yaml: "verification: {timeout: 0s}", field: "verification.timeout", mentions: "positive"},
		{name: "negative timeout", yaml: "verification: {timeout: -5s}", field: "verification.timeout", mentions: "positive"},
		{name: "timeout without unit", yaml: "verification: {timeout: 30}", field: "verification.timeout", mentions: `"30s"`},
		{name: "timeout in days", yaml: "verification: {timeout: 1d}", field: "verification.timeout", mentions: `"1d"`},
		{name: "negative cache TTL", yaml: "verification: {cacheTTL: -1h}", field: "verification.cacheTTL", mentions: "negative"},
		{name: "zero cache TTL", yaml: "verification: {cacheTTL: 0s}"},
		{name: "bad cache TTL", yaml: "verification: {cacheTTL: forever}", field: "verification.cacheTTL", mentions: `"forever"`},
		{name: "default allow", yaml: "defaultAction: allow"},
		{name: "default action", yaml: "defaultAction: warn", field: "defaultAction", mentions: "warn"},
		{name: "skip policy", yaml: "policies:\n- name: base-images\n  images: [\"docker.io/library/*\"]\n  mode: skip\n"},
		{
			name:     "enforce policy without authorities",
			yaml:     "policies:\n- name: apps\n  images: [\"registry.example.com/**\"]\n  mode: enforce\n",
			field:    "policies[0].authorities",
			mentions: "at least one authority",
		},
		{
			name:     "policy with missing key file",
			yaml:     "policies:\n- name: apps\n  images: [\"registry.example.com/**\"]\n  mode: enforce\n  authorities:\n  - name: k\n    key: {file: /nonexistent.pub}\n    ignoreTransparencyLog: true\n",
			field:    "policies[0].authorities[0]",
			mentions: "/nonexistent.pub",
		},
		{name: "max signatures", yaml: "verification: {maxSignatures: 0}", field: "verification.maxSignatures", mentions: "positive"},
		{name: "empty policies", yaml: "policies: []"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := Parse([]byte(tt.yaml))
			if err != nil {
				t.Fatal(err)
			}
			got := problems(c.Validate())
			if tt.field == "" {
				if len(got) != 0 {
					t.Errorf("Validate = %q, want no problem", got)
				}
				return
			}
			if len(got) != 1 {
				t.Fatalf("Validate = %q, want one problem with %s", got, tt.field)
			}
			if !strings.HasPrefix(got[0], tt.field+": ") || !strings.Contains(got[0], tt.mentions) {
				t.Errorf("Validate = %q, want %q naming %s", got[0], tt.field+": ...", tt.mentions)
			}
		})
	}
}

func TestValidateBadDurationsTogether(t *testing.T) {
	t.Parallel()
	c, err := Parse([]byte("shutdownGracePeriod: 1y\nverification: {timeout: fast, cacheTTL: 7}\nlog: {level: loud}\n"))
	if err != nil {
		t.Fatalf("Parse: %v; bad durations should be reported by Validate with the others", err)
	}
	got := problems(c.Validate())
	want := []string{"shutdownGracePeriod: ", "verification.timeout: ", "verification.cacheTTL: ", "log.level: "}
	if len(got) != len(want) {
		t.Fatalf("Validate = %q, want %d problems", got, len(want))
	}
	for _, w := range want {
		found := false
		for _, g := range got {
			found = found || strings.HasPrefix(g, w)
		}
		if !found {
			t.Errorf("no problem starting with %q in %q", w, got)
		}
	}
}

func TestDurationRoundTrip(t *testing.T) {
	t.Parallel()
	b, err := Duration{Duration: 90 * time.Second}.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	var d Duration
	if err := d.UnmarshalJSON(b); err != nil || d.invalid != nil || d.Duration != 90*time.Second {
		t.Errorf("%s read back as %v (%v, %v)", b, d.Duration, err, d.invalid)
	}
}

func TestUnixPath(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		endpoint string
		want     string
		ok       bool
	}{
		{name: "absolute", endpoint: "unix:///run/pullgate/pullgate.sock", want: "/run/pullgate/pullgate.sock", ok: true},
		{name: "containerd", endpoint: "unix:///run/containerd/containerd.sock", want: "/run/containerd/containerd.sock", ok: true},
		{name: "relative", endpoint: "unix://run/pullgate.sock"},
		{name: "bare path", endpoint: "/run/pullgate/pullgate.sock"},
		{name: "tcp", endpoint: "tcp://127.0.0.1:10010"},
		{name: "npipe", endpoint: "npipe:////./pipe/containerd-containerd"},
		{name: "scheme only", endpoint: "unix://"},
		{name: "empty", endpoint: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := UnixPath(tt.endpoint)
			if tt.ok != (err == nil) || got != tt.want {
				t.Errorf("UnixPath(%q) = %q, %v; want %q, ok %t", tt.endpoint, got, err, tt.want, tt.ok)
			}
			if err != nil && !strings.Contains(err.Error(), tt.endpoint) {
				t.Errorf("error %q does not show the endpoint", err)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good.yaml", designSample)
	if _, err := Load(good); err != nil {
		t.Errorf("Load(sample): %v", err)
	}
	invalid := write("invalid.yaml", "log: {level: loud}\nstateDir: relative\n")
	_, err := Load(invalid)
	if err == nil || !strings.Contains(err.Error(), invalid) || !strings.Contains(err.Error(), "log.level") || !strings.Contains(err.Error(), "stateDir") {
		t.Errorf("Load(invalid) error = %v, want the file and both problems", err)
	}
	unknown := write("unknown.yaml", "bogus: 1\n")
	if _, err := Load(unknown); err == nil || !strings.Contains(err.Error(), unknown) || !strings.Contains(err.Error(), "bogus") {
		t.Errorf("Load(unknown) error = %v, want the file and the field", err)
	}
	if _, err := Load(filepath.Join(dir, "absent.yaml")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load(absent) error = %v, want os.ErrNotExist", err)
	}
}

func TestVerifyPresentImages(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name, yaml string
		want       bool
	}{
		{"default", "", true},
		{"on", "verification: {verifyPresentImages: true}", true},
		{"off", "verification: {verifyPresentImages: false}", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte("apiVersion: pullgate.io/v1alpha1\nkind: PullgateConfig\n" + tt.yaml))
			if err != nil {
				t.Fatal(err)
			}
			if got := c.Verification.PresentImages(); got != tt.want {
				t.Errorf("PresentImages() = %v, want %v", got, tt.want)
			}
		})
	}
}
