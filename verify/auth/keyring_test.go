package auth

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// credFileAt writes content to a new file named name in a fresh directory and returns its path.
func credFileAt(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	writeFile(t, p, content)
	return p
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// show prints credentials with their secrets, which in these tests are made up, so that a
// failure says what was wrong.
func show(creds []Credential) string {
	var s []string
	for _, c := range creds {
		s = append(s, fmt.Sprintf("{%q %q %q %q}", c.Username, c.Password, c.IdentityToken, c.RegistryToken))
	}
	return "[" + strings.Join(s, " ") + "]"
}

func lookup(t *testing.T, k *Keyring, image string) []Credential {
	t.Helper()
	creds, err := k.Lookup(image)
	if err != nil {
		t.Fatalf("Lookup(%q): %v", image, err)
	}
	return creds
}

func TestLookupFileFormats(t *testing.T) {
	t.Parallel()
	const image = "registry.example.com/team/app"
	alice := Credential{Username: "alice", Password: "pw"}
	tests := []struct {
		name    string
		file    string
		content string
		want    []Credential
	}{
		{
			name:    "docker config.json with auth",
			file:    "config.json",
			content: `{"auths": {"https://registry.example.com": {"auth": "` + b64("alice:pw") + `"}}, "credsStore": "desktop"}`,
			want:    []Credential{alice},
		},
		{
			name:    "config.json with username and password fields",
			file:    "config.json",
			content: `{"auths": {"registry.example.com": {"username": "alice", "password": "pw"}}}`,
			want:    []Credential{alice},
		},
		{
			name:    "auth wins over username and password",
			file:    "config.json",
			content: `{"auths": {"registry.example.com": {"auth": "` + b64("alice:pw") + `", "username": "bob", "password": "other"}}}`,
			want:    []Credential{alice},
		},
		{
			name:    "identity token",
			file:    "config.json",
			content: `{"auths": {"registry.example.com": {"auth": "` + b64("<token>:") + `", "identitytoken": "refresh"}}}`,
			want:    []Credential{{Username: "<token>", IdentityToken: "refresh"}},
		},
		{
			name:    "registry token",
			file:    "config.json",
			content: `{"auths": {"registry.example.com": {"registrytoken": "bearer"}}}`,
			want:    []Credential{{RegistryToken: "bearer"}},
		},
		{
			name:    "containers auth.json",
			file:    "auth.json",
			content: `{"auths": {"registry.example.com/team": {"auth": "` + b64("alice:pw") + `"}}}`,
			want:    []Credential{alice},
		},
		{
			name:    "legacy .dockercfg",
			file:    ".dockercfg",
			content: `{"https://registry.example.com": {"auth": "` + b64("alice:pw") + `", "email": "alice@example.com"}}`,
			want:    []Credential{alice},
		},
		{
			name:    "kubernetes.io/dockerconfigjson secret data",
			file:    ".dockerconfigjson",
			content: `{"auths":{"registry.example.com":{"username":"alice","password":"pw","email":"a@example.com","auth":"` + b64("alice:pw") + `"}}}`,
			want:    []Credential{alice},
		},
		{
			name:    "unpadded base64",
			file:    "config.json",
			content: `{"auths": {"registry.example.com": {"auth": "` + strings.TrimRight(b64("alice:pw1"), "=") + `"}}}`,
			want:    []Credential{{Username: "alice", Password: "pw1"}},
		},
		{
			name:    "password with colons splits on the first",
			file:    "config.json",
			content: `{"auths": {"registry.example.com": {"auth": "` + b64("alice:p:w:") + `"}}}`,
			want:    []Credential{{Username: "alice", Password: "p:w:"}},
		},
		{
			name:    "empty entries left by a credential store are skipped",
			file:    "config.json",
			content: `{"auths": {"registry.example.com": {}}, "credsStore": "desktop"}`,
		},
		{
			name:    "config.json with only credential helpers",
			file:    "config.json",
			content: `{"credHelpers": {"registry.example.com": "ecr-login"}}`,
		},
		{
			name:    "empty object",
			file:    "config.json",
			content: `{}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			k := NewKeyring([]string{credFileAt(t, tt.file, tt.content)})
			if got := lookup(t, k, image); !slices.Equal(got, tt.want) {
				t.Errorf("Lookup = %s, want %s", show(got), show(tt.want))
			}
		})
	}
}

func TestLookupFileErrors(t *testing.T) {
	t.Parallel()
	const (
		image    = "registry.example.com/app"
		password = "hunter2-do-not-print"
	)
	tests := []struct {
		name    string
		content string
		wantErr []string     // substrings, besides the file's path
		want    []Credential // what the good part of the file still gives
	}{
		{
			name:    "auth not base64",
			content: `{"auths": {"registry.example.com": {"auth": "alice:` + password + `"}}}`,
			wantErr: []string{`key "registry.example.com"`, `"auth"`, "base64"},
		},
		{
			name:    "auth without a colon",
			content: `{"auths": {"registry.example.com": {"auth": "` + b64("alice"+password) + `"}}}`,
			wantErr: []string{`key "registry.example.com"`, "username:password"},
		},
		{
			name: "bad entry does not spoil the good ones",
			content: `{"auths": {
				"bad.example.com": {"auth": "` + b64(password) + `"},
				"registry.example.com": {"auth": "` + b64("alice:pw") + `"}}}`,
			wantErr: []string{`key "bad.example.com"`},
			want:    []Credential{{Username: "alice", Password: "pw"}},
		},
		{
			name:    "malformed JSON",
			content: `{"auths": {"registry.example.com": {"password": "` + password + `" "username": "alice"}}}`,
			wantErr: []string{"invalid JSON"},
		},
		{
			name:    "truncated JSON",
			content: `{"auths": {"registry.example.com": {"password": "` + password,
			wantErr: []string{"invalid JSON"},
		},
		{
			name:    "empty file",
			content: "\n",
			wantErr: []string{"empty file"},
		},
		{
			name:    "not an object",
			content: `["` + password + `"]`,
			wantErr: []string{"not a JSON object"},
		},
		{
			name:    "auths not an object",
			content: `{"auths": "` + password + `"}`,
			wantErr: []string{`"auths"`, "not a JSON object"},
		},
		{
			name:    "legacy entry not an object",
			content: `{"registry.example.com": "` + password + `"}`,
			wantErr: []string{`key "registry.example.com"`, "want a JSON object"},
		},
		{
			name:    "field of the wrong type",
			content: `{"auths": {"registry.example.com": {"username": "alice", "password": 12345}}}`,
			wantErr: []string{`key "registry.example.com"`, `"password"`},
		},
		{
			name:    "key with a bad glob",
			content: `{"auths": {"[registry.example.com": {"username": "alice", "password": "` + password + `"}}}`,
			wantErr: []string{`key "[registry.example.com"`},
		},
		{
			name:    "key without a host",
			content: `{"auths": {"https:///team": {"username": "alice", "password": "` + password + `"}}}`,
			wantErr: []string{`key "https:///team"`, "no registry host"},
		},
		{
			name:    "data after the object",
			content: `{"auths": {}} {"` + password + `": 1}`,
			wantErr: []string{"data after"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := credFileAt(t, "config.json", tt.content)
			got, err := NewKeyring([]string{path}).Lookup(image)
			if err == nil {
				t.Fatalf("Lookup: no error, want one")
			}
			msg := err.Error()
			for _, want := range append([]string{path}, tt.wantErr...) {
				if !strings.Contains(msg, want) {
					t.Errorf("error %q does not contain %q", msg, want)
				}
			}
			for _, secret := range []string{password, b64(password), b64("alice" + password)} {
				if strings.Contains(msg, secret) {
					t.Errorf("error %q reveals a secret", msg)
				}
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("Lookup = %s, want %s", show(got), show(tt.want))
			}
		})
	}
}

func TestLookupMissingFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	missing := filepath.Join(dir, "absent.json")
	present := filepath.Join(dir, "config.json")
	writeFile(t, present, `{"auths": {"registry.example.com": {"auth": "`+b64("alice:pw")+`"}}}`)

	k := NewKeyring([]string{missing, present})
	want := []Credential{{Username: "alice", Password: "pw"}}
	if got := lookup(t, k, "registry.example.com/app"); !slices.Equal(got, want) {
		t.Fatalf("Lookup = %s, want %s", show(got), show(want))
	}

	// A file that appears later is read, as kubelet reads its files on each pull.
	writeFile(t, missing, `{"auths": {"registry.example.com": {"auth": "`+b64("bob:pw")+`"}}}`)
	want = []Credential{{Username: "bob", Password: "pw"}, {Username: "alice", Password: "pw"}}
	if got := lookup(t, k, "registry.example.com/app"); !slices.Equal(got, want) {
		t.Errorf("after creating the file: Lookup = %s, want %s", show(got), show(want))
	}
}

func TestLookupUnreadableFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir() // a directory cannot be read as a file, even by root
	good := credFileAt(t, "config.json", `{"auths": {"registry.example.com": {"auth": "`+b64("alice:pw")+`"}}}`)
	got, err := NewKeyring([]string{dir, good}).Lookup("registry.example.com/app")
	if err == nil || !strings.Contains(err.Error(), dir) {
		t.Errorf("Lookup error = %v, want one naming %s", err, dir)
	}
	want := []Credential{{Username: "alice", Password: "pw"}}
	if !slices.Equal(got, want) {
		t.Errorf("Lookup = %s, want the readable file's %s", show(got), show(want))
	}
}

// keyringOf returns a Keyring over one config.json that has, for each key, a credential whose
// user name is the key itself.
func keyringOf(t *testing.T, keys ...string) *Keyring {
	t.Helper()
	auths := map[string]map[string]string{}
	for _, k := range keys {
		auths[k] = map[string]string{"username": k, "password": "pw"}
	}
	b, err := json.Marshal(map[string]any{"auths": auths})
	if err != nil {
		t.Fatal(err)
	}
	return NewKeyring([]string{credFileAt(t, "config.json", string(b))})
}

func usernames(creds []Credential) []string {
	var names []string
	for _, c := range creds {
		names = append(names, c.Username)
	}
	return names
}

func TestLookupMatching(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		keys  []string
		image string
		want  []string // keys of the credentials returned, in order
	}{
		{"exact host", []string{"registry.example.com"}, "registry.example.com/app", []string{"registry.example.com"}},
		{"scheme ignored", []string{"https://registry.example.com"}, "registry.example.com/app", []string{"https://registry.example.com"}},
		{"http scheme ignored", []string{"http://registry.example.com/"}, "registry.example.com/app", []string{"http://registry.example.com/"}},
		{"v2 path is the host", []string{"https://registry.example.com/v2/"}, "registry.example.com/app", []string{"https://registry.example.com/v2/"}},
		{"host case ignored", []string{"Registry.Example.COM"}, "registry.example.com/app", []string{"Registry.Example.COM"}},
		{"tag and digest ignored", []string{"registry.example.com/team/app"}, "registry.example.com/team/app:v1@sha256:" + strings.Repeat("a", 64), []string{"registry.example.com/team/app"}},

		{"path prefix", []string{"registry.example.com/team"}, "registry.example.com/team/app", []string{"registry.example.com/team"}},
		{"path prefix with trailing slash", []string{"registry.example.com/team/"}, "registry.example.com/team/app", []string{"registry.example.com/team/"}},
		{"path equal to repository", []string{"registry.example.com/team/app"}, "registry.example.com/team/app", []string{"registry.example.com/team/app"}},
		{"path prefix on segment boundary only", []string{"registry.example.com/team"}, "registry.example.com/teamx/app", nil},
		{"longer path than repository", []string{"registry.example.com/team/app/sub"}, "registry.example.com/team/app", nil},
		{"other path", []string{"registry.example.com/other"}, "registry.example.com/team/app", nil},

		{"look-alike suffix host", []string{"registry.example.com.evil.io"}, "registry.example.com/app", nil},
		{"look-alike shorter host", []string{"registry.example.com"}, "registry.example.com.evil.io/app", nil},
		{"look-alike prefix host", []string{"registry.example.com"}, "evilregistry.example.com/app", nil},
		{"look-alike subdomain", []string{"example.com"}, "registry.example.com/app", nil},
		{"host in a path", []string{"evil.com/registry.example.com"}, "registry.example.com/app", nil},
		{"image host in a path", []string{"registry.example.com"}, "evil.com/registry.example.com/app", nil},
		{"userinfo is not the host", []string{"registry.example.com@evil.com"}, "registry.example.com/app", nil},

		{"glob one segment", []string{"*.example.com"}, "registry.example.com/app", []string{"*.example.com"}},
		{"glob needs its segment", []string{"*.example.com"}, "example.com/app", nil},
		{"glob matches one segment only", []string{"*.example.com"}, "a.b.example.com/app", nil},
		{"two globs two segments", []string{"*.*.example.com"}, "a.b.example.com/app", []string{"*.*.example.com"}},
		{"glob within a segment", []string{"registry-*.example.com"}, "registry-eu.example.com/app", []string{"registry-*.example.com"}},
		{"glob not across dots", []string{"*.com"}, "registry.example.com/app", nil},
		{"glob with path", []string{"*.example.com/team"}, "registry.example.com/other/app", nil},

		{"same port", []string{"registry.example.com:5000"}, "registry.example.com:5000/app", []string{"registry.example.com:5000"}},
		{"key port, image none", []string{"registry.example.com:5000"}, "registry.example.com/app", nil},
		{"key no port, image port", []string{"registry.example.com"}, "registry.example.com:5000/app", nil},
		{"other port", []string{"registry.example.com:5001"}, "registry.example.com:5000/app", nil},
		{"glob with port", []string{"*.example.com:5000"}, "registry.example.com:5000/app", []string{"*.example.com:5000"}},
		{"localhost port", []string{"localhost:5000"}, "localhost:5000/app", []string{"localhost:5000"}},
		{"IPv6 with port", []string{"[::1]:5000"}, "[::1]:5000/app", []string{"[::1]:5000"}},

		{"docker login key", []string{"https://index.docker.io/v1/"}, "docker.io/library/nginx", []string{"https://index.docker.io/v1/"}},
		{"index.docker.io key", []string{"index.docker.io"}, "docker.io/library/nginx", []string{"index.docker.io"}},
		{"docker.io key", []string{"docker.io"}, "docker.io/library/nginx", []string{"docker.io"}},
		{"docker.io with path", []string{"docker.io/myorg"}, "docker.io/myorg/app", []string{"docker.io/myorg"}},
		{"docker.io other path", []string{"docker.io/myorg"}, "docker.io/library/nginx", nil},
		{
			// kubelet uses index.docker.io only when nothing matches the image directly.
			"docker.io key wins over the index fallback",
			[]string{"https://index.docker.io/v1/", "docker.io"}, "docker.io/library/nginx", []string{"docker.io"},
		},
		{
			"both index spellings",
			[]string{"https://index.docker.io/v1/", "index.docker.io"}, "docker.io/library/nginx",
			[]string{"https://index.docker.io/v1/", "index.docker.io"},
		},
		{"Docker Hub key not for other hosts", []string{"https://index.docker.io/v1/"}, "registry.example.com/app", nil},
		{"Docker Hub key not for localhost", []string{"https://index.docker.io/v1/"}, "localhost/app", nil},
		{"Docker Hub key not for look-alikes", []string{"https://index.docker.io/v1/"}, "docker.io.evil.io/library/nginx", nil},

		{
			"most specific first",
			[]string{"*.example.com", "registry.example.com", "registry.example.com/team", "registry.example.com/team/app", "other.example.com"},
			"registry.example.com/team/app",
			[]string{"registry.example.com/team/app", "registry.example.com/team", "registry.example.com", "*.example.com"},
		},
		{
			"ports and schemes in the order",
			[]string{"https://registry.example.com:5000", "registry.example.com:5000/team", "*.example.com:5000"},
			"registry.example.com:5000/team/app",
			[]string{"registry.example.com:5000/team", "https://registry.example.com:5000", "*.example.com:5000"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := usernames(lookup(t, keyringOf(t, tt.keys...), tt.image))
			if !slices.Equal(got, tt.want) {
				t.Errorf("Lookup(%q) with keys %q = %q, want %q", tt.image, tt.keys, got, tt.want)
			}
		})
	}
}

func TestLookupOrderAcrossFiles(t *testing.T) {
	t.Parallel()
	first := credFileAt(t, "config.json", `{"auths": {
		"registry.example.com": {"auth": "`+b64("first-host:pw")+`"},
		"https://registry.example.com/": {"auth": "`+b64("first-host-again:pw")+`"}}}`)
	second := credFileAt(t, "auth.json", `{"auths": {
		"registry.example.com/team": {"auth": "`+b64("second-team:pw")+`"},
		"registry.example.com": {"auth": "`+b64("second-host:pw")+`"}}}`)
	tests := []struct {
		name  string
		paths []string
		want  []string
	}{
		{"given order", []string{first, second}, []string{"second-team", "first-host", "first-host-again", "second-host"}},
		{"reversed", []string{second, first}, []string{"second-team", "second-host", "first-host", "first-host-again"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := usernames(lookup(t, NewKeyring(tt.paths), "registry.example.com/team/app"))
			if !slices.Equal(got, tt.want) {
				t.Errorf("Lookup = %q, want %q", got, tt.want)
			}
		})
	}
}

func configFor(user, password string) string {
	return `{"auths": {"registry.example.com": {"auth": "` + b64(user+":"+password) + `"}}}`
}

func TestLookupReload(t *testing.T) {
	t.Parallel()
	const image = "registry.example.com/app"
	tests := []struct {
		name   string
		change func(t *testing.T, path string)
		want   []Credential
		err    bool
	}{
		{
			name:   "rewritten in place",
			change: func(t *testing.T, path string) { writeFile(t, path, configFor("alice", "rotated-longer")) },
			want:   []Credential{{Username: "alice", Password: "rotated-longer"}},
		},
		{
			name: "same size, new mtime",
			change: func(t *testing.T, path string) {
				writeFile(t, path, configFor("alice", "pw2"))
				later := time.Now().Add(time.Hour)
				if err := os.Chtimes(path, later, later); err != nil {
					t.Fatal(err)
				}
			},
			want: []Credential{{Username: "alice", Password: "pw2"}},
		},
		{
			name: "same size and mtime, renamed over",
			change: func(t *testing.T, path string) {
				info, err := os.Stat(path)
				if err != nil {
					t.Fatal(err)
				}
				tmp := path + ".tmp"
				writeFile(t, tmp, configFor("alice", "pw2"))
				if err := os.Chtimes(tmp, info.ModTime(), info.ModTime()); err != nil {
					t.Fatal(err)
				}
				if err := os.Rename(tmp, path); err != nil {
					t.Fatal(err)
				}
			},
			want: []Credential{{Username: "alice", Password: "pw2"}},
		},
		{
			// Proves that an unchanged file is not parsed again: the content differs, but
			// nothing Lookup looks at does.
			name: "same file, size and mtime is not read again",
			change: func(t *testing.T, path string) {
				info, err := os.Stat(path)
				if err != nil {
					t.Fatal(err)
				}
				writeFile(t, path, configFor("alice", "pw2"))
				if err := os.Chtimes(path, info.ModTime(), info.ModTime()); err != nil {
					t.Fatal(err)
				}
			},
			want: []Credential{{Username: "alice", Password: "pw1"}},
		},
		{
			name:   "removed",
			change: func(t *testing.T, path string) { os.Remove(path) },
		},
		{
			name:   "broken",
			change: func(t *testing.T, path string) { writeFile(t, path, `{"auths": `) },
			err:    true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := credFileAt(t, "config.json", configFor("alice", "pw1"))
			k := NewKeyring([]string{path})
			want := []Credential{{Username: "alice", Password: "pw1"}}
			if got := lookup(t, k, image); !slices.Equal(got, want) {
				t.Fatalf("first Lookup = %s, want %s", show(got), show(want))
			}
			tt.change(t, path)
			got, err := k.Lookup(image)
			if (err != nil) != tt.err {
				t.Errorf("Lookup error = %v, want error: %t", err, tt.err)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("Lookup after change = %s, want %s", show(got), show(tt.want))
			}
		})
	}

	t.Run("fixed after broken", func(t *testing.T) {
		t.Parallel()
		path := credFileAt(t, "config.json", `{"auths": `)
		k := NewKeyring([]string{path})
		if _, err := k.Lookup(image); err == nil {
			t.Fatal("Lookup of a broken file: no error")
		}
		writeFile(t, path, configFor("alice", "fixed"))
		want := []Credential{{Username: "alice", Password: "fixed"}}
		if got := lookup(t, k, image); !slices.Equal(got, want) {
			t.Errorf("Lookup = %s, want %s", show(got), show(want))
		}
	})
}

