package proxy

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"time"

	eventsapi "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	"github.com/distribution/reference"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// ImageEvents tells of changes to the runtime's image store, and whether its CRI shows them yet.
type ImageEvents interface {
	// Watch calls live once it is sure to be told of every later change, then changed with the
	// name of every image created, updated or deleted, until the watch breaks or ctx ends.
	Watch(ctx context.Context, live func(), changed func(name string)) error
	// Shows reports whether the runtime's CRI shows name as the image store holds it now:
	// containerd's CRI serves images from a cache it updates from the same events.
	Shows(ctx context.Context, name string) (bool, error)
}

var _ ImageEvents = (*ImageStore)(nil)

// probeTopic carries the event a watch publishes to itself: once it comes back, the subscription
// is in place on containerd's side and no later change can be missed (an event published after
// the probe reaches the subscriber after it). containerd's CRI
// subscribes to /images/ and /tasks/ topics only, so it never sees it.
const probeTopic = "/pullgate/watch"

// probeTimeout bounds the wait for the probe.
const probeTimeout = 10 * time.Second

// Watch subscribes to containerd's image events in the store's namespace.
func (s *ImageStore) Watch(ctx context.Context, live func(), changed func(name string)) error {
	ctx, cancel := context.WithCancel(namespaces.WithNamespace(ctx, s.namespace))
	defer cancel()
	ns := fmt.Sprintf("namespace==%q,", s.namespace)
	events, errs := s.client.EventService().Subscribe(ctx, ns+`topic~="^/images/"`, ns+fmt.Sprintf("topic==%q", probeTopic))
	// The subscription is made on containerd's side some time after Subscribe returns: the
	// probe is published again until one comes back.
	probe := "pullgate-watch-" + rand.Text()
	timeout := time.NewTimer(probeTimeout)
	defer timeout.Stop()
	again := time.NewTimer(0)
	defer again.Stop()
	wait := 5 * time.Millisecond
	confirmed := false
	for {
		select {
		case <-again.C:
			if confirmed {
				continue
			}
			if err := s.client.EventService().Publish(ctx, probeTopic, &eventsapi.ImageUpdate{Name: probe}); err != nil {
				return fmt.Errorf("publish the watch's probe: %w", err)
			}
			again.Reset(wait)
			wait = min(2*wait, 500*time.Millisecond)
		case err := <-errs:
			if err == nil {
				err = errors.New("the event stream ended")
			}
			return fmt.Errorf("image events: %w", err)
		case <-timeout.C:
			if !confirmed {
				return fmt.Errorf("image events: the watch's own probe did not come back within %s", probeTimeout)
			}
		case env := <-events:
			ev, err := typeurl.UnmarshalAny(env.Event)
			if err != nil {
				// It may be a change to any image: start again from nothing known.
				return fmt.Errorf("image event on %s: %w", env.Topic, err)
			}
			var name string
			switch e := ev.(type) {
			case *eventsapi.ImageCreate:
				name = e.Name
			case *eventsapi.ImageUpdate:
				name = e.Name
			case *eventsapi.ImageDelete:
				name = e.Name
			}
			if env.Topic == probeTopic {
				if name == probe && !confirmed {
					confirmed = true
					live()
				}
				continue
			}
			if name == "" {
				return fmt.Errorf("image event on %s names no image", env.Topic)
			}
			changed(name)
		}
	}
}

// Shows compares the CRI's ImageStatus of name with the record the image store holds: absent
// from both, or the same image (its config's digest, which CRI uses as the image's ID).
func (s *ImageStore) Shows(ctx context.Context, name string) (bool, error) {
	if !strings.HasPrefix(name, "sha256:") {
		if ref, err := reference.ParseDockerRef(name); err != nil || ref.String() != name {
			// A record named around the CRI (`ctr images tag x nginx:latest`, an import's
			// name): CRI's ImageStatus normalises what it is asked, so it never answers for
			// this name as it is. Its own replies are for canonical names, which have events
			// of their own.
			return true, nil
		}
	}
	st, err := s.cri.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: name}})
	if err != nil {
		return false, fmt.Errorf("image status of %s: %w", name, err)
	}
	ctx = namespaces.WithNamespace(ctx, s.namespace)
	rec, err := s.store.Get(ctx, name)
	switch {
	case errdefs.IsNotFound(err):
		return st.GetImage() == nil, nil
	case err != nil:
		return false, fmt.Errorf("look up %s: %w", name, err)
	}
	config, err := s.config(ctx, rec)
	if err != nil {
		// CRI cannot show what it cannot read either.
		return st.GetImage() == nil, nil
	}
	return st.GetImage().GetId() == config.Digest.String(), nil
}
