package proxy_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/pullgate/pullgate/proxy"
	"github.com/pullgate/pullgate/verify"
)

// fakeEvents is the runtime's image events, driven by the test.
type fakeEvents struct {
	watching chan struct{} // a Watch call started
	lived    chan struct{} // it called live
	changes  chan string   // a change to deliver; acked on applied
	applied  chan struct{} // changed returned
	broken   chan error    // ends the current Watch
	agree    atomic.Bool   // what Shows says
	goLive   chan struct{} // a token lets one Watch call go live
}

var _ proxy.ImageEvents = (*fakeEvents)(nil)

func newFakeEvents() *fakeEvents {
	f := &fakeEvents{watching: make(chan struct{}, 10), lived: make(chan struct{}, 10), changes: make(chan string),
		applied: make(chan struct{}), broken: make(chan error), goLive: make(chan struct{}, 10)}
	f.agree.Store(true)
	return f
}

func (f *fakeEvents) Watch(ctx context.Context, live func(), changed func(string)) error {
	f.watching <- struct{}{}
	select {
	case <-f.goLive:
	case <-ctx.Done():
		return ctx.Err()
	}
	live()
	f.lived <- struct{}{}
	for {
		select {
		case name := <-f.changes:
			changed(name)
			f.applied <- struct{}{}
		case err := <-f.broken:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (f *fakeEvents) Shows(context.Context, string) (bool, error) { return f.agree.Load(), nil }

// ImageStatus replies are kept from when the runtime's image events are followed until an
// event, a removal or pull through pullgate, a new policy, or a broken watch; a change keeps
// nothing new until the runtime's CRI shows it.
func TestImageStatusKept(t *testing.T) {
	t.Parallel()
	const ref = "registry.example.com/team/app:v1"
	present := &runtimeapi.ImageStatusResponse{Image: &runtimeapi.Image{Id: imageID, RepoTags: []string{ref}, Size: 42}}
	rt := &fakeRuntime{statusByImage: map[string]*runtimeapi.ImageStatusResponse{ref: present}}
	var current atomic.Pointer[fakeVerifier]
	current.Store(&fakeVerifier{})
	e := start(t, setup{runtime: rt, verifiers: func() proxy.Verifier { return current.Load() }})
	ev := newFakeEvents()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go e.proxy.WatchImages(ctx, ev)

	asked := 0
	status := func(wantAsked bool) {
		t.Helper()
		resp, err := e.imageClient().ImageStatus(t.Context(), &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
		if err != nil || !proto.Equal(resp, present) {
			t.Fatalf("ImageStatus = %v, %v; want the runtime's %v", resp, err, present)
		}
		if wantAsked {
			asked++
		}
		if n := len(rt.callsTo("ImageStatus")); n != asked {
			t.Fatalf("the runtime was asked %d times, want %d (asked this time: %v)", n, asked, wantAsked)
		}
	}
	// settle waits until the runtime's CRI showing the change lets replies be kept again.
	settle := func() {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			before := len(rt.callsTo("ImageStatus"))
			if _, err := e.imageClient().ImageStatus(t.Context(), &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: ref}}); err != nil {
				t.Fatal(err)
			}
			if len(rt.callsTo("ImageStatus")) == before {
				asked = before
				return
			}
			if time.Now().After(deadline) {
				t.Fatal("replies are not kept again after the runtime's CRI showed the change")
			}
		}
	}

	<-ev.watching
	status(true)
	status(true) // not live yet: nothing kept
	ev.goLive <- struct{}{}
	<-ev.lived
	status(true)
	status(false)

	ev.agree.Store(false)
	ev.changes <- ref
	<-ev.applied
	status(true)
	status(true) // the CRI does not show the change yet
	ev.agree.Store(true)
	settle()
	status(false)

	if _, err := e.imageClient().RemoveImage(t.Context(), &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: "sha256:other"}}); err != nil {
		t.Fatal(err)
	}
	status(true)
	status(false)

	if _, err := e.imageClient().PullImage(t.Context(), pullRequest(ref, nil)); err != nil {
		t.Fatal(err)
	}
	status(true)
	status(false)

	current.Store(&fakeVerifier{}) // a new verifier
	status(true)
	status(false)
	e.proxy.PolicyChanged() // the same verifier, another policy
	status(true)
	status(false)

	ev.broken <- errors.New("containerd restarted")
	<-ev.watching
	status(true)
	status(true)
	ev.goLive <- struct{}{}
	<-ev.lived // the watch is back
	status(true)
	status(false)
}

// With the gate, an image reported absent is kept absent too, until a change.
func TestImageStatusKeptHidden(t *testing.T) {
	t.Parallel()
	const ref = "registry.example.com/team/app:v1"
	present := &runtimeapi.ImageStatusResponse{Image: &runtimeapi.Image{Id: imageID, RepoTags: []string{ref}, RepoDigests: []string{"registry.example.com/team/app@" + tagDigest.String()}}}
	rt := &fakeRuntime{statusByImage: map[string]*runtimeapi.ImageStatusResponse{ref: present}}
	v := &fakeVerifier{known: func(verify.Request) (verify.Decision, error) {
		return verify.Decision{Rule: "internal-apps", Reason: "never verified"}, nil
	}}
	e := start(t, setup{runtime: rt, verifier: v, opts: []proxy.Option{proxy.WithPresentImageChecks()}})
	ev := newFakeEvents()
	ev.goLive <- struct{}{}
	go e.proxy.WatchImages(t.Context(), ev)
	<-ev.lived
	for range 3 {
		resp, err := e.imageClient().ImageStatus(t.Context(), &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
		if err != nil || resp.GetImage() != nil {
			t.Fatalf("ImageStatus = %v, %v; want the image reported absent", resp, err)
		}
	}
	if n, k := len(rt.callsTo("ImageStatus")), len(v.seenKnown()); n != 1 || k != 1 {
		t.Errorf("3 ImageStatus asked the runtime %d times and the verifier %d, want once each", n, k)
	}
}