func TestLookupConcurrent(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "config.json")
	writeFile(t, path, configFor("alice", "v0"))
	k := NewKeyring([]string{path, filepath.Join(dir, "absent.json")})

	const versions = 50
	var wg sync.WaitGroup
	done := make(chan struct{})
	wg.Go(func() {
		defer close(done)
		// Rotate the way secret volumes and careful writers do: write aside, rename over.
		for i := 1; i <= versions; i++ {
			tmp := filepath.Join(dir, fmt.Sprintf("tmp-%d", i))
			writeFile(t, tmp, configFor("alice", fmt.Sprintf("v%d", i)))
			if err := os.Rename(tmp, path); err != nil {
				t.Error(err)
				return
			}
		}
	})
	for range 8 {
		wg.Go(func() {
			for {
				creds, err := k.Lookup("registry.example.com/app")
				if err != nil {
					t.Errorf("Lookup: %v", err)
					return
				}
				if len(creds) != 1 || creds[0].Username != "alice" || !strings.HasPrefix(creds[0].Password, "v") {
					t.Errorf("Lookup = %s, want alice's credential", show(creds))
					return
				}
				select {
				case <-done:
					return
				default:
				}
			}
		})
	}
	wg.Wait()
	want := []Credential{{Username: "alice", Password: fmt.Sprintf("v%d", versions)}}
	if got := lookup(t, k, "registry.example.com/app"); !slices.Equal(got, want) {
		t.Errorf("Lookup after rotations = %s, want %s", show(got), show(want))
	}
}

func TestLookupBadImage(t *testing.T) {
	t.Parallel()
	if _, err := keyringOf(t, "registry.example.com").Lookup("/app"); err == nil {
		t.Error("Lookup of an image without a host: no error")
	}
}
