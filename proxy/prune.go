package proxy

import (
	"context"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/pullgate/pullgate/verify"
)

// StatePruner forgets stored decisions.
type StatePruner interface {
	Prune(keep func(image, digest string) bool, before time.Time) (int, error)
}

// PruneState forgets, now and then every interval until ctx ends, the decisions and evidence
// for digests the runtime's store no longer holds, once they were last decided more than grace
// ago: an image being pulled is not in the store yet.
func (p *Proxy) PruneState(ctx context.Context, s StatePruner, interval, grace time.Duration) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		p.prune(ctx, s, grace)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (p *Proxy) prune(ctx context.Context, s StatePruner, grace time.Duration) {
	list, err := p.imageClient.ListImages(ctx, &runtimeapi.ListImagesRequest{})
	if err != nil {
		if ctx.Err() == nil {
			p.logger.Warn("state not pruned: the runtime's images could not be listed", "error", err)
		}
		return
	}
	held := map[string]bool{}
	for _, img := range list.GetImages() {
		for _, rd := range img.GetRepoDigests() {
			if named, err := verify.ParseImage(rd); err == nil {
				held[named.Name()+"@"+named.Digest.String()] = true
			}
		}
	}
	n, err := s.Prune(func(image, digest string) bool { return held[image+"@"+digest] }, time.Now().Add(-grace))
	switch {
	case err != nil:
		p.logger.Warn("state not pruned", "error", err)
	case n > 0:
		p.logger.Info("state pruned: forgot digests no longer in the runtime's store", "digests", n)
	}
}
