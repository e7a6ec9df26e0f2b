package auth

import (
	"errors"
	"net"
	"net/url"
	"path"
	"strings"
)

// Docker Hub's names. Images are normalised to dockerHub; docker login writes its credentials
// under "https://index.docker.io/v1/", which kubelet files under dockerHubIndex.
const (
	dockerHub      = "docker.io"
	dockerHubIndex = "index.docker.io"
)

// pattern is a parsed credential key: kubelet's ParseSchemelessURL and SplitURL, done once per
// file load instead of once per lookup.
type pattern struct {
	// name is kubelet's index key (host[:port][/path]); Lookup orders matches by it.
	name  string
	hosts []string // host split on '.', each a path.Match glob
	port  string
	path  string // "" or "/seg/seg", no trailing slash
}

// parsePattern parses a credential key such as "https://index.docker.io/v1/",
// "registry.example.com:5000/team" or "*.example.com".
func parsePattern(key string) (pattern, error) {
	u, err := url.Parse("https://" + stripScheme(key))
	if err != nil {
		// url's errors quote the whole input; the caller names the key already.
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err
		}
		return pattern{}, err
	}
	if u.Hostname() == "" {
		return pattern{}, errors.New("no registry host")
	}
	// docker treats "/v1/" and "/v2/" after the host as the host itself, and so does kubelet.
	p := u.Path
	if strings.HasPrefix(p, "/v1/") || strings.HasPrefix(p, "/v2/") {
		p = p[3:]
	}
	p = strings.TrimRight(p, "/")
	host := strings.ToLower(u.Host)
	parts, port := splitHost(host)
	for _, part := range parts {
		if _, err := path.Match(part, ""); err != nil {
			return pattern{}, errors.New("bad host glob")
		}
	}
	return pattern{name: host + p, hosts: parts, port: port, path: p}, nil
}

// target is a parsed image name.
type target struct {
	host  string
	hosts []string
	port  string
	path  string // "/repo/path"
}

// parseImage splits a normalised "host[:port]/repo/path" image name. A tag or digest, if present,
// is dropped: credentials are chosen by repository.
func parseImage(image string) (target, error) {
	name, _, _ := strings.Cut(image, "@")
	host, repo, _ := strings.Cut(name, "/")
	if i := strings.LastIndexByte(repo, ':'); i >= 0 && !strings.Contains(repo[i:], "/") {
		repo = repo[:i]
	}
	if host == "" {
		return target{}, errors.New("no registry host")
	}
	host = strings.ToLower(host)
	parts, port := splitHost(host)
	t := target{host: host, hosts: parts, port: port}
	if repo != "" {
		t.path = "/" + repo
	}
	return t, nil
}

// matches is kubelet's URLsMatch, except that the key's path must be a prefix of the image's on a
// segment boundary: kubelet's plain string prefix lets "example.com/team" match "example.com/teamx".
func (p pattern) matches(t target) bool {
	if p.port != t.port || len(p.hosts) != len(t.hosts) {
		return false
	}
	if p.path != "" && t.path != p.path && !strings.HasPrefix(t.path, p.path+"/") {
		return false
	}
	for i, glob := range p.hosts {
		if ok, _ := path.Match(glob, t.hosts[i]); !ok {
			return false
		}
	}
	return true
}

// splitHost is kubelet's SplitURL: host parts split on '.', and the port.
func splitHost(hostport string) ([]string, string) {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		host, port = hostport, ""
	}
	return strings.Split(host, "."), port
}

func stripScheme(s string) string {
	if _, rest, ok := strings.Cut(s, "://"); ok {
		return rest
	}
	return s
}

// MatchesRegistry reports whether serverAddress, as a client may set it in a CRI AuthConfig,
// names registry, an image's registry host[:port]. The scheme and any path ("/v1/") are ignored;
// Docker Hub's aliases (index.docker.io, registry-1.docker.io) are docker.io. An empty
// serverAddress matches nothing: callers decide what an absent address means.
func MatchesRegistry(serverAddress, registry string) bool {
	a, r := registryHost(serverAddress), registryHost(registry)
	return a != "" && a == r
}

func registryHost(s string) string {
	host, _, _ := strings.Cut(stripScheme(strings.TrimSpace(s)), "/")
	host = strings.ToLower(host)
	switch host {
	case dockerHubIndex, "registry-1.docker.io":
		return dockerHub
	}
	return host
}
