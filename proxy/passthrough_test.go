package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func TestPassthroughUnary(t *testing.T) {
	t.Parallel()
	image := &runtimeapi.Image{
		Id:          imageID,
		RepoTags:    []string{"docker.io/library/nginx:1.27"},
		RepoDigests: []string{"docker.io/library/nginx@" + tagDigest.String()},
		Size:        123456,
		Uid:         &runtimeapi.Int64Value{Value: 101},
		Spec:        &runtimeapi.ImageSpec{Image: "docker.io/library/nginx:1.27", Annotations: map[string]string{"a": "b"}},
		Pinned:      true,
	}
	tests := []struct {
		name   string
		method string
		// call makes the call with kubelet's client and returns the reply as a message.
		call  func(t *testing.T, e *env) (proto.Message, error)
		req   proto.Message
		reply proto.Message
	}{{
		name:   "ImageStatus",
		method: "ImageStatus",
		call: func(t *testing.T, e *env) (proto.Message, error) {
			return e.images(t).ImageStatus(t.Context(), &runtimeapi.ImageSpec{Image: "nginx:1.27", Annotations: map[string]string{"k": "v"}}, true)
		},
		req:   &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: "nginx:1.27", Annotations: map[string]string{"k": "v"}}, Verbose: true},
		reply: &runtimeapi.ImageStatusResponse{Image: image, Info: map[string]string{"info": `{"chainID":"x"}`}},
	}, {
		name:   "ListImages",
		method: "ListImages",
		call: func(t *testing.T, e *env) (proto.Message, error) {
			imgs, err := e.images(t).ListImages(t.Context(), &runtimeapi.ImageFilter{Image: &runtimeapi.ImageSpec{Image: "nginx"}})
			return &runtimeapi.ListImagesResponse{Images: imgs}, err
		},
		req:   &runtimeapi.ListImagesRequest{Filter: &runtimeapi.ImageFilter{Image: &runtimeapi.ImageSpec{Image: "nginx"}}},
		reply: &runtimeapi.ListImagesResponse{Images: []*runtimeapi.Image{image, {Id: "sha256:" + strings.Repeat("d", 64), Size: 1}}},
	}, {
		name:   "RemoveImage",
		method: "RemoveImage",
		call: func(t *testing.T, e *env) (proto.Message, error) {
			return &runtimeapi.RemoveImageResponse{}, e.images(t).RemoveImage(t.Context(), &runtimeapi.ImageSpec{Image: imageID})
		},
		req:   &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: imageID}},
		reply: &runtimeapi.RemoveImageResponse{},
	}, {
		name:   "ImageFsInfo",
		method: "ImageFsInfo",
		call: func(t *testing.T, e *env) (proto.Message, error) {
			return e.images(t).ImageFsInfo(t.Context())
		},
		req: &runtimeapi.ImageFsInfoRequest{},
		reply: &runtimeapi.ImageFsInfoResponse{
			ImageFilesystems: []*runtimeapi.FilesystemUsage{{
				Timestamp:  1700000000,
				FsId:       &runtimeapi.FilesystemIdentifier{Mountpoint: "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs"},
				UsedBytes:  &runtimeapi.UInt64Value{Value: 1 << 30},
				InodesUsed: &runtimeapi.UInt64Value{Value: 4242},
			}},
		},
	}, {
		name:   "Version",
		method: "Version",
		call: func(t *testing.T, e *env) (proto.Message, error) {
			return e.runtimeService(t).Version(t.Context(), "v1")
		},
		req:   &runtimeapi.VersionRequest{Version: "v1"},
		reply: &runtimeapi.VersionResponse{Version: "0.1.0", RuntimeName: "containerd", RuntimeVersion: "v2.4.2", RuntimeApiVersion: "v1"},
	}, {
		name:   "Status",
		method: "Status",
		call: func(t *testing.T, e *env) (proto.Message, error) {
			return e.runtimeService(t).Status(t.Context(), true)
		},
		req: &runtimeapi.StatusRequest{Verbose: true},
		reply: &runtimeapi.StatusResponse{
			Status: &runtimeapi.RuntimeStatus{Conditions: []*runtimeapi.RuntimeCondition{
				{Type: runtimeapi.RuntimeReady, Status: true},
				{Type: runtimeapi.NetworkReady, Status: false, Reason: "NetworkPluginNotReady", Message: "cni config uninitialized"},
			}},
			Info: map[string]string{"config": `{"sandboxImage":"registry.k8s.io/pause:3.10"}`},
		},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rt := &fakeRuntime{replies: map[string]proto.Message{tc.method: tc.reply}}
			e := start(t, setup{runtime: rt})
			got, err := tc.call(t, e)
			if err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(got, tc.reply) {
				t.Errorf("reply = %v, want %v", got, tc.reply)
			}
			calls := rt.callsTo(tc.method)
			if len(calls) == 0 {
				t.Fatalf("runtime never saw %s", tc.method)
			}
			// kubelet's client checks the connection with ImageFsInfo or Version first: the last call is ours.
			if last := calls[len(calls)-1].req; !proto.Equal(last, tc.req) {
				t.Errorf("runtime got %v, want %v", last, tc.req)
			}
		})
	}
}

