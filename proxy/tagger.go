package proxy

import (
	"context"
	"fmt"
	"strings"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// ImageStore is containerd's image store, in the namespace the CRI plugin uses: it records tags
// and tells which images are ready to run.
type ImageStore struct {
	client      *containerd.Client
	store       images.Store
	cri         runtimeapi.ImageServiceClient
	namespace   string
	snapshotter snapshotterName
}

var _ Tagger = (*ImageStore)(nil)

// NewImageStore uses containerd's images service over conn.
func NewImageStore(conn *grpc.ClientConn, namespace string) (*ImageStore, error) {
	c, err := containerd.NewWithConn(conn)
	if err != nil {
		return nil, fmt.Errorf("containerd client: %w", err)
	}
	return &ImageStore{client: c, store: c.ImageService(), cri: runtimeapi.NewImageServiceClient(conn), namespace: namespace}, nil
}

// Tag makes name point at the image the runtime stored under pinned ("repo@digest"), with
// the same labels, as containerd's CRI plugin does for a pull by tag, and returns once the CRI
// shows it.
func (s *ImageStore) Tag(ctx context.Context, name, pinned string) error {
	changed, err := s.record(namespaces.WithNamespace(ctx, s.namespace), name, pinned)
	if err != nil || !changed {
		return err
	}
	return s.waitVisible(ctx, name, pinned)
}

func (s *ImageStore) record(ctx context.Context, name, pinned string) (changed bool, err error) {
	_, want, _ := strings.Cut(pinned, "@")
	// Most pulls find the tag already right: one keyed read, and nothing to write. (A filtered
	// List would scan every image in the store.)
	old, err := s.store.Get(ctx, name)
	if err == nil && old.Target.Digest.String() == want {
		return false, nil
	}
	if err != nil && !errdefs.IsNotFound(err) {
		return false, fmt.Errorf("look up %s: %w", name, err)
	}
	exists := err == nil
	src, err := s.store.Get(ctx, pinned)
	if err != nil {
		return false, fmt.Errorf("look up %s: %w", pinned, err)
	}
	img := images.Image{Name: name, Target: src.Target, Labels: src.Labels}
	if !exists {
		_, err := s.store.Create(ctx, img)
		if !errdefs.IsAlreadyExists(err) {
			return err == nil, err
		}
	}
	paths := []string{"target"}
	for k := range img.Labels {
		paths = append(paths, "labels."+k)
	}
	_, err = s.store.Update(ctx, img, paths...)
	return err == nil, err
}

// visibleTimeout bounds the wait for containerd's CRI plugin to show a new tag record.
const visibleTimeout = 5 * time.Second

// waitVisible waits until the CRI's ImageStatus(name) shows the image pinned names. containerd's
// CRI plugin serves images from a cache it updates from image events, a few milliseconds after
// the record is written; kubelet asks ImageStatus(tag) right after the pull returns.
func (s *ImageStore) waitVisible(ctx context.Context, name, pinned string) error {
	ctx, cancel := context.WithTimeout(ctx, visibleTimeout)
	defer cancel()
	want, err := s.cri.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: pinned}})
	if err != nil {
		return fmt.Errorf("image status of %s: %w", pinned, err)
	}
	if want.GetImage() == nil {
		return fmt.Errorf("containerd's CRI does not show %s, which it has just pulled", pinned)
	}
	for wait := time.Millisecond; ; wait = min(2*wait, 50*time.Millisecond) {
		got, err := s.cri.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: name}})
		if err == nil && got.GetImage().GetId() == want.GetImage().GetId() {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("containerd recorded %s but its CRI did not show it within %s", name, visibleTimeout)
		case <-time.After(wait):
		}
	}
}
