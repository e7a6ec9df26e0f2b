package verify

import (
	"strings"
	"testing"
)

func TestParseImage(t *testing.T) {
	t.Parallel()
	const d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	tests := []struct {
		name, ref, want, tag string
		registry, repo       string
		pinned               bool
	}{
		{name: "docker hub short", ref: "nginx", want: "docker.io/library/nginx:latest", registry: "docker.io", repo: "library/nginx", tag: "latest"},
		{name: "docker hub library", ref: "library/nginx:1.27", want: "docker.io/library/nginx:1.27", registry: "docker.io", repo: "library/nginx", tag: "1.27"},
		{name: "docker hub user", ref: "bitnami/redis", want: "docker.io/bitnami/redis:latest", registry: "docker.io", repo: "bitnami/redis", tag: "latest"},
		{name: "docker hub explicit", ref: "docker.io/nginx:1", want: "docker.io/library/nginx:1", registry: "docker.io", repo: "library/nginx", tag: "1"},
		{name: "index.docker.io alias", ref: "index.docker.io/library/nginx", want: "docker.io/library/nginx:latest", registry: "docker.io", repo: "library/nginx", tag: "latest"},
		{name: "host with dot", ref: "registry.example.com/apps/web:v2", want: "registry.example.com/apps/web:v2", registry: "registry.example.com", repo: "apps/web", tag: "v2"},
		{name: "host with port", ref: "127.0.0.1:5000/app", want: "127.0.0.1:5000/app:latest", registry: "127.0.0.1:5000", repo: "app", tag: "latest"},
		{name: "localhost is a host", ref: "localhost/app:dev", want: "localhost/app:dev", registry: "localhost", repo: "app", tag: "dev"},
		{name: "first component without dot is a path", ref: "myregistry/app", want: "docker.io/myregistry/app:latest", registry: "docker.io", repo: "myregistry/app", tag: "latest"},
		{name: "ipv6 in brackets", ref: "[::1]:5000/app:v1", want: "[::1]:5000/app:v1", registry: "[::1]:5000", repo: "app", tag: "v1"},
		{name: "digest", ref: "registry.example.com/app@" + d, want: "registry.example.com/app@" + d, registry: "registry.example.com", repo: "app", pinned: true},
		{name: "tag and digest pins the digest", ref: "nginx:1.27@" + d, want: "docker.io/library/nginx@" + d, registry: "docker.io", repo: "library/nginx", pinned: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			img, err := ParseImage(tc.ref)
			if err != nil {
				t.Fatalf("ParseImage(%q): %v", tc.ref, err)
			}
			if got := img.String(); got != tc.want {
				t.Errorf("String() = %q, want %q", got, tc.want)
			}
			if img.Registry != tc.registry || img.Repository != tc.repo || img.Tag != tc.tag {
				t.Errorf("got registry %q repo %q tag %q, want %q %q %q", img.Registry, img.Repository, img.Tag, tc.registry, tc.repo, tc.tag)
			}
			if (img.Digest != "") != tc.pinned {
				t.Errorf("digest %q, want pinned=%v", img.Digest, tc.pinned)
			}
		})
	}
}

func TestParseImageInvalid(t *testing.T) {
	t.Parallel()
	tests := []struct{ name, ref string }{
		{name: "empty", ref: ""},
		{name: "uppercase repository", ref: "registry.example.com/Apps/web"},
		{name: "uppercase short name", ref: "Nginx"},
		{name: "bad digest algorithm", ref: "nginx@sha256:abc"},
		{name: "digest not hex", ref: "nginx@sha256:zz23456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"},
		{name: "too long name", ref: "registry.example.com/" + strings.Repeat("a", 256)},
		{name: "bad tag", ref: "nginx:-bad"},
		{name: "tag too long", ref: "nginx:" + strings.Repeat("t", 129)},
		{name: "spaces", ref: "nginx latest"},
		{name: "bare image id", ref: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"},
		{name: "scheme", ref: "https://registry.example.com/app"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if img, err := ParseImage(tc.ref); err == nil {
				t.Fatalf("ParseImage(%q) = %v, want error", tc.ref, img)
			}
		})
	}
}

func TestImagePinned(t *testing.T) {
	t.Parallel()
	img, err := ParseImage("registry.example.com/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	const d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	if got, want := img.Pinned(d).String(), "registry.example.com/app@"+d; got != want {
		t.Fatalf("Pinned = %q, want %q", got, want)
	}
}