func TestPassthroughStream(t *testing.T) {
	t.Parallel()
	events := []*runtimeapi.ContainerEventResponse{
		{ContainerId: "c1", ContainerEventType: runtimeapi.ContainerEventType_CONTAINER_CREATED_EVENT, CreatedAt: 1},
		{ContainerId: "c1", ContainerEventType: runtimeapi.ContainerEventType_CONTAINER_STARTED_EVENT, CreatedAt: 2,
			PodSandboxStatus: &runtimeapi.PodSandboxStatus{Id: "s1", Metadata: &runtimeapi.PodSandboxMetadata{Name: "web-0", Namespace: "prod"}}},
		{ContainerId: "c2", ContainerEventType: runtimeapi.ContainerEventType_CONTAINER_STOPPED_EVENT, CreatedAt: 3},
		{ContainerId: "c2", ContainerEventType: runtimeapi.ContainerEventType_CONTAINER_DELETED_EVENT, CreatedAt: 4},
	}
	tests := []struct {
		name    string
		end     error
		wantErr func(error) bool
	}{
		{name: "ends cleanly", wantErr: func(err error) bool { return errors.Is(err, io.EOF) }},
		{
			name: "ends with the runtime's error",
			end:  status.Error(codes.Aborted, "event stream reset"),
			wantErr: func(err error) bool {
				s := status.Convert(err)
				return s.Code() == codes.Aborted && s.Message() == "event stream reset"
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rt := &fakeRuntime{events: events, fail: func(m string, _ proto.Message) error {
				if m == "GetContainerEvents" {
					return tc.end
				}
				return nil
			}}
			e := start(t, setup{runtime: rt})
			ch := make(chan *runtimeapi.ContainerEventResponse, len(events)+1)
			err := e.runtimeService(t).GetContainerEvents(t.Context(), ch, nil)
			if !tc.wantErr(err) {
				t.Errorf("GetContainerEvents error = %v", err)
			}
			close(ch)
			var got []*runtimeapi.ContainerEventResponse
			for ev := range ch {
				got = append(got, ev)
			}
			if len(got) != len(events) {
				t.Fatalf("got %d events, want %d", len(got), len(events))
			}
			for i := range events {
				if !proto.Equal(got[i], events[i]) {
					t.Errorf("event %d = %v, want %v", i, got[i], events[i])
				}
			}
		})
	}
}

