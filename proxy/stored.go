package proxy

import (
	"slices"

	"github.com/opencontainers/go-digest"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/pullgate/pullgate/verify"
)

// storedImage is an image in the runtime's store, its names parsed once.
type storedImage struct {
	id string
	// digests are its repo digests (name@digest), tags its repo tags (name:tag), as the runtime
	// spells them and parsed.
	digests, tags []named
}

type named struct {
	ref string
	img verify.Image
}

func parseStored(st *runtimeapi.Image) storedImage {
	parse := func(refs []string) []named {
		var out []named
		for _, ref := range refs {
			if img, err := verify.ParseImage(ref); err == nil {
				out = append(out, named{ref, img})
			}
		}
		return out
	}
	return storedImage{id: st.GetId(), digests: parse(st.GetRepoDigests()), tags: parse(st.GetRepoTags())}
}

// names are the repositories the store knows the image by, each once, without tag or digest.
func (s storedImage) names() []verify.Image {
	seen := map[string]bool{}
	var out []verify.Image
	for _, n := range slices.Concat(s.digests, s.tags) {
		if seen[n.img.Name()] {
			continue
		}
		seen[n.img.Name()] = true
		img := n.img
		img.Digest, img.Tag = "", ""
		out = append(out, img)
	}
	return out
}

// namesFor returns the names to decide the image by: the name it was asked for, when it is one
// of the store's names for the image; otherwise (an image ID, a digest prefix, an alias
// containerd resolved) all of them, any of which may vouch for the content they all name.
func (s storedImage) namesFor(ref string) []verify.Image {
	img, err := verify.ParseImage(ref)
	if err == nil {
		for _, n := range slices.Concat(s.digests, s.tags) {
			if n.img.Name() == img.Name() {
				return []verify.Image{img}
			}
		}
	}
	return s.names()
}

// digestsOf are the registry digests the store holds for img's repository; a name pinned by
// digest counts only when the store holds that digest.
func (s storedImage) digestsOf(img verify.Image) []digest.Digest {
	var out []digest.Digest
	for _, n := range s.digests {
		if n.img.Name() == img.Name() && n.img.Digest != "" && (img.Digest == "" || img.Digest == n.img.Digest) {
			out = append(out, n.img.Digest)
		}
	}
	return out
}

// tagsOf returns the store's tags of img's repository, as the runtime spells them.
func (s storedImage) tagsOf(img verify.Image) []string {
	var out []string
	for _, n := range s.tags {
		if n.img.Name() == img.Name() {
			out = append(out, n.ref)
		}
	}
	return out
}
