package auth

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
)

// fuzzSecret marks the secret values of the seed files; errors must never show it.
const fuzzSecret = "s3cr3t-VALUE-pw"

// FuzzParseFile checks the reading of credential files (docker config.json, containers
// auth.json, legacy .dockercfg, kubernetes.io/dockerconfigjson secrets):
//   - parseFile never panics;
//   - its errors never show a value from the file, only keys and field names: the seeds hold
//     fuzzSecret in passwords, auth and token values, and no error may contain it unless a key
//     does;
//   - every entry it returns is a credential (never anonymous) under a key with a host;
//   - the entries are in document order, and reading is deterministic.
func FuzzParseFile(f *testing.F) {
	for _, s := range []string{
		// TestLookupFileFormats
		`{"auths": {"https://registry.example.com": {"auth": "` + b64("alice:"+fuzzSecret) + `"}}, "credsStore": "desktop"}`,
		`{"auths": {"registry.example.com": {"username": "alice", "password": "` + fuzzSecret + `"}}}`,
		`{"auths": {"registry.example.com": {"auth": "` + b64("alice:pw") + `", "username": "bob", "password": "` + fuzzSecret + `"}}}`,
		`{"auths": {"registry.example.com": {"auth": "` + b64("<token>:") + `", "identitytoken": "` + fuzzSecret + `"}}}`,
		`{"auths": {"registry.example.com": {"registrytoken": "` + fuzzSecret + `"}}}`,
		`{"auths": {"registry.example.com/team": {"auth": "` + b64("alice:"+fuzzSecret) + `"}}}`,
		`{"https://registry.example.com": {"auth": "` + b64("alice:"+fuzzSecret) + `", "email": "alice@example.com"}}`,
		`{"auths":{"registry.example.com":{"username":"alice","password":"` + fuzzSecret + `","email":"a@example.com","auth":"` + b64("alice:"+fuzzSecret) + `"}}}`,
		`{"auths": {"registry.example.com": {"auth": "` + strings.TrimRight(b64("alice:"+fuzzSecret+"1"), "=") + `"}}}`,
		`{"auths": {"registry.example.com": {"auth": "` + b64("alice:p:w:") + `"}}}`,
		`{"auths": {"registry.example.com": {}}, "credsStore": "desktop"}`,
		`{"credHelpers": {"registry.example.com": "ecr-login"}}`,
		`{}`,
		// TestLookupFileErrors
		`{"auths": {"registry.example.com": {"auth": "alice:` + fuzzSecret + `"}}}`,
		`{"auths": {"registry.example.com": {"auth": "` + b64("alice"+fuzzSecret) + `"}}}`,
		`{"auths": {"bad.example.com": {"auth": "` + b64(fuzzSecret) + `"}, "registry.example.com": {"auth": "` + b64("alice:pw") + `"}}}`,
		`{"auths": {"registry.example.com": {"password": "` + fuzzSecret + `" "username": "alice"}}}`,
		`{"auths": {"registry.example.com": {"password": "` + fuzzSecret,
		`["` + fuzzSecret + `"]`,
		`{"auths": "` + fuzzSecret + `"}`,
		`{"registry.example.com": "` + fuzzSecret + `"}`,
		`{"auths": {"registry.example.com": {"username": "alice", "password": 12345}}}`,
		`{"auths": {"[registry.example.com": {"username": "alice", "password": "` + fuzzSecret + `"}}}`,
		`{"auths": {"https:///team": {"username": "alice", "password": "` + fuzzSecret + `"}}}`,
		`{"auths": {}} {"` + fuzzSecret + `": 1}`,
		`{"auths": {"registry.example.com": {"username": "alice", "password": ["` + fuzzSecret + `"]}}}`,
		`{"auths": {"registry.example.com": {"auth": 7, "password": "` + fuzzSecret + `"}}}`,
		`{"auths": {"registry.example.com": {"auth": "` + fuzzSecret + `\u0000"}}}`,
		``, ` `,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		entries, errs := parseFile(data)
		if keysHold(data, fuzzSecret) {
			return
		}
		for _, err := range errs {
			if err == nil {
				t.Fatal("nil error in the list")
			}
			if strings.Contains(err.Error(), fuzzSecret) {
				t.Fatalf("parseFile(%q): error %q shows a value", data, err)
			}
		}
		for _, e := range entries {
			if e.cred.IsZero() {
				t.Fatalf("parseFile(%q): anonymous entry under %q", data, e.pat.name)
			}
			if len(e.pat.hosts) == 0 || e.pat.hosts[0] == "" && len(e.pat.hosts) == 1 {
				t.Fatalf("parseFile(%q): entry %q without a host", data, e.pat.name)
			}
		}
		again, againErrs := parseFile(data)
		if len(again) != len(entries) || len(againErrs) != len(errs) {
			t.Fatalf("parseFile is not deterministic: %d entries, %d errors, then %d, %d", len(entries), len(errs), len(again), len(againErrs))
		}
		for i := range again {
			if again[i].pat.name != entries[i].pat.name || again[i].cred != entries[i].cred {
				t.Fatalf("parseFile is not deterministic: entry %d", i)
			}
		}
	})
}