func TestPassthroughErrorStatus(t *testing.T) {
	t.Parallel()
	st, err := status.New(codes.FailedPrecondition, "image \"nginx\" is in use by container c1").
		WithDetails(wrapperspb.String("c1"), &runtimeapi.ImageSpec{Image: "nginx"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		method string
		call   func(ctx context.Context, e *env) error
	}{{
		name:   "unary",
		method: "RemoveImage",
		call: func(ctx context.Context, e *env) error {
			_, err := e.imageClient().RemoveImage(ctx, &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: "nginx"}})
			return err
		},
	}, {
		name:   "server stream",
		method: "GetContainerEvents",
		call: func(ctx context.Context, e *env) error {
			s, err := e.runtimeClient().GetContainerEvents(ctx, &runtimeapi.GetEventsRequest{})
			if err != nil {
				return err
			}
			for {
				if _, err := s.Recv(); err != nil {
					return err
				}
			}
		},
	}, {
		name:   "unknown method",
		method: "SomeFutureMethod",
		call: func(ctx context.Context, e *env) error {
			return e.conn.Invoke(ctx, futureMethod, wrapperspb.String("x"), new(wrapperspb.StringValue))
		},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rt := &fakeRuntime{fail: func(m string, _ proto.Message) error {
				if m == tc.method {
					return st.Err()
				}
				return nil
			}}
			e := start(t, setup{runtime: rt})
			err := tc.call(t.Context(), e)
			if got := status.Convert(err).Proto(); !proto.Equal(got, st.Proto()) {
				t.Errorf("status = %v, want %v", got, st.Proto())
			}
		})
	}

	t.Run("method the runtime does not implement", func(t *testing.T) {
		t.Parallel()
		e := start(t, setup{})
		// A server stream reports its status on the first Recv.
		s, err := e.imageClient().StreamImages(t.Context(), &runtimeapi.StreamImagesRequest{})
		if err == nil {
			_, err = s.Recv()
		}
		if status.Code(err) != codes.Unimplemented || !strings.Contains(status.Convert(err).Message(), "StreamImages") {
			t.Errorf("error = %v, want the runtime's Unimplemented", err)
		}
	})
}

func TestPassthroughMetadata(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		fail error
	}{
		{name: "reply"},
		{name: "error", fail: status.Error(codes.NotFound, "no such image")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rt := &fakeRuntime{
				header:  metadata.Pairs("x-runtime-header", "h1"),
				trailer: metadata.Pairs("x-runtime-trailer", "t1", "x-runtime-trailer", "t2"),
				fail:    func(string, proto.Message) error { return tc.fail },
				replies: map[string]proto.Message{"ImageStatus": &runtimeapi.ImageStatusResponse{}},
			}
			e := start(t, setup{runtime: rt})
			ctx := metadata.AppendToOutgoingContext(t.Context(), "x-request-id", "r-1", "x-multi", "a", "x-multi", "b")
			var header, trailer metadata.MD
			_, err := e.imageClient().ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: "nginx"}},
				grpc.Header(&header), grpc.Trailer(&trailer))
			if status.Code(err) != status.Code(tc.fail) {
				t.Fatalf("error = %v, want %v", err, tc.fail)
			}
			calls := rt.callsTo("ImageStatus")
			if len(calls) != 1 {
				t.Fatalf("runtime saw %d calls", len(calls))
			}
			md := calls[0].md
			if got := md.Get("x-request-id"); fmt.Sprint(got) != "[r-1]" {
				t.Errorf("runtime got x-request-id %q", got)
			}
			if got := md.Get("x-multi"); fmt.Sprint(got) != "[a b]" {
				t.Errorf("runtime got x-multi %q", got)
			}
			if got := header.Get("x-runtime-header"); fmt.Sprint(got) != "[h1]" {
				t.Errorf("caller got header %v", header)
			}
			if got := trailer.Get("x-runtime-trailer"); fmt.Sprint(got) != "[t1 t2]" {
				t.Errorf("caller got trailer %v", trailer)
			}
		})
	}

	t.Run("deadline", func(t *testing.T) {
		t.Parallel()
		rt := &fakeRuntime{}
		e := start(t, setup{runtime: rt})
		// kubelet's client sets a deadline on every call; the runtime must see it.
		if _, err := e.images(t).ImageFsInfo(t.Context()); err != nil {
			t.Fatal(err)
		}
		calls := rt.callsTo("ImageFsInfo")
		if !calls[len(calls)-1].deadline {
			t.Error("runtime saw no deadline")
		}
	})

	streams := []struct {
		name   string
		events []*runtimeapi.ContainerEventResponse
		fail   error
		// call makes a call through the proxy's stream relay and returns how it ended.
		call func(ctx context.Context, e *env) (header, trailer metadata.MD, err error)
	}{{
		name:   "stream",
		events: []*runtimeapi.ContainerEventResponse{{ContainerId: "c1"}},
		call:   containerEvents,
	}, {
		name: "stream ending in an error before any message",
		fail: status.Error(codes.Unavailable, "shutting down"),
		call: containerEvents,
	}, {
		name: "unknown method",
		call: future,
	}, {
		name: "unknown method ending in an error",
		fail: status.Error(codes.NotFound, "no such thing"),
		call: future,
	}}
	for _, tc := range streams {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rt := &fakeRuntime{
				header:  metadata.Pairs("x-runtime-header", "h1"),
				trailer: metadata.Pairs("x-runtime-trailer", "t1"),
				events:  tc.events,
				fail:    func(string, proto.Message) error { return tc.fail },
			}
			e := start(t, setup{runtime: rt})
			ctx := metadata.AppendToOutgoingContext(t.Context(), "x-request-id", "r-2")
			header, trailer, err := tc.call(ctx, e)
			if status.Code(err) != status.Code(tc.fail) {
				t.Fatalf("call ended with %v, want %v", err, tc.fail)
			}
			if got := header.Get("x-runtime-header"); fmt.Sprint(got) != "[h1]" {
				t.Errorf("caller got header %v", header)
			}
			if got := trailer.Get("x-runtime-trailer"); fmt.Sprint(got) != "[t1]" {
				t.Errorf("caller got trailer %v", trailer)
			}
			var got []string
			for _, m := range []string{"GetContainerEvents", "SomeFutureMethod"} {
				for _, c := range rt.callsTo(m) {
					got = append(got, c.md.Get("x-request-id")...)
				}
			}
			if fmt.Sprint(got) != "[r-2]" {
				t.Errorf("runtime got x-request-id %q", got)
			}
		})
	}
}

