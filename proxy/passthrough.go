package proxy

import (
	"context"
	"errors"
	"io"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// frame is one gRPC message carried without decoding it.
type frame struct{ b []byte }

// codec moves frames as raw bytes and everything else as protobuf, so one server can forward
// any method untouched and still decode the few it intercepts.
type codec struct{}

var _ encoding.Codec = codec{}

func (codec) Name() string { return "proto" }

func (codec) Marshal(v any) ([]byte, error) {
	if f, ok := v.(*frame); ok {
		return f.b, nil
	}
	return proto.Marshal(v.(proto.Message))
}

func (codec) Unmarshal(data []byte, v any) error {
	if f, ok := v.(*frame); ok {
		f.b = data
		return nil
	}
	return proto.Unmarshal(data, v.(proto.Message))
}

// known holds the CRI methods of this build, each true when unary. Unary ones take a cheaper
// path than a stream; RuntimeService methods this build does not know are relayed as streams.
var known = func() map[string]bool {
	m := map[string]bool{}
	for _, svc := range []grpc.ServiceDesc{runtimeapi.RuntimeService_ServiceDesc, runtimeapi.ImageService_ServiceDesc} {
		for _, md := range svc.Methods {
			m["/"+svc.ServiceName+"/"+md.MethodName] = true
		}
		for _, sd := range svc.Streams {
			m["/"+svc.ServiceName+"/"+sd.StreamName] = false
		}
	}
	return m
}()

// forwardUnary relays one request and its reply.
func (p *Proxy) forwardUnary(ctx context.Context, method string, in grpc.ServerStream) error {
	var req frame
	if err := in.RecvMsg(&req); err != nil {
		return err
	}
	resp, err := p.invokeRaw(ctx, method, &req)
	if err != nil {
		return err
	}
	if method == runtimeapi.ImageService_RemoveImage_FullMethodName {
		// containerd's CRI has dropped the image before it answers; its event may reach
		// pullgate only after the caller's next ImageStatus.
		p.statuses.drop()
	}
	return in.SendMsg(resp)
}

// bidi describes every method as a bidirectional stream: a unary call is a stream of one
// message each way, so the same code forwards unary and streaming methods alike.
var bidi = &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}

// forward relays a call the proxy does not intercept to the runtime, as bytes, with its
// metadata, and returns the runtime's status unchanged. It needs no code per method, so
// methods added to the CRI later pass through too.
func (p *Proxy) forward(_ any, in grpc.ServerStream) error {
	method, _ := grpc.MethodFromServerStream(in)
	unary, ok := known[method]
	switch {
	case ok:
	case strings.HasPrefix(method, "/runtime.v1.ImageService/"):
		// An image method added to the CRI later may pull, or make a pulled image usable:
		// passed through, it would bypass the gate.
		return status.Errorf(codes.Unimplemented, "pullgate: %s is an ImageService method this pullgate does not know, and it is refused rather than let past the image gate; upgrade pullgate", method)
	case !strings.HasPrefix(method, "/runtime.v1.RuntimeService/"):
		// The runtime's socket serves more than the CRI (containerd's images, content and
		// transfer services, the old v1alpha2 CRI): through pullgate, those would bypass the gate.
		return status.Errorf(codes.Unimplemented, "pullgate: %s is not a CRI v1 method; pullgate serves only runtime.v1.RuntimeService and runtime.v1.ImageService", method)
	}
	if unary {
		return p.forwardUnary(in.Context(), method, in)
	}
	out, err := p.upstream.NewStream(outgoing(in.Context()), bidi, method, grpc.ForceCodec(codec{}))
	if err != nil {
		return err
	}

	// Requests flow in on their own goroutine; replies are relayed here until the runtime ends
	// the call. If the caller goes away, its context cancels the upstream stream too.
	go func() {
		for {
			var f frame
			if err := in.RecvMsg(&f); err != nil {
				if errors.Is(err, io.EOF) {
					out.CloseSend()
				}
				return
			}
			if out.SendMsg(&f) != nil {
				return // the runtime ended the call; its status comes from RecvMsg below
			}
		}
	}()

	headerSent := false
	for {
		var f frame
		err := out.RecvMsg(&f)
		if !headerSent {
			// The header comes before the first message, or alone before an error.
			if md, herr := out.Header(); herr == nil && len(md) > 0 {
				if err := in.SetHeader(md); err != nil {
					return err
				}
			}
			headerSent = true
		}
		if err != nil {
			in.SetTrailer(out.Trailer())
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if err := in.SendMsg(&f); err != nil {
			return err
		}
	}
}