// keysHold reports whether an object key anywhere in data (as far as it is JSON) contains s.
func keysHold(data []byte, s string) bool {
	dec := json.NewDecoder(bytes.NewReader(data))
	// The open containers: for an object, whether its next string is a key.
	type frame struct{ object, wantKey bool }
	var stack []frame
	valueDone := func() {
		if n := len(stack); n > 0 && stack[n-1].object {
			stack[n-1].wantKey = true
		}
	}
	for {
		tok, err := dec.Token()
		if err != nil {
			// Past a syntax error nothing is known: count the rest as keys.
			return !errors.Is(err, io.EOF) && bytes.Contains(data[dec.InputOffset():], []byte(s))
		}
		switch tok {
		case json.Delim('{'), json.Delim('['):
			if n := len(stack); n > 0 && stack[n-1].object {
				stack[n-1].wantKey = false
			}
			stack = append(stack, frame{object: tok == json.Delim('{'), wantKey: true})
			continue
		case json.Delim('}'), json.Delim(']'):
			stack = stack[:len(stack)-1]
			valueDone()
			continue
		}
		if n := len(stack); n > 0 && stack[n-1].object && stack[n-1].wantKey {
			if k, _ := tok.(string); strings.Contains(k, s) {
				return true
			}
			stack[n-1].wantKey = false
			continue
		}
		valueDone()
	}
}

