package verify

import (
	"strings"
	"testing"
	"unicode"

	"github.com/opencontainers/go-digest"
)

// FuzzParseImage checks the normalisation of image references, which come from kubelet's
// PullImage requests, the runtime's image store and signed payloads:
//   - ParseImage never panics;
//   - a parsed reference is well formed: a registry and a lower-case repository, and exactly
//     one of a tag and a valid digest;
//   - normalisation is idempotent: String() parses back to the same Image, and is stable;
//   - the registry is the first component when DESIGN.md says it is a host ('.' or ':' in it,
//     or localhost; or upper case in it, as for docker and containerd), docker.io otherwise;
//   - Pinned gives a reference that parses back to itself;
//   - the policy's host key is the same for the reference and its normal form.
func FuzzParseImage(f *testing.F) {
	const d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	for _, ref := range []string{
		// TestParseImage
		"nginx", "library/nginx:1.27", "bitnami/redis", "docker.io/nginx:1", "index.docker.io/library/nginx",
		"registry.example.com/apps/web:v2", "127.0.0.1:5000/app", "localhost/app:dev", "myregistry/app",
		"[::1]:5000/app:v1", "registry.example.com/app@" + d, "nginx:1.27@" + d,
		// TestParseImageInvalid
		"", "registry.example.com/Apps/web", "Nginx", "nginx@sha256:abc",
		"nginx@sha256:zz23456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
		"registry.example.com/" + strings.Repeat("a", 256), "nginx:-bad", "nginx:" + strings.Repeat("t", 129),
		"nginx latest", "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "https://registry.example.com/app",
		// TestImagePinned and others
		"registry.example.com/app:v1", "REGISTRY.example.com:443/app", "docker.io/library/busybox@" + d,
		"localhost:5000/a/b/c:tag", "A/0", "Registry/app", "[fe80::1%25eth0]:5000/app", "registry.example.com:5000/team/app:v1@" + d,
	} {
		f.Add(ref)
	}
	f.Fuzz(func(t *testing.T, ref string) {
		img, err := ParseImage(ref)
		if err != nil {
			if img != (Image{}) {
				t.Fatalf("ParseImage(%q) failed (%v) but returned %+v", ref, err, img)
			}
			return
		}
		if img.Registry == "" || img.Repository == "" {
			t.Fatalf("ParseImage(%q) = %+v: no registry or repository", ref, img)
		}
		if strings.ToLower(img.Repository) != img.Repository {
			t.Fatalf("ParseImage(%q) = %+v: repository with upper case", ref, img)
		}
		if (img.Tag == "") == (img.Digest == "") {
			t.Fatalf("ParseImage(%q) = %+v: want exactly one of tag and digest", ref, img)
		}
		if img.Digest != "" {
			if err := img.Digest.Validate(); err != nil {
				t.Fatalf("ParseImage(%q) = %+v: invalid digest: %v", ref, img, err)
			}
		}
		if strings.Contains(img.Name(), "@") {
			t.Fatalf("ParseImage(%q): name %q holds an '@'", ref, img.Name())
		}
		for _, r := range img.String() {
			if r > unicode.MaxASCII || unicode.IsSpace(r) || unicode.IsControl(r) {
				t.Fatalf("ParseImage(%q): String() %q holds %q", ref, img.String(), r)
			}
		}

		s := img.String()
		again, err := ParseImage(s)
		if err != nil {
			t.Fatalf("ParseImage(%q) = %q, which does not parse: %v", ref, s, err)
		}
		if again != img {
			t.Fatalf("ParseImage(%q) = %+v, but its String() %q parses to %+v", ref, img, s, again)
		}
		if again.String() != s {
			t.Fatalf("String() is not stable: %q then %q", s, again.String())
		}
		if hostKey(again.Registry) != hostKey(img.Registry) {
			t.Fatalf("host key changed from %q to %q", hostKey(img.Registry), hostKey(again.Registry))
		}

		// DESIGN.md: a host is a first component containing '.' or ':' or equal to localhost;
		// and, as for docker and containerd, one with upper case, which no repository has.
		name, _, _ := strings.Cut(ref, "@")
		if first, _, ok := strings.Cut(name, "/"); ok && (strings.ContainsAny(first, ".:") || first == "localhost" || strings.ToLower(first) != first) {
			if want := first; img.Registry != want && !(want == "index.docker.io" && img.Registry == "docker.io") {
				t.Fatalf("ParseImage(%q): registry %q, want %q", ref, img.Registry, want)
			}
		} else if img.Registry != "docker.io" {
			t.Fatalf("ParseImage(%q): registry %q, want docker.io for a first component that is no host", ref, img.Registry)
		}

		pinned := img.Pinned(digest.FromString(ref))
		back, err := ParseImage(pinned.String())
		if err != nil || back != pinned {
			t.Fatalf("Pinned %q parses to %+v, %v", pinned, back, err)
		}
	})
}
