package hosts

import (
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/pelletier/go-toml/v2"
)

// FuzzParse checks the reading of containerd's hosts.toml, a node file written by
// administrators and installers:
//   - parse never panics;
//   - a file it reads gives its [host."..."] tables in file order, each once, then the server;
//   - every endpoint is http or https, and its host is a host[:port], without user, path, query
//     or fragment;
//   - only endpoints on the registry itself (registry-1.docker.io for docker.io) are not
//     mirrors, so the pull's credentials never go anywhere else;
//   - an endpoint without capabilities may resolve; unknown capabilities are errors;
//   - reading is deterministic.
//
// Files that name CA or client certificate files outside the host directory are skipped: the
// fuzzer must not read the machine's files.
func FuzzParse(f *testing.F) {
	for _, s := range []struct{ registry, file string }{
		// TestEndpointsHostsFile
		{"registry.example.com:5000", `server = "http://registry.example.com:5000"`},
		{"registry.example.com", `server = "registry.example.com"`},
		{"registry.example.com", `server = "https://registry.example.com/v2"`},
		{"registry.example.com", `server = "https://proxy.example.net"`},
		{"docker.io", `server = "https://registry-1.docker.io"`},
		{"registry.example.com", "[host.\"https://mirror.example.net\"]\ncapabilities = [\"pull\", \"resolve\"]\n"},
		{"registry.example.com", "server = \"https://registry.example.com\"\n\n[host.\"https://z-mirror.example.net\"]\n  capabilities = [\"pull\", \"resolve\"]\n\n[host.\"http://a-mirror.example.net:5000\"]\n  capabilities = [\"pull\", \"resolve\"]\n\n[host.\"https://m-mirror.example.net\"]\n"},
		{"registry.example.com", "[host.\"https://b.example.net\"]\n[host.\"https://b.example.net\".header]\n  x-one = \"1\"\n[host.\"https://a.example.net\"]\n"},
		{"registry.example.com", `[host."mirror.example.net"]`},
		{"registry.example.com", "[host.\"https://mirror.example.net\"]\n  capabilities = [\"pull\"]\n"},
		{"registry.example.com", "[host.\"https://mirror.example.net\"]\n  capabilities = [\"Pull\", \"RESOLVE\", \"push\", \"referrers\"]\n"},
		{"registry.example.com", `[host."https://registry.example.com"]`},
		{"docker.io", "server = \"https://docker.io\"\n\n[host.\"https://registry-1.docker.io\"]\n  capabilities = [\"pull\", \"resolve\"]\n"},
		{"registry.example.com", "[host.\"https://mirror.example.net/proxy/registry\"]\n  override_path = true\n"},
		{"registry.example.com", `[host."https://mirror.example.net/proxy"]`},
		{"registry.example.com", "[host.\"https://mirror.example.net\"]\n  skip_verify = true\n"},
		{"registry.example.com", `skip_verify = true`},
		{"registry.example.com", "capabilities = [\"pull\"]\n\n[host.\"https://mirror.example.net\"]\n"},
		{"localhost:5000", "[host.\"https://mirror.example.net\"]\n"},
		// TestEndpointsHostsFileErrors
		{"registry.example.com", "[host.\"https://m.example.net\"]\ncapabilities = [\"pull\", \"fly\"]\n"},
		{"registry.example.com", "server = \"https://r.example.com\"\ncapabilities = [\"fetch\"]\n"},
		{"registry.example.com", "server = "},
		{"registry.example.com", "[host.\"https://m.example.net\"]\nca = \"absent.pem\"\n"},
		{"registry.example.com", "[host.\"https://m.example.net\"]\nca = 5\n"},
		{"registry.example.com", "[host.\"https://m.example.net\"]\nca = [\"a.pem\", 5]\n"},
		{"registry.example.com", "[host.\"https://m.example.net\"]\nclient = [[\"a\", \"b\", \"c\"]]\n"},
		{"registry.example.com", "[host.\"https://m.example.net\"]\nclient = \"absent.pem\"\n"},
		{"registry.example.com", "[host.\"https://m.example.net\".header]\nx-count = 5\n"},
		// TestEndpointsTLS, TestEndpointsHeader, and files in this directory.
		{"registry.example.com", "server = \"https://registry.example.com\"\nca = \"ca.pem\"\nclient = [[\"client.cert\", \"client.key\"]]\n\n[host.\"https://mirror.example.net\"]\nca = [\"ca.pem\"]\nclient = \"client.pem\"\n"},
		{"registry.example.com", "server = \"https://registry.example.com\"\n[header]\n  x-server = \"s\"\n\n[host.\"https://mirror.example.net\".header]\n  x-custom-token = \"abc\"\n  x-multi = [\"one\", \"two\"]\n"},
		{"[::1]:5000", "[host.\"https://[::1]:5001\"]\ndial_timeout = \"1s\"\n"},
		{"registry.example.com", "host.\"https://m.example.net\".capabilities = [\"pull\"]\n[host]\n\"https://n.example.net\" = {}\n"},
		{"registry.example.com", "[host.\"https://user@registry.example.com:443/v2/\"]\n[host.\"https://registry.example.com#@evil.example\"]\n"},
	} {
		f.Add(s.registry, []byte(s.file))
	}
	dir := f.TempDir()
	// A file that is no PEM, for ca and client settings that name it.
	for _, name := range []string{"ca.pem", "client.pem", "client.cert", "client.key", "a.pem"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("not a certificate"), 0o600); err != nil {
			f.Fatal(err)
		}
	}
	f.Fuzz(func(t *testing.T, registry string, file []byte) {
		if readsOtherFiles(file) {
			t.Skip("names files outside the host directory")
		}
		eps, err := parse(registry, dir, file)
		if err != nil {
			if eps != nil {
				t.Fatalf("parse failed (%v) and gave endpoints %+v", err, eps)
			}
			return
		}
		order, err := hostOrder(file)
		if err != nil {
			t.Fatalf("parse read a file hostOrder does not: %v", err)
		}
		if len(eps) != len(order)+1 {
			t.Fatalf("%d endpoints for %d host tables and the server", len(eps), len(order))
		}
		seen := map[string]bool{}
		for i, h := range order {
			if seen[h] {
				t.Fatalf("host %q listed twice", h)
			}
			seen[h] = true
			want := h
			if !strings.HasPrefix(want, "http://") && !strings.HasPrefix(want, "https://") {
				want = "https://" + want
			}
			u, _ := url.Parse(want)
			if eps[i].Host != u.Host || eps[i].Scheme != u.Scheme {
				t.Fatalf("endpoint %d is %s://%s, want the table %q", i, eps[i].Scheme, eps[i].Host, h)
			}
		}
		for i, ep := range eps {
			if ep.Scheme != "http" && ep.Scheme != "https" {
				t.Fatalf("endpoint %d has scheme %q", i, ep.Scheme)
			}
			if strings.ContainsAny(ep.Host, "/?#@\\ ") {
				t.Fatalf("endpoint %d host %q is more than a host and port", i, ep.Host)
			}
			own := ep.Host == registry || (registry == "docker.io" && ep.Host == "registry-1.docker.io")
			if ep.Mirror == own {
				t.Fatalf("endpoint %d, %s, for registry %q: mirror = %v", i, ep.Host, registry, ep.Mirror)
			}
			if ep.OverridePath != "" && !strings.HasPrefix(ep.OverridePath, "/") {
				t.Fatalf("endpoint %d has path %q", i, ep.OverridePath)
			}
		}
		again, err := parse(registry, dir, file)
		if err != nil || !reflect.DeepEqual(summary(again), summary(eps)) {
			t.Fatalf("parse is not deterministic: %q then %q (%v)", summary(eps), summary(again), err)
		}
	})
}

// readsOtherFiles reports whether a hosts.toml names a ca or client file by absolute path or
// outside the directory: anything but a plain relative name.
func readsOtherFiles(file []byte) bool {
	var doc map[string]any
	if toml.Unmarshal(file, &doc) != nil {
		return false // parse refuses it before reading anything
	}
	var bad func(key string, v any) bool
	bad = func(key string, v any) bool {
		switch v := v.(type) {
		case map[string]any:
			for k, e := range v {
				if bad(k, e) {
					return true
				}
			}
		case []any:
			for _, e := range v {
				if bad(key, e) {
					return true
				}
			}
		case string:
			return (strings.EqualFold(key, "ca") || strings.EqualFold(key, "client")) && (filepath.IsAbs(v) || strings.Contains(v, "..") || strings.ContainsRune(v, 0))
		}
		return false
	}
	return bad("", doc)
}