// FuzzLookup checks which credentials a Keyring hands out for an image, given a file with one
// key, the way kubelet matches them (DESIGN.md, pipeline step 2):
//   - Lookup never panics;
//   - a credential is returned only for the key's own host: same port, same number of labels,
//     each label equal or matched by the key's glob, and the key's path a prefix of the
//     repository on a segment boundary; look-alike hosts (registry.example.com.evil.io for
//     registry.example.com, evilregistry.example.com, another port) never get it;
//   - Docker Hub's index.docker.io key applies to docker.io images and no other;
//   - the host a key names gets the credential, for any repository under its path.
func FuzzLookup(f *testing.F) {
	for _, s := range []struct{ key, image string }{
		// TestLookupMatching
		{"registry.example.com", "registry.example.com/app"},
		{"https://registry.example.com", "registry.example.com/app"},
		{"http://registry.example.com/", "registry.example.com/app"},
		{"https://registry.example.com/v2/", "registry.example.com/app"},
		{"Registry.Example.COM", "registry.example.com/app"},
		{"registry.example.com/team/app", "registry.example.com/team/app:v1@sha256:" + strings.Repeat("a", 64)},
		{"registry.example.com/team", "registry.example.com/team/app"},
		{"registry.example.com/team/", "registry.example.com/team/app"},
		{"registry.example.com/team", "registry.example.com/teamx/app"},
		{"registry.example.com/team/app/sub", "registry.example.com/team/app"},
		{"registry.example.com.evil.io", "registry.example.com/app"},
		{"registry.example.com", "registry.example.com.evil.io/app"},
		{"registry.example.com", "evilregistry.example.com/app"},
		{"example.com", "registry.example.com/app"},
		{"evil.com/registry.example.com", "registry.example.com/app"},
		{"registry.example.com", "evil.com/registry.example.com/app"},
		{"registry.example.com@evil.com", "registry.example.com/app"},
		{"*.example.com", "registry.example.com/app"},
		{"*.example.com", "a.b.example.com/app"},
		{"registry-*.example.com", "registry-eu.example.com/app"},
		{"*.com", "registry.example.com/app"},
		{"registry.example.com:5000", "registry.example.com/app"},
		{"registry.example.com", "registry.example.com:5000/app"},
		{"*.example.com:5000", "registry.example.com:5000/app"},
		{"[::1]:5000", "[::1]:5000/app"},
		{"https://index.docker.io/v1/", "docker.io/library/nginx"},
		{"index.docker.io", "docker.io/library/nginx"},
		{"docker.io/myorg", "docker.io/library/nginx"},
		{"https://index.docker.io/v1/", "localhost/app"},
		{"https://index.docker.io/v1/", "docker.io.evil.io/library/nginx"},
		{"registry.example.com?x=1", "registry.example.com/app"},
		{"registry.example.com#frag", "registry.example.com/app"},
		{"registry.example.com:", "registry.example.com/app"},
		{"registry.example.com.", "registry.example.com/app"},
		{"[a-z]egistry.example.com", "registry.example.com/app"},
	} {
		f.Add(s.key, s.image)
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, key, image string) {
		b, err := json.Marshal(map[string]any{"auths": map[string]any{key: map[string]string{"username": "alice", "password": "pw"}}})
		if err != nil {
			t.Fatal(err)
		}
		// The key as the file holds it: JSON has no invalid UTF-8.
		var written struct{ Auths map[string]json.RawMessage }
		if err := json.Unmarshal(b, &written); err != nil || len(written.Auths) != 1 {
			t.Fatalf("%s: %v", b, err)
		}
		for k := range written.Auths {
			key = k
		}
		file := filepath.Join(dir, "config.json")
		if err := os.WriteFile(file, b, 0o600); err != nil {
			t.Fatal(err)
		}
		creds, err := NewKeyring([]string{file}).Lookup(image)
		pat, perr := parsePattern(key)
		if perr != nil {
			if len(creds) != 0 {
				t.Fatalf("key %q does not parse (%v), but gave %s for %q", key, perr, show(creds), image)
			}
			return
		}
		tgt, terr := parseImage(image)
		if terr != nil {
			if err == nil || len(creds) != 0 {
				t.Fatalf("image %q does not parse (%v), but Lookup gave %s, %v", image, terr, show(creds), err)
			}
			return
		}
		if len(creds) > 1 {
			t.Fatalf("one key gave %d credentials", len(creds))
		}
		keyHost := keyHostOf(t, key)
		if len(creds) == 1 {
			switch {
			case pat.name == dockerHubIndex && (tgt.host == dockerHub || tgt.host == dockerHubIndex):
				// Docker Hub's fallback, or its own key.
			case pat.name == dockerHubIndex:
				t.Fatalf("Docker Hub's key gave a credential for %q", image)
			case !sameHost(t, keyHost, tgt.host):
				t.Fatalf("key %q (host %q) gave a credential for %q (host %q)", key, keyHost, image, tgt.host)
			case pat.path != "" && tgt.path != pat.path && !strings.HasPrefix(tgt.path, pat.path+"/"):
				t.Fatalf("key %q (path %q) gave a credential for %q (path %q)", key, pat.path, image, tgt.path)
			}
		}

		// Look-alikes of the key's host never get its credential; the host itself does.
		if strings.ContainsAny(keyHost, "*?[\\") || pat.name == dockerHubIndex || keyHost == dockerHub {
			return
		}
		host, port := keyHost, ""
		if h, p, err := net.SplitHostPort(keyHost); err == nil {
			host, port = h, p
		}
		if strings.Contains(host, ":") {
			host = "[" + host + "]"
		}
		withPort := func(h string) string {
			if port != "" {
				return h + ":" + port
			}
			return h
		}
		k := NewKeyring([]string{file})
		for _, lookAlike := range []string{withPort(host + ".evil.io"), withPort("evil" + host), withPort("evil." + host), host + ":1" + port} {
			if creds, _ := k.Lookup(lookAlike + "/app"); len(creds) != 0 {
				t.Fatalf("key %q gave a credential for the look-alike %q", key, lookAlike)
			}
		}
		if strings.ContainsAny(pat.path, "@:") {
			return // not a repository path parseImage would give back
		}
		own := keyHost + pat.path + "/app"
		if creds, err := k.Lookup(own); err != nil || len(creds) != 1 {
			t.Fatalf("key %q gave %s, %v for its own host: %q", key, show(creds), err, own)
		}
	})
}

