package proxy

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Holder tells whether the runtime already holds an image, ready to run.
type Holder interface {
	// Unpacked returns the ID of the image stored as pinned ("repo@digest") when its manifest
	// and config are in the content store and its layers are unpacked for the runtime's
	// snapshotter, and "" otherwise.
	Unpacked(ctx context.Context, pinned string) (string, error)
}

var _ Holder = (*ImageStore)(nil)

// managedLabel marks the images containerd's CRI pulled or adopted; an image imported another
// way may lack the records CRI keeps for it, which a pull through CRI creates.
const managedLabel = "io.cri-containerd.image"

// Unpacked checks the image the way containerd's client does before it unpacks (the snapshot of
// the layers' chain ID exists), on the platform containerd's CRI pulls for.
func (s *ImageStore) Unpacked(ctx context.Context, pinned string) (string, error) {
	sn, err := s.snapshotter.name(ctx, s.cri)
	if err != nil || sn == "" {
		return "", err
	}
	ctx = namespaces.WithNamespace(ctx, s.namespace)
	rec, err := s.store.Get(ctx, pinned)
	switch {
	case errdefs.IsNotFound(err):
		return "", nil
	case err != nil:
		return "", fmt.Errorf("look up %s: %w", pinned, err)
	case rec.Labels[managedLabel] != "managed":
		return "", nil
	case !strings.HasSuffix(pinned, "@"+rec.Target.Digest.String()):
		// A record under this name made around the CRI that points elsewhere.
		return "", nil
	}
	config, err := s.config(ctx, rec)
	if errdefs.IsNotFound(err) {
		return "", nil
	} else if err != nil {
		return "", fmt.Errorf("config of %s: %w", pinned, err)
	}
	diffs, err := images.RootFS(ctx, s.client.ContentStore(), config)
	if errdefs.IsNotFound(err) {
		return "", nil
	} else if err != nil {
		return "", fmt.Errorf("layers of %s: %w", pinned, err)
	}
	if _, err := s.client.SnapshotService(sn).Stat(ctx, identity.ChainID(diffs).String()); errdefs.IsNotFound(err) {
		return "", nil
	} else if err != nil {
		return "", fmt.Errorf("snapshot of %s in %s: %w", pinned, sn, err)
	}
	return config.Digest.String(), nil
}

// config is the descriptor of rec's config on the platform containerd's CRI pulls for; its
// digest is the image's ID in the CRI.
func (s *ImageStore) config(ctx context.Context, rec images.Image) (ocispec.Descriptor, error) {
	return images.Config(ctx, s.client.ContentStore(), rec.Target, platforms.Default())
}

// snapshotterName is the snapshotter containerd's CRI unpacks images for, as its ImageFsInfo
// reports it (the default snapshotter's directory first), looked up again now and then in case
// containerd restarted with another configuration.
type snapshotterName struct {
	mu      sync.Mutex
	current string
	at      time.Time
}

const snapshotterRecheck = time.Minute

func (n *snapshotterName) name(ctx context.Context, cri runtimeapi.ImageServiceClient) (string, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.current != "" && time.Since(n.at) < snapshotterRecheck {
		return n.current, nil
	}
	// Under the lock: bounded, so that one slow answer does not hold every warm pull.
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	fs, err := cri.ImageFsInfo(ctx, &runtimeapi.ImageFsInfoRequest{})
	if err != nil {
		return "", fmt.Errorf("image filesystem: %w", err)
	}
	n.current, n.at = "", time.Now()
	if f := fs.GetImageFilesystems(); len(f) > 0 {
		// Not a snapshotter's directory: nothing counts as unpacked.
		if sn, ok := strings.CutPrefix(filepath.Base(f[0].GetFsId().GetMountpoint()), "io.containerd.snapshotter.v1."); ok {
			n.current = sn
		}
	}
	return n.current, nil
}