func containerEvents(ctx context.Context, e *env) (metadata.MD, metadata.MD, error) {
	s, err := e.runtimeClient().GetContainerEvents(ctx, &runtimeapi.GetEventsRequest{})
	if err != nil {
		return nil, nil, err
	}
	for err == nil {
		_, err = s.Recv()
	}
	if errors.Is(err, io.EOF) {
		err = nil
	}
	header, _ := s.Header()
	return header, s.Trailer(), err
}

func future(ctx context.Context, e *env) (metadata.MD, metadata.MD, error) {
	var header, trailer metadata.MD
	err := e.conn.Invoke(ctx, futureMethod, wrapperspb.String("x"), new(wrapperspb.StringValue), grpc.Header(&header), grpc.Trailer(&trailer))
	return header, trailer, err
}

func TestPassthroughUnknownMethod(t *testing.T) {
	t.Parallel()
	rt := &fakeRuntime{}
	e := start(t, setup{runtime: rt})
	out := new(wrapperspb.StringValue)
	if err := e.conn.Invoke(t.Context(), futureMethod, wrapperspb.String("hello"), out); err != nil {
		t.Fatal(err)
	}
	if out.GetValue() != "future:hello" {
		t.Errorf("reply = %q, want %q", out.GetValue(), "future:hello")
	}
	calls := rt.callsTo("SomeFutureMethod")
	if len(calls) != 1 || !proto.Equal(calls[0].req, wrapperspb.String("hello")) {
		t.Errorf("runtime got %v", calls)
	}
}

// manyImages returns a ListImages reply of at least size bytes.
func manyImages(size int) *runtimeapi.ListImagesResponse {
	resp := &runtimeapi.ListImagesResponse{}
	for i, n := 0, 0; n < size; i++ {
		img := &runtimeapi.Image{
			Id:          fmt.Sprintf("sha256:%064x", i),
			RepoTags:    []string{fmt.Sprintf("registry.example.com/team/app-%d:v1.2.3", i)},
			RepoDigests: []string{fmt.Sprintf("registry.example.com/team/app-%d@sha256:%064x", i, i)},
			Size:        uint64(i),
		}
		resp.Images = append(resp.Images, img)
		n += proto.Size(img)
	}
	return resp
}

