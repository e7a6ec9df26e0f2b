package verify

import (
	"fmt"
	"strings"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
)

// Image is a normalised image reference, spelled as kubelet and containerd spell it:
// "nginx" is docker.io/library/nginx:latest.
type Image struct {
	// Registry is the host, with port if any: "docker.io", "127.0.0.1:5000", "[::1]:5000".
	Registry string
	// Repository is the path within the registry: "library/nginx".
	Repository string
	// Tag is empty when the reference is pinned by digest.
	Tag string
	// Digest is set when the reference names one.
	Digest digest.Digest
}

// ParseImage normalises ref. A reference with both a tag and a digest is pinned by the digest;
// the tag is dropped, as containerd does.
func ParseImage(ref string) (Image, error) {
	named, err := reference.ParseDockerRef(ref)
	if err != nil {
		return Image{}, fmt.Errorf("invalid image reference %q: %w", ref, err)
	}
	img := Image{Registry: reference.Domain(named), Repository: reference.Path(named)}
	if img.Registry == "" {
		// A first component that is neither a valid host nor docker.io's ("my_registry.io/app"):
		// distribution/reference then gives no registry, and containerd would pull from it.
		return Image{}, fmt.Errorf("invalid image reference %q: %q is not a valid registry host", ref, strings.SplitN(ref, "/", 2)[0])
	}
	if c, ok := named.(reference.Canonical); ok {
		img.Digest = c.Digest()
	} else if t, ok := named.(reference.Tagged); ok {
		img.Tag = t.Tag()
	}
	return img, nil
}

// Name is registry/repository, the form credential keys are matched against.
func (i Image) Name() string { return i.Registry + "/" + i.Repository }

// String is the full reference, by digest when pinned.
func (i Image) String() string {
	if i.Digest != "" {
		return i.Name() + "@" + i.Digest.String()
	}
	return i.Name() + ":" + i.Tag
}

// Pinned returns the reference to the same repository by digest d.
func (i Image) Pinned(d digest.Digest) Image {
	return Image{Registry: i.Registry, Repository: i.Repository, Digest: d}
}
