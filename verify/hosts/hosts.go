// Package hosts reads containerd's registry host configuration (certs.d/<host>/hosts.toml), so
// that pullgate resolves tags from the same endpoints, with the same TLS settings, as the runtime
// that will pull them.
package hosts

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"
)

// Endpoint is one place to resolve an image of a registry from, in the order containerd tries them.
type Endpoint struct {
	// Scheme is "https" or "http".
	Scheme string
	// Host is host[:port] of the endpoint. For the registry's own server it is the registry
	// (or registry-1.docker.io for docker.io); for a mirror it is the mirror.
	Host string
	// Mirror is true for endpoints other than the registry itself: credentials given for the
	// registry are never sent to a mirror.
	Mirror bool
	// Resolve is true when the endpoint may be asked to resolve tags.
	Resolve bool
	// OverridePath is set when hosts.toml gives a non-standard API root.
	OverridePath string
	// TLS is the client TLS configuration: CAs, client certificates, skip_verify.
	TLS *tls.Config
	// Header holds extra headers hosts.toml asks to send.
	Header http.Header
}

// Config finds hosts.toml files under a certs.d directory. Parsed files are kept until they
// change, so that the same endpoint keeps the same TLS configuration and connection pool.
type Config struct {
	dir string

	mu    sync.Mutex
	cache map[string]cached
}

type cached struct {
	file string
	mod  time.Time
	size int64
	eps  []Endpoint
}

// New returns the configuration rooted at dir ("/etc/containerd/certs.d"). An empty dir means
// containerd's defaults for every registry.
func New(dir string) *Config { return &Config{dir: dir, cache: map[string]cached{}} }

// Endpoints returns where to resolve images of registry, mirrors first, as containerd would.
func (c *Config) Endpoints(registry string) ([]Endpoint, error) {
	var (
		file string
		info os.FileInfo
	)
	if c.dir != "" {
		for _, d := range hostDirs(c.dir, registry) {
			p := filepath.Join(d, "hosts.toml")
			fi, err := os.Stat(p)
			if err == nil {
				file, info = p, fi
				break
			}
			if !errors.Is(err, os.ErrNotExist) && !errors.Is(err, syscall.ENOTDIR) {
				return nil, fmt.Errorf("registry config for %s: %w", registry, err)
			}
		}
	}
	entry := cached{file: file}
	if info != nil {
		entry.mod, entry.size = info.ModTime(), info.Size()
	}
	c.mu.Lock()
	got, ok := c.cache[registry]
	c.mu.Unlock()
	if ok && got.file == entry.file && got.mod.Equal(entry.mod) && got.size == entry.size {
		return got.eps, nil
	}
	if file == "" {
		entry.eps = []Endpoint{defaultEndpoint(registry)}
	} else {
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("registry config for %s: %w", registry, err)
		}
		if entry.eps, err = parse(registry, filepath.Dir(file), b); err != nil {
			return nil, fmt.Errorf("registry config %s: %w", file, err)
		}
	}
	c.mu.Lock()
	if len(c.cache) >= maxCached {
		// Any registry name in a pod spec adds an entry. Those without hosts.toml cost nothing
		// to make again; configured ones keep their TLS settings, and so their connections.
		for k, e := range c.cache {
			if e.file == "" {
				delete(c.cache, k)
			}
		}
		if len(c.cache) >= maxCached {
			clear(c.cache)
		}
	}
	c.cache[registry] = entry
	c.mu.Unlock()
	return entry.eps, nil
}

// maxCached bounds the registries whose endpoints are kept.
const maxCached = 1024

// hostDirs lists the directories containerd looks in for a registry, in its order.
func hostDirs(root, registry string) []string {
	var dirs []string
	if i := strings.LastIndex(registry, ":"); i > 0 {
		dirs = append(dirs, filepath.Join(root, registry[:i]+"_"+registry[i+1:]+"_"))
	}
	return append(dirs, filepath.Join(root, registry), filepath.Join(root, "_default"))
}

// defaultEndpoint is containerd's default for a registry without hosts.toml.
func defaultEndpoint(registry string) Endpoint {
	ep := Endpoint{Scheme: "https", Host: registry, Resolve: true}
	switch {
	case registry == "docker.io":
		ep.Host = "registry-1.docker.io"
	case isLocalhost(registry):
		// containerd talks plain HTTP to localhost on a non-TLS port and skips verification.
		_, port, _ := net.SplitHostPort(registry)
		if port != "" && port != "443" {
			ep.Scheme = "http"
		}
		ep.TLS = &tls.Config{InsecureSkipVerify: true}
	}
	return ep
}

func isLocalhost(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	return ip != nil && ip.IsLoopback()
}

type hostFile struct {
	Capabilities []string       `toml:"capabilities"`
	CA           any            `toml:"ca"`
	Client       any            `toml:"client"`
	SkipVerify   *bool          `toml:"skip_verify"`
	Header       map[string]any `toml:"header"`
	OverridePath bool           `toml:"override_path"`
	DialTimeout  string         `toml:"dial_timeout"`
}