// keyHostOf is the registry a credential key names, read as kubelet's ParseSchemelessURL does
// and lower-cased: the host[:port] of the URL after the scheme.
func keyHostOf(t *testing.T, key string) string {
	t.Helper()
	rest := key
	if _, r, ok := strings.Cut(key, "://"); ok {
		rest = r
	}
	u, err := url.Parse("https://" + rest)
	if err != nil {
		t.Fatalf("key %q parsed as a pattern but is no URL: %v", key, err)
	}
	return strings.ToLower(u.Host)
}

// sameHost reports whether the key's host (labels possibly globs) names the image's host.
func sameHost(t *testing.T, keyHost, imageHost string) bool {
	t.Helper()
	kh, kp, kerr := net.SplitHostPort(keyHost)
	if kerr != nil {
		kh, kp = keyHost, ""
	}
	ih, ip, ierr := net.SplitHostPort(imageHost)
	if ierr != nil {
		ih, ip = imageHost, ""
	}
	if kp != ip {
		return false
	}
	kl, il := strings.Split(kh, "."), strings.Split(ih, ".")
	if len(kl) != len(il) {
		return false
	}
	for i := range kl {
		if kl[i] == il[i] {
			continue
		}
		if ok, err := path.Match(kl[i], il[i]); err != nil || !ok || !strings.ContainsAny(kl[i], "*?[\\") {
			return false
		}
	}
	return true
}

// FuzzMatchesRegistry checks the match of a CRI AuthConfig's server_address to the image's
// registry (DESIGN.md: kubelet's credential is for the image's registry and nothing else):
//   - MatchesRegistry never panics and is symmetric;
//   - it holds only when both name the same host[:port], case aside, Docker Hub's aliases aside;
//   - look-alikes (registry.example.com.evil.io, evil.registry.example.com, another port, the
//     host in userinfo) never match; the registry always matches itself, with a scheme and a path.
func FuzzMatchesRegistry(f *testing.F) {
	for _, s := range [][2]string{
		{"registry.example.com", "registry.example.com"}, {"https://registry.example.com", "registry.example.com"},
		{"http://registry.example.com/v2/", "registry.example.com"}, {"Registry.Example.com", "registry.example.com"},
		{"registry.example.com:5000", "registry.example.com:5000"}, {"https://[::1]:5000/v2/", "[::1]:5000"},
		{"https://index.docker.io/v1/", "docker.io"}, {"index.docker.io", "docker.io"}, {"registry-1.docker.io", "docker.io"},
		{"docker.io", "index.docker.io"}, {"", "registry.example.com"}, {"", ""}, {"other.example.com", "registry.example.com"},
		{"registry.example.com.evil.io", "registry.example.com"}, {"registry.example.com", "registry.example.com.evil.io"},
		{"evilregistry.example.com", "registry.example.com"}, {"https://evil.com/registry.example.com", "registry.example.com"},
		{"https://registry.example.com@evil.com", "registry.example.com"}, {"registry.example.com:5000", "registry.example.com"},
		{"docker.io.evil.io", "docker.io"}, {"*.example.com", "registry.example.com"}, {" registry.example.com ", "registry.example.com"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, addr, registry string) {
		m := MatchesRegistry(addr, registry)
		if m != MatchesRegistry(registry, addr) {
			t.Fatalf("MatchesRegistry(%q, %q) = %v, but not the other way round", addr, registry, m)
		}
		a, r := registryHost(addr), registryHost(registry)
		if m && (a == "" || a != r) {
			t.Fatalf("MatchesRegistry(%q, %q) with hosts %q and %q", addr, registry, a, r)
		}
		if r == "" {
			return
		}
		for _, lookAlike := range []string{r + ".evil.io", "evil." + r, "evil" + r, r + ":1", "https://" + r + "@evil.io/", "https://evil.io/" + r} {
			if MatchesRegistry(lookAlike, registry) && !(r == "evil.io" && lookAlike == "https://evil.io/"+r) {
				t.Fatalf("the look-alike %q matches %q", lookAlike, registry)
			}
		}
		if r != strings.TrimSpace(r) {
			return
		}
		own := []string{r, "https://" + r, "http://" + r + "/v2/", "https://" + r + "/v1/"}
		if up := strings.ToUpper(r); strings.ToLower(up) == r {
			own = append(own, up)
		}
		for _, o := range own {
			if !MatchesRegistry(o, registry) {
				t.Fatalf("%q does not match %q", o, registry)
			}
		}
	})
}
