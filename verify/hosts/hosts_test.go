package hosts

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// summary is the part of an Endpoint that decides where and how a tag is resolved.
func summary(eps []Endpoint) []string {
	var out []string
	for _, ep := range eps {
		s := ep.Scheme + "://" + ep.Host
		if ep.Mirror {
			s += " mirror"
		}
		if ep.Resolve {
			s += " resolve"
		}
		if ep.OverridePath != "" {
			s += " path=" + ep.OverridePath
		}
		if ep.TLS != nil && ep.TLS.InsecureSkipVerify {
			s += " skip-verify"
		}
		out = append(out, s)
	}
	return out
}

// writeHosts writes content as certs.d/<dir>/hosts.toml under root.
func writeHosts(t *testing.T, root, dir, content string) string {
	t.Helper()
	d := filepath.Join(root, dir)
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(d, "hosts.toml")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestEndpointsDefaults(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		registry string
		want     string
	}{
		{name: "registry", registry: "registry.example.com", want: "https://registry.example.com resolve"},
		{name: "registry with port", registry: "registry.example.com:5000", want: "https://registry.example.com:5000 resolve"},
		{name: "private address stays https", registry: "10.0.0.5:5000", want: "https://10.0.0.5:5000 resolve"},
		{name: "docker hub", registry: "docker.io", want: "https://registry-1.docker.io resolve"},
		{name: "localhost with port", registry: "localhost:5000", want: "http://localhost:5000 resolve skip-verify"},
		{name: "loopback ipv4 with port", registry: "127.0.0.1:5000", want: "http://127.0.0.1:5000 resolve skip-verify"},
		{name: "loopback ipv6 with port", registry: "[::1]:5000", want: "http://[::1]:5000 resolve skip-verify"},
		{name: "localhost without port", registry: "localhost", want: "https://localhost resolve skip-verify"},
		{name: "localhost on 443", registry: "localhost:443", want: "https://localhost:443 resolve skip-verify"},
	}
	roots := map[string]string{
		"no directory":       "",
		"missing directory":  filepath.Join(t.TempDir(), "absent"),
		"empty directory":    t.TempDir(),
		"directory, no file": t.TempDir(),
	}
	// A registry directory without hosts.toml (only legacy certificate files) gives the defaults.
	for _, tt := range tests {
		if err := os.MkdirAll(filepath.Join(roots["directory, no file"], tt.registry), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for rootName, root := range roots {
		for _, tt := range tests {
			t.Run(rootName+"/"+tt.name, func(t *testing.T) {
				t.Parallel()
				eps, err := New(root).Endpoints(tt.registry)
				if err != nil {
					t.Fatal(err)
				}
				if got := summary(eps); !reflect.DeepEqual(got, []string{tt.want}) {
					t.Errorf("Endpoints(%s) = %q, want %q", tt.registry, got, tt.want)
				}
				if eps[0].Mirror || eps[0].OverridePath != "" || eps[0].Header != nil {
					t.Errorf("default endpoint %+v has settings nobody asked for", eps[0])
				}
			})
		}
	}
}

func TestEndpointsHostsFile(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		registry string
		file     string
		want     []string
	}{
		{
			name:     "plain http server",
			registry: "registry.example.com:5000",
			file:     `server = "http://registry.example.com:5000"`,
			want:     []string{"http://registry.example.com:5000 resolve"},
		},
		{
			name:     "server without scheme is https",
			registry: "registry.example.com",
			file:     `server = "registry.example.com"`,
			want:     []string{"https://registry.example.com resolve"},
		},
		{
			name:     "server with /v2 path",
			registry: "registry.example.com",
			file:     `server = "https://registry.example.com/v2"`,
			want:     []string{"https://registry.example.com resolve"},
		},
		{
			name:     "server elsewhere is treated as a mirror",
			registry: "registry.example.com",
			file:     `server = "https://proxy.example.net"`,
			want:     []string{"https://proxy.example.net mirror resolve"},
		},
		{
			name:     "docker hub server is the registry",
			registry: "docker.io",
			file:     `server = "https://registry-1.docker.io"`,
			want:     []string{"https://registry-1.docker.io resolve"},
		},
		{
			name:     "no server keeps the default",
			registry: "registry.example.com",
			file: `[host."https://mirror.example.net"]
capabilities = ["pull", "resolve"]
`,
			want: []string{"https://mirror.example.net mirror resolve", "https://registry.example.com resolve"},
		},
		{
			name:     "mirrors in file order, then the server",
			registry: "registry.example.com",
			file: `server = "https://registry.example.com"

[host."https://z-mirror.example.net"]
  capabilities = ["pull", "resolve"]

[host."http://a-mirror.example.net:5000"]
  capabilities = ["pull", "resolve"]

[host."https://m-mirror.example.net"]
`,
			want: []string{
				"https://z-mirror.example.net mirror resolve",
				"http://a-mirror.example.net:5000 mirror resolve",
				"https://m-mirror.example.net mirror resolve",
				"https://registry.example.com resolve",
			},
		},
		{
			name:     "sub-tables do not repeat a host",
			registry: "registry.example.com",
			file: `[host."https://b.example.net"]
[host."https://b.example.net".header]
  x-one = "1"
[host."https://a.example.net"]
`,
			want: []string{"https://b.example.net mirror resolve", "https://a.example.net mirror resolve", "https://registry.example.com resolve"},
		},
		{
			name:     "host without scheme is https",
			registry: "registry.example.com",
			file:     `[host."mirror.example.net"]`,
			want:     []string{"https://mirror.example.net mirror resolve", "https://registry.example.com resolve"},
		},
		{
			name:     "pull-only mirror cannot resolve",
			registry: "registry.example.com",
			file: `[host."https://mirror.example.net"]
  capabilities = ["pull"]
`,
			want: []string{"https://mirror.example.net mirror", "https://registry.example.com resolve"},
		},
		{
			name:     "capabilities are case-insensitive",
			registry: "registry.example.com",
			file: `[host."https://mirror.example.net"]
  capabilities = ["Pull", "RESOLVE", "push", "referrers"]
`,
			want: []string{"https://mirror.example.net mirror resolve", "https://registry.example.com resolve"},
		},
		{
			name:     "host entry for the registry itself is not a mirror",
			registry: "registry.example.com",
			file:     `[host."https://registry.example.com"]`,
			want:     []string{"https://registry.example.com resolve", "https://registry.example.com resolve"},
		},
		{
			name:     "docker hub host entry is the registry, as in containerd's documentation",
			registry: "docker.io",
			file: `server = "https://docker.io"

[host."https://registry-1.docker.io"]
  capabilities = ["pull", "resolve"]
`,
			want: []string{"https://registry-1.docker.io resolve", "https://docker.io resolve"},
		},
		{
			name:     "override_path keeps the path",
			registry: "registry.example.com",
			file: `[host."https://mirror.example.net/proxy/registry"]
  override_path = true
`,
			want: []string{"https://mirror.example.net mirror resolve path=/proxy/registry", "https://registry.example.com resolve"},
		},
		{
			name:     "path without override_path gets /v2 appended, as containerd does",
			registry: "registry.example.com",
			file:     `[host."https://mirror.example.net/proxy"]`,
			want:     []string{"https://mirror.example.net mirror resolve path=/proxy/v2", "https://registry.example.com resolve"},
		},
		{
			name:     "skip_verify on a host",
			registry: "registry.example.com",
			file: `[host."https://mirror.example.net"]
  skip_verify = true
`,
			want: []string{"https://mirror.example.net mirror resolve skip-verify", "https://registry.example.com resolve"},
		},
		{
			name:     "top-level skip_verify applies to the default server",
			registry: "registry.example.com",
			file:     `skip_verify = true`,
			want:     []string{"https://registry.example.com resolve skip-verify"},
		},
		{
			name:     "top-level capabilities apply to the default server",
			registry: "registry.example.com",
			file: `capabilities = ["pull"]

[host."https://mirror.example.net"]
`,
			want: []string{"https://mirror.example.net mirror resolve", "https://registry.example.com"},
		},
		{
			name:     "localhost server keeps containerd's defaults",
			registry: "localhost:5000",
			file: `[host."https://mirror.example.net"]
`,
			want: []string{"https://mirror.example.net mirror resolve", "http://localhost:5000 resolve skip-verify"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			root := t.TempDir()
			writeHosts(t, root, tt.registry, tt.file)
			eps, err := New(root).Endpoints(tt.registry)
			if err != nil {
				t.Fatal(err)
			}
			if got := summary(eps); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Endpoints(%s) =\n  %q\nwant\n  %q", tt.registry, got, tt.want)
			}
		})
	}
}

func TestEndpointsHostsFileErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		file string
		want string
	}{
		{name: "unknown capability", file: "[host.\"https://m.example.net\"]\ncapabilities = [\"pull\", \"fly\"]\n", want: `unknown capability "fly"`},
		{name: "unknown capability on server", file: "server = \"https://r.example.com\"\ncapabilities = [\"fetch\"]\n", want: `unknown capability "fetch"`},
		{name: "unknown capability at top level without server", file: "capabilities = [\"fetch\"]\n", want: `unknown capability "fetch"`},
		{name: "not toml", file: "server = ", want: "hosts.toml"},
		{name: "missing ca file", file: "[host.\"https://m.example.net\"]\nca = \"absent.pem\"\n", want: "absent.pem"},
		{name: "ca of the wrong type", file: "[host.\"https://m.example.net\"]\nca = 5\n", want: "ca:"},
		{name: "ca list with a number", file: "[host.\"https://m.example.net\"]\nca = [\"a.pem\", 5]\n", want: "ca:"},
		{name: "client pair of three", file: "[host.\"https://m.example.net\"]\nclient = [[\"a\", \"b\", \"c\"]]\n", want: "invalid pair"},
		{name: "missing client certificate", file: "[host.\"https://m.example.net\"]\nclient = \"absent.pem\"\n", want: "absent.pem"},
		{name: "header of the wrong type", file: "[host.\"https://m.example.net\".header]\nx-count = 5\n", want: `header "x-count"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			root := t.TempDir()
			writeHosts(t, root, "registry.example.com", tt.file)
			eps, err := New(root).Endpoints("registry.example.com")
			if err == nil {
				t.Fatalf("Endpoints = %q, want an error", summary(eps))
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not mention %q", err, tt.want)
			}
		})
	}
}

func TestEndpointsBadPEM(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	writeHosts(t, root, "registry.example.com", `ca = "ca.pem"`)
	if err := os.WriteFile(filepath.Join(root, "registry.example.com", "ca.pem"), []byte("not a certificate"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := New(root).Endpoints("registry.example.com")
	if err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Fatalf("Endpoints error = %v, want one about the PEM file", err)
	}
}

func TestEndpointsDirectoryOrder(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		dirs     []string
		registry string
		want     string // the directory whose hosts.toml is used
	}{
		{name: "host_port_ before host:port", dirs: []string{"127.0.0.1:5000", "127.0.0.1_5000_", "_default"}, registry: "127.0.0.1:5000", want: "127.0.0.1_5000_"},
		{name: "host:port without host_port_", dirs: []string{"127.0.0.1:5000", "_default"}, registry: "127.0.0.1:5000", want: "127.0.0.1:5000"},
		{name: "ipv6 host_port_", dirs: []string{"[::1]:5000", "[::1]_5000_"}, registry: "[::1]:5000", want: "[::1]_5000_"},
		{name: "registry before _default", dirs: []string{"registry.example.com", "_default"}, registry: "registry.example.com", want: "registry.example.com"},
		{name: "_default for others", dirs: []string{"registry.example.com", "_default"}, registry: "other.example.com", want: "_default"},
		{name: "another port is another registry", dirs: []string{"127.0.0.1_5001_", "_default"}, registry: "127.0.0.1:5000", want: "_default"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			root := t.TempDir()
			// Each directory's file names its own mirror.
			mirrors := map[string]string{}
			for i, d := range tt.dirs {
				mirrors[d] = fmt.Sprintf("mirror%d.example.net", i)
				writeHosts(t, root, d, fmt.Sprintf("[host.%q]\n", "https://"+mirrors[d]))
			}
			eps, err := New(root).Endpoints(tt.registry)
			if err != nil {
				t.Fatal(err)
			}
			if len(eps) != 2 || eps[0].Host != mirrors[tt.want] {
				t.Errorf("Endpoints(%s) = %q, want the file in %s (mirror %s)", tt.registry, summary(eps), tt.want, mirrors[tt.want])
			}
		})
	}
}

// testCA is a CA and a certificate it issued (usable as client or server certificate), written
// as PEM files into a directory.
type testCA struct {
	name           string
	leaf           *x509.Certificate
	caFile         string
	clientCertFile string
	clientKeyFile  string
	clientBoth     string // certificate and key in one file
}

func newTestCA(t *testing.T, dir, name string) testCA {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name + " CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	ca := testCA{
		name:           name,
		leaf:           leaf,
		caFile:         filepath.Join(dir, name+"-ca.pem"),
		clientCertFile: filepath.Join(dir, name+"-client.cert"),
		clientKeyFile:  filepath.Join(dir, name+"-client.key"),
		clientBoth:     filepath.Join(dir, name+"-client.pem"),
	}
	for file, data := range map[string][]byte{
		ca.caFile:         pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		ca.clientCertFile: certPEM,
		ca.clientKeyFile:  keyPEM,
		ca.clientBoth:     append(append([]byte{}, certPEM...), keyPEM...),
	} {
		if err := os.WriteFile(file, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return ca
}

// trusts reports whether cfg's roots accept the certificate ca issued.
func trusts(cfg *tls.Config, ca testCA) bool {
	_, err := ca.leaf.Verify(x509.VerifyOptions{Roots: cfg.RootCAs, DNSName: ca.name})
	return err == nil
}

func TestEndpointsTLS(t *testing.T) {
	t.Parallel()
	// one's files are in the host directory and named relative to it; two's are elsewhere and
	// named by absolute path; other is trusted by nobody.
	tests := []struct {
		name        string
		settings    func(one, two testCA) string
		trusted     []string
		clientCerts []string
		skipVerify  bool
	}{
		{
			name:     "ca as a relative string",
			settings: func(one, two testCA) string { return `ca = "one-ca.pem"` },
			trusted:  []string{"one"},
		},
		{
			name:     "ca as a list, relative and absolute",
			settings: func(one, two testCA) string { return fmt.Sprintf(`ca = ["one-ca.pem", %q]`, two.caFile) },
			trusted:  []string{"one", "two"},
		},
		{
			name:        "client certificate and key in one file",
			settings:    func(one, two testCA) string { return `client = "one-client.pem"` },
			clientCerts: []string{"one"},
		},
		{
			name:        "client files as a list",
			settings:    func(one, two testCA) string { return fmt.Sprintf(`client = ["one-client.pem", %q]`, two.clientBoth) },
			clientCerts: []string{"one", "two"},
		},
		{
			name: "client pairs",
			settings: func(one, two testCA) string {
				return fmt.Sprintf(`client = [["one-client.cert", "one-client.key"], [%q, %q]]`, two.clientCertFile, two.clientKeyFile)
			},
			clientCerts: []string{"one", "two"},
		},
		{
			name:       "skip_verify with a ca",
			settings:   func(one, two testCA) string { return "ca = \"one-ca.pem\"\nskip_verify = true" },
			trusted:    []string{"one"},
			skipVerify: true,
		},
		{
			name:     "skip_verify false",
			settings: func(one, two testCA) string { return "skip_verify = false" },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			root := t.TempDir()
			hostDir := filepath.Join(root, "registry.example.com")
			if err := os.MkdirAll(hostDir, 0o755); err != nil {
				t.Fatal(err)
			}
			cas := map[string]testCA{
				"one":   newTestCA(t, hostDir, "one"),
				"two":   newTestCA(t, t.TempDir(), "two"),
				"other": newTestCA(t, t.TempDir(), "other"),
			}
			s := tt.settings(cas["one"], cas["two"])
			// The same settings on a mirror and on the server.
			writeHosts(t, root, "registry.example.com", fmt.Sprintf("server = \"https://registry.example.com\"\n%s\n\n[host.\"https://mirror.example.net\"]\n%s\n", s, s))
			eps, err := New(root).Endpoints("registry.example.com")
			if err != nil {
				t.Fatal(err)
			}
			if len(eps) != 2 {
				t.Fatalf("got %q, want a mirror and the server", summary(eps))
			}
			for _, ep := range eps {
				if ep.TLS == nil {
					t.Fatalf("%s: no TLS configuration", ep.Host)
				}
				for name, ca := range cas {
					if want := slices.Contains(tt.trusted, name); trusts(ep.TLS, ca) != want {
						t.Errorf("%s: trusts %s = %t, want %t", ep.Host, name, !want, want)
					}
				}
				if len(tt.trusted) == 0 && ep.TLS.RootCAs != nil {
					t.Errorf("%s: root CAs replaced although no ca is set", ep.Host)
				}
				var got []string
				for _, c := range ep.TLS.Certificates {
					leaf, err := x509.ParseCertificate(c.Certificate[0])
					if err != nil {
						t.Fatal(err)
					}
					got = append(got, leaf.Subject.CommonName)
				}
				if !slices.Equal(got, tt.clientCerts) {
					t.Errorf("%s: client certificates %q, want %q", ep.Host, got, tt.clientCerts)
				}
				if ep.TLS.InsecureSkipVerify != tt.skipVerify {
					t.Errorf("%s: InsecureSkipVerify = %t, want %t", ep.Host, ep.TLS.InsecureSkipVerify, tt.skipVerify)
				}
			}
		})
	}
}

func TestEndpointsHeader(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	writeHosts(t, root, "registry.example.com", `server = "https://registry.example.com"
[header]
  x-server = "s"

[host."https://mirror.example.net".header]
  x-custom-token = "abc"
  x-multi = ["one", "two"]
`)
	eps, err := New(root).Endpoints("registry.example.com")
	if err != nil {
		t.Fatal(err)
	}
	want := []http.Header{
		{"X-Custom-Token": {"abc"}, "X-Multi": {"one", "two"}},
		{"X-Server": {"s"}},
	}
	if len(eps) != len(want) {
		t.Fatalf("got %q", summary(eps))
	}
	for i, ep := range eps {
		if !reflect.DeepEqual(ep.Header, want[i]) {
			t.Errorf("%s: header %v, want %v", ep.Host, ep.Header, want[i])
		}
	}
}

// withCA writes a CA and a hosts.toml using it for registry.example.com under root, and returns
// the hosts.toml's path.
func withCA(t *testing.T, root string) string {
	t.Helper()
	hostDir := filepath.Join(root, "registry.example.com")
	if err := os.MkdirAll(hostDir, 0o755); err != nil {
		t.Fatal(err)
	}
	newTestCA(t, hostDir, "one")
	return writeHosts(t, root, "registry.example.com", "[host.\"https://a.example.net\"]\nca = \"one-ca.pem\"\n")
}

func TestEndpointsCache(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	file := withCA(t, root)
	c := New(root)

	first, err := c.Endpoints("registry.example.com")
	if err != nil {
		t.Fatal(err)
	}
	again, err := c.Endpoints("registry.example.com")
	if err != nil {
		t.Fatal(err)
	}
	if again[0].TLS != first[0].TLS {
		t.Error("an unchanged hosts.toml gave a new *tls.Config; connection pools would not be reused")
	}

	// Same size, new modification time.
	if err := os.WriteFile(file, []byte("[host.\"https://b.example.net\"]\nca = \"one-ca.pem\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(file, later, later); err != nil {
		t.Fatal(err)
	}
	got, err := c.Endpoints("registry.example.com")
	if err != nil {
		t.Fatal(err)
	}
	if got[0].Host != "b.example.net" {
		t.Errorf("after a change of content and mtime: %q, want b.example.net first", summary(got))
	}
	if got[0].TLS == first[0].TLS {
		t.Error("a changed hosts.toml kept the old *tls.Config")
	}

	// Same modification time, new size.
	if err := os.WriteFile(file, []byte("[host.\"https://cc.example.net\"]\nca = \"one-ca.pem\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(file, later, later); err != nil {
		t.Fatal(err)
	}
	if got, err = c.Endpoints("registry.example.com"); err != nil {
		t.Fatal(err)
	}
	if got[0].Host != "cc.example.net" {
		t.Errorf("after a change of size: %q, want cc.example.net first", summary(got))
	}

	// Removed: back to the default.
	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	if got, err = c.Endpoints("registry.example.com"); err != nil {
		t.Fatal(err)
	}
	if want := []string{"https://registry.example.com resolve"}; !reflect.DeepEqual(summary(got), want) {
		t.Errorf("after removal: %q, want %q", summary(got), want)
	}

	// A broken file is reported, and fixing it is noticed.
	writeHosts(t, root, "registry.example.com", "capabilities = [\"bogus\"]\n")
	if _, err := c.Endpoints("registry.example.com"); err == nil {
		t.Error("a broken hosts.toml gave no error")
	}
	writeHosts(t, root, "registry.example.com", "server = \"http://registry.example.com\"\n")
	if got, err = c.Endpoints("registry.example.com"); err != nil {
		t.Fatal(err)
	}
	if want := []string{"http://registry.example.com resolve"}; !reflect.DeepEqual(summary(got), want) {
		t.Errorf("after a fix: %q, want %q", summary(got), want)
	}
}

func TestEndpointsDefaultCached(t *testing.T) {
	t.Parallel()
	c := New(t.TempDir())
	a, err := c.Endpoints("127.0.0.1:5000")
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.Endpoints("127.0.0.1:5000")
	if err != nil {
		t.Fatal(err)
	}
	if a[0].TLS == nil || a[0].TLS != b[0].TLS {
		t.Error("the default endpoint of a loopback registry gets a new *tls.Config on every call")
	}
}

// Any registry name in a pod spec is looked up: the cache stays bounded, and a configured
// registry keeps its TLS settings (and so its connections) through the churn.
func TestEndpointsCacheBounded(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	withCA(t, root)
	c := New(root)
	first, err := c.Endpoints("registry.example.com")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 * maxCached {
		if _, err := c.Endpoints(fmt.Sprintf("r%d.example.com", i)); err != nil {
			t.Fatal(err)
		}
	}
	c.mu.Lock()
	n := len(c.cache)
	c.mu.Unlock()
	if n > maxCached {
		t.Errorf("%d registries cached, want at most %d", n, maxCached)
	}
	again, err := c.Endpoints("registry.example.com")
	if err != nil {
		t.Fatal(err)
	}
	if again[0].TLS != first[0].TLS {
		t.Error("a configured registry lost its *tls.Config to unconfigured names")
	}
}