func parse(registry, dir string, b []byte) ([]Endpoint, error) {
	var f struct {
		hostFile
		Server string              `toml:"server"`
		Host   map[string]hostFile `toml:"host"`
	}
	if err := toml.Unmarshal(b, &f); err != nil {
		return nil, err
	}
	order, err := hostOrder(b)
	if err != nil {
		return nil, err
	}
	var eps []Endpoint
	for _, h := range order {
		ep, err := endpoint(h, dir, f.Host[h])
		if err != nil {
			return nil, fmt.Errorf("host %q: %w", h, err)
		}
		ep.Mirror = isMirror(registry, ep.Host)
		eps = append(eps, ep)
	}
	// Top-level settings (capabilities, TLS, header) apply to the server, the default one too.
	def := defaultEndpoint(registry)
	srv := f.Server
	if srv == "" {
		srv = def.Scheme + "://" + def.Host
	}
	server, err := endpoint(srv, dir, f.hostFile)
	if err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	if f.Server == "" && server.TLS == nil {
		server.TLS = def.TLS
	}
	server.Mirror = isMirror(registry, server.Host)
	return append(eps, server), nil
}

// isMirror reports whether an endpoint host is another host than the registry itself.
func isMirror(registry, host string) bool {
	return host != registry && !(registry == "docker.io" && host == "registry-1.docker.io")
}

// hostOrder returns the [host."..."] tables in file order: containerd tries them in that order,
// which a map cannot keep.
func hostOrder(b []byte) ([]string, error) {
	var p unstable.Parser
	p.Reset(b)
	var order []string
	seen := map[string]bool{}
	for p.NextExpression() {
		e := p.Expression()
		if e.Kind != unstable.Table {
			continue
		}
		var parts []string
		for it := e.Key(); it.Next(); {
			parts = append(parts, string(it.Node().Data))
		}
		if len(parts) >= 2 && parts[0] == "host" && !seen[parts[1]] {
			seen[parts[1]] = true
			order = append(order, parts[1])
		}
	}
	return order, p.Error()
}

func endpoint(server, dir string, h hostFile) (Endpoint, error) {
	if !strings.HasPrefix(server, "http://") && !strings.HasPrefix(server, "https://") {
		server = "https://" + server
	}
	u, err := url.Parse(server)
	if err != nil {
		return Endpoint{}, err
	}
	ep := Endpoint{Scheme: u.Scheme, Host: u.Host}
	switch p := path.Clean("/" + u.Path); {
	case h.OverridePath:
		ep.OverridePath = p
	case p != "/" && p != "/v2":
		// containerd takes a path prefix as the API root's parent.
		ep.OverridePath = strings.TrimSuffix(p, "/v2") + "/v2"
	}
	if len(h.Capabilities) == 0 {
		ep.Resolve = true
	}
	for _, c := range h.Capabilities {
		switch strings.ToLower(c) {
		case "resolve":
			ep.Resolve = true
		case "pull", "push", "referrers":
		default:
			return Endpoint{}, fmt.Errorf("unknown capability %q", c)
		}
	}
	if ep.TLS, err = tlsConfig(dir, h); err != nil {
		return Endpoint{}, err
	}
	if ep.Header, err = headers(h.Header); err != nil {
		return Endpoint{}, err
	}
	return ep, nil
}

func tlsConfig(dir string, h hostFile) (*tls.Config, error) {
	if h.CA == nil && h.Client == nil && h.SkipVerify == nil {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if h.SkipVerify != nil {
		cfg.InsecureSkipVerify = *h.SkipVerify
	}
	cas, err := stringOrList(h.CA)
	if err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	if len(cas) > 0 {
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		for _, ca := range cas {
			pem, err := os.ReadFile(abs(dir, ca))
			if err != nil {
				return nil, fmt.Errorf("ca: %w", err)
			}
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("ca: no PEM certificate in %s", abs(dir, ca))
			}
		}
		cfg.RootCAs = pool
	}
	pairs, err := clientPairs(h.Client)
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	for _, p := range pairs {
		certFile, keyFile := abs(dir, p[0]), abs(dir, p[1])
		if p[1] == "" {
			keyFile = certFile
		}
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("client: %w", err)
		}
		cfg.Certificates = append(cfg.Certificates, cert)
	}
	return cfg, nil
}

func abs(dir, p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(dir, p)
}

// stringOrList accepts a string or a list of strings, as hosts.toml does.
func stringOrList(v any) ([]string, error) {
	switch v := v.(type) {
	case nil:
		return nil, nil
	case string:
		return []string{v}, nil
	case []any:
		out := make([]string, len(v))
		for i, e := range v {
			s, ok := e.(string)
			if !ok {
				return nil, fmt.Errorf("%v is not a string", e)
			}
			out[i] = s
		}
		return out, nil
	}
	return nil, fmt.Errorf("%v is neither a string nor a list of strings", v)
}

// clientPairs accepts "file", ["file", ...] or [["cert", "key"], ...].
func clientPairs(v any) ([][2]string, error) {
	if l, ok := v.([]any); ok {
		var pairs [][2]string
		for _, e := range l {
			if s, ok := e.(string); ok {
				pairs = append(pairs, [2]string{s, ""})
				continue
			}
			p, err := stringOrList(e)
			if err != nil || len(p) != 2 {
				return nil, fmt.Errorf("invalid pair %v", e)
			}
			pairs = append(pairs, [2]string{p[0], p[1]})
		}
		return pairs, nil
	}
	s, err := stringOrList(v)
	if err != nil {
		return nil, err
	}
	var pairs [][2]string
	for _, f := range s {
		pairs = append(pairs, [2]string{f, ""})
	}
	return pairs, nil
}

func headers(m map[string]any) (http.Header, error) {
	if len(m) == 0 {
		return nil, nil
	}
	h := http.Header{}
	for k, v := range m {
		vals, err := stringOrList(v)
		if err != nil {
			return nil, fmt.Errorf("header %q: %w", k, err)
		}
		h[http.CanonicalHeaderKey(k)] = vals
	}
	return h, nil
}
