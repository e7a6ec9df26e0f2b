package proxy

import (
	"context"
	"fmt"
	"strings"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"google.golang.org/grpc"
)

// ImageStore records tags in containerd's image store, in the namespace the CRI plugin uses.
type ImageStore struct {
	store     images.Store
	namespace string
}

var _ Tagger = (*ImageStore)(nil)

// NewImageStore uses containerd's images service over conn.
func NewImageStore(conn *grpc.ClientConn, namespace string) (*ImageStore, error) {
	c, err := containerd.NewWithConn(conn, containerd.WithDefaultNamespace(namespace))
	if err != nil {
		return nil, fmt.Errorf("containerd client: %w", err)
	}
	return &ImageStore{store: c.ImageService(), namespace: namespace}, nil
}

// Tag makes name point at the image the runtime stored under pinned ("repo@digest"), with
// the same labels, as containerd's CRI plugin does for a pull by tag.
func (s *ImageStore) Tag(ctx context.Context, name, pinned string) error {
	ctx = namespaces.WithNamespace(ctx, s.namespace)
	_, want, _ := strings.Cut(pinned, "@")
	// Most pulls find the tag already right: one keyed read, and nothing to write. (A filtered
	// List would scan every image in the store.)
	old, err := s.store.Get(ctx, name)
	if err == nil && old.Target.Digest.String() == want {
		return nil
	}
	if err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("look up %s: %w", name, err)
	}
	exists := err == nil
	src, err := s.store.Get(ctx, pinned)
	if err != nil {
		return fmt.Errorf("look up %s: %w", pinned, err)
	}
	img := images.Image{Name: name, Target: src.Target, Labels: src.Labels}
	if !exists {
		_, err := s.store.Create(ctx, img)
		if !errdefs.IsAlreadyExists(err) {
			return err
		}
	}
	paths := []string{"target"}
	for k := range img.Labels {
		paths = append(paths, "labels."+k)
	}
	_, err = s.store.Update(ctx, img, paths...)
	return err
}
