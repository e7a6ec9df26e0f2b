package proxy_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

type pruneCall struct {
	keep   func(image, digest string) bool
	before time.Time
}

type fakePruner chan pruneCall

func (f fakePruner) Prune(keep func(image, digest string) bool, before time.Time) (int, error) {
	f <- pruneCall{keep, before}
	return 0, nil
}

func TestPruneState(t *testing.T) {
	t.Parallel()
	e := start(t, setup{runtime: &fakeRuntime{replies: map[string]proto.Message{
		"ListImages": &runtimeapi.ListImagesResponse{Images: []*runtimeapi.Image{storedImage().Image}},
	}}})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	pruner := make(fakePruner)
	done := make(chan struct{})
	go func() { e.proxy.PruneState(ctx, pruner, time.Hour, 24*time.Hour); close(done) }()
	c := <-pruner
	cancel()
	<-done
	if since := time.Since(c.before); since < 24*time.Hour || since > 25*time.Hour {
		t.Errorf("pruned decisions older than %s ago, want the 24h grace", since)
	}
	for ref, want := range map[string]bool{
		storeRepo + "@" + tagDigest.String():                    true,
		"registry.example.com/mirror/web@" + pinDigest.String(): true,
		storeRepo + "@" + pinDigest.String():                    false,
		"registry.example.com/gone/web@" + tagDigest.String():   false,
	} {
		image, digest := ref[:len(ref)-len(tagDigest.String())-1], ref[len(ref)-len(tagDigest.String()):]
		if got := c.keep(image, digest); got != want {
			t.Errorf("keep(%s) = %v, want %v", ref, got, want)
		}
	}
}