func TestMessageSize(t *testing.T) {
	t.Parallel()
	const mib = 1 << 20
	big := manyImages(6 * mib)
	huge := manyImages(17 * mib)
	tests := []struct {
		name string
		// upstreamMax lifts the limit of the proxy's connection to the runtime, so that what
		// is checked is the proxy's own server limit.
		upstreamMax int
		run         func(t *testing.T, e *env) error
		wantCode    codes.Code
		// wantRuntime is the ListImages / ImageStatus request the runtime must see, nil for none.
		wantRuntime proto.Message
	}{{
		name: "reply over 4 MiB",
		run: func(t *testing.T, e *env) error {
			imgs, err := e.images(t).ListImages(t.Context(), nil)
			if err == nil && !proto.Equal(&runtimeapi.ListImagesResponse{Images: imgs}, big) {
				t.Errorf("got %d images, want %d", len(imgs), len(big.Images))
			}
			return err
		},
		wantRuntime: &runtimeapi.ListImagesRequest{},
	}, {
		name: "request over 4 MiB",
		run: func(t *testing.T, e *env) error {
			_, err := e.images(t).ImageStatus(t.Context(), &runtimeapi.ImageSpec{Image: "nginx", Annotations: map[string]string{"big": strings.Repeat("x", 6*mib)}}, false)
			return err
		},
		wantRuntime: &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: "nginx", Annotations: map[string]string{"big": strings.Repeat("x", 6*mib)}}},
	}, {
		name:        "reply over 16 MiB",
		upstreamMax: 64 * mib,
		run: func(t *testing.T, e *env) error {
			_, err := e.imageClient().ListImages(t.Context(), &runtimeapi.ListImagesRequest{Filter: &runtimeapi.ImageFilter{}})
			return err
		},
		wantCode:    codes.ResourceExhausted,
		wantRuntime: &runtimeapi.ListImagesRequest{Filter: &runtimeapi.ImageFilter{}},
	}, {
		name:        "request over 16 MiB",
		upstreamMax: 64 * mib,
		run: func(t *testing.T, e *env) error {
			_, err := e.imageClient().ImageStatus(t.Context(), &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: "nginx", Annotations: map[string]string{"big": strings.Repeat("x", 17*mib)}}})
			return err
		},
		wantCode: codes.ResourceExhausted,
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			reply := big
			if tc.upstreamMax > 0 {
				reply = huge
			}
			rt := &fakeRuntime{replies: map[string]proto.Message{"ListImages": reply}}
			e := start(t, setup{runtime: rt, upstreamMax: tc.upstreamMax})
			if err := tc.run(t, e); status.Code(err) != tc.wantCode {
				t.Fatalf("error = %v, want code %v", err, tc.wantCode)
			}
			var got []call
			for _, m := range []string{"ListImages", "ImageStatus"} {
				got = append(got, rt.callsTo(m)...)
			}
			switch {
			case tc.wantRuntime == nil && len(got) > 0:
				t.Errorf("runtime got %d calls, want none", len(got))
			case tc.wantRuntime != nil && (len(got) != 1 || !proto.Equal(got[0].req, tc.wantRuntime)):
				t.Errorf("runtime did not get the request unchanged (%d calls)", len(got))
			}
		})
	}
}

// An ImageService method added to the CRI after this build may pull: refused, never forwarded,
// while an unknown RuntimeService method passes (TestPassthroughUnknownMethod).
func TestPassthroughRefusesUnknownImageMethods(t *testing.T) {
	t.Parallel()
	rt := &fakeRuntime{}
	e := start(t, setup{runtime: rt})
	err := e.conn.Invoke(t.Context(), futureImageMethod, wrapperspb.String("x"), new(wrapperspb.StringValue))
	if status.Code(err) != codes.Unimplemented || !strings.Contains(err.Error(), "ImageService method this pullgate does not know") {
		t.Errorf("%s: got %v, want Unimplemented from pullgate", futureImageMethod, err)
	}
	if calls := rt.callsTo("SomeFutureMethod"); len(calls) != 0 {
		t.Errorf("runtime got %v", calls)
	}
}

// Services on the runtime's socket other than CRI v1 (containerd's own images or transfer
// services, the old v1alpha2 CRI) would bypass the gate: they are refused, never forwarded.
func TestPassthroughRefusesOtherServices(t *testing.T) {
	t.Parallel()
	rt := &fakeRuntime{}
	e := start(t, setup{runtime: rt})
	for _, method := range []string{
		"/containerd.services.images.v1.Images/Update",
		"/runtime.v1alpha2.ImageService/PullImage",
		"/runtime.v1.ImageServiceX/SomeFutureMethod",
	} {
		err := e.conn.Invoke(t.Context(), method, wrapperspb.String("x"), new(wrapperspb.StringValue))
		if status.Code(err) != codes.Unimplemented || !strings.Contains(err.Error(), "not a CRI v1 method") {
			t.Errorf("%s: got %v, want Unimplemented from pullgate", method, err)
		}
	}
	if calls := rt.callsTo("SomeFutureMethod"); len(calls) != 0 {
		t.Errorf("runtime got %v", calls)
	}
}
