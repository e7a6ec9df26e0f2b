package proxy

import (
	"context"
	"fmt"

	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/pullgate/pullgate/verify"
)

// kubelet calls PullImage only when ImageStatus says the image is absent, so an image that
// reached the runtime's store some other way (pre-pulled into the node's disk image, imported
// with ctr, pulled before pullgate ran, or for a namespace with a laxer rule) would run
// unchecked. The gate closes that at two points: ImageStatus reports such an image absent, so
// that kubelet pulls it through pullgate; and CreateContainer, when the runtime service comes
// through pullgate too, refuses a container whose image the pod's rule does not allow.

// ReasonContainerRefused is the reason of the Node Event for a container refused at
// CreateContainer.
const ReasonContainerRefused = "ContainerRefused"

const (
	verdictPresent = "present"
	// verdictHidden is an image in the store that ImageStatus reported absent.
	verdictHidden = "hidden"
)

// imageStatus answers ImageStatus as the runtime does, from the replies kept since the last
// image event when it can. With the gate, an image whose digest the policy does not allow in
// every namespace is reported absent, as a missing image is: an empty reply.
func (p *Proxy) imageStatus(ctx context.Context, raw *frame) (any, error) {
	v := p.verifier()
	key := string(raw.b)
	kept, gen, ok := p.statuses.get(key, v)
	if ok {
		p.countStatus("cache")
		if kept.verdict != "" {
			p.countStored("ImageStatus", kept.verdict, kept.rule)
		}
		return &frame{kept.reply}, nil
	}
	p.countStatus("runtime")
	resp, err := p.invokeRaw(ctx, runtimeapi.ImageService_ImageStatus_FullMethodName, raw)
	if err != nil {
		return nil, err
	}
	if !p.gate {
		p.statuses.put(gen, key, statusEntry{reply: resp.b, verifier: v})
		return resp, nil
	}
	var st runtimeapi.ImageStatusResponse
	if err := proto.Unmarshal(resp.b, &st); err != nil {
		return nil, status.Errorf(codes.Internal, "pullgate: runtime's ImageStatus reply: %v", err)
	}
	if st.GetImage() == nil {
		p.statuses.put(gen, key, statusEntry{reply: resp.b, verifier: v})
		return resp, nil
	}
	var req runtimeapi.ImageStatusRequest
	if err := proto.Unmarshal(raw.b, &req); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "pullgate: ImageStatus request: %v", err)
	}
	ref := req.GetImage().GetImage()
	stored := parseStored(st.GetImage())
	d, err := p.decideStored(ctx, v, stored.namesFor(ref), stored, verify.Request{AllNamespaces: true})
	if err != nil {
		// The node's state could not be read: fail closed, kubelet then pulls through pullgate.
		// Not kept: the next ImageStatus tries again.
		p.logger.Error("image reported absent: its decision could not be read", "image", ref, "error", err)
		p.countStored("ImageStatus", verdictHidden, "")
		return &runtimeapi.ImageStatusResponse{}, nil
	}
	if !d.Allowed {
		p.logger.Info("image reported absent: not verified under the current policy, so kubelet pulls it through pullgate",
			"image", ref, "rule", d.Rule, "reason", d.Reason)
		p.countStored("ImageStatus", verdictHidden, d.Rule)
		p.statuses.put(gen, key, statusEntry{reply: []byte{}, verifier: v, verdict: verdictHidden, rule: d.Rule})
		return &runtimeapi.ImageStatusResponse{}, nil
	}
	p.countStored("ImageStatus", verdictPresent, d.Rule)
	p.statuses.put(gen, key, statusEntry{reply: resp.b, verifier: v, verdict: verdictPresent, rule: d.Rule})
	return resp, nil
}

// createContainer forwards CreateContainer only when the container's image is allowed for the
// pod's namespace by what the node knows. The runtime never sees a refused request.
func (p *Proxy) createContainer(ctx context.Context, raw *frame) (any, error) {
	var req runtimeapi.CreateContainerRequest
	if err := proto.Unmarshal(raw.b, &req); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "pullgate: CreateContainer request: %v", err)
	}
	meta := req.GetSandboxConfig().GetMetadata()
	log := p.logger.With("namespace", meta.GetNamespace(), "pod", meta.GetName(), "container", req.GetConfig().GetMetadata().GetName())
	base := verify.Request{Namespace: meta.GetNamespace(), AllNamespaces: meta.GetNamespace() == ""}
	// The container's image, and the images it mounts as volumes.
	specs := []*runtimeapi.ImageSpec{req.GetConfig().GetImage()}
	for _, m := range req.GetConfig().GetMounts() {
		if m.GetImage() != nil {
			specs = append(specs, m.GetImage())
		}
	}
	var d storedDecision
	for _, spec := range specs {
		st, err := p.imageClient.ImageStatus(outgoing(ctx), &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: spec.GetImage()}})
		if err != nil {
			return nil, err // the runtime's own error
		}
		if st.GetImage() == nil {
			// Not in the store: the runtime refuses the container itself, with its own message.
			continue
		}
		// kubelet names the image by ID and tells the name the pod asked for; that name's
		// rule decides.
		ref := spec.GetUserSpecifiedImage()
		if ref == "" {
			ref = spec.GetImage()
		}
		stored := parseStored(st.GetImage())
		d, err = p.decideStored(ctx, p.verifier(), stored.namesFor(ref), stored, base)
		if err != nil {
			log.Error("container refused: its image's decision could not be read", "image", spec.GetImage(), "error", err)
			p.countStored("CreateContainer", verdictDenied, "")
			return nil, status.Errorf(codes.Unknown, "SignatureValidationFailed: pullgate: %s could not be checked: %v", spec.GetImage(), err)
		}
		if !d.Allowed {
			log.Warn("container refused", "image", d.image, "rule", d.Rule, "verdict", verdictDenied, "reason", d.Reason)
			p.countStored("CreateContainer", verdictDenied, d.Rule)
			p.warn(ReasonContainerRefused, fmt.Sprintf("container %s of pod %s/%s refused: %s denied by policy %q: %s",
				req.GetConfig().GetMetadata().GetName(), meta.GetNamespace(), meta.GetName(), d.image, d.Rule, d.Reason))
			return nil, status.Errorf(codes.Unknown, "SignatureValidationFailed: pullgate: %s denied by policy %q: %s", d.image, d.Rule, d.Reason)
		}
	}
	p.countStored("CreateContainer", verdictAllowed, d.Rule)
	return p.invokeRaw(ctx, runtimeapi.RuntimeService_CreateContainer_FullMethodName, raw)
}

// storedDecision is a decision on an image in the store, and the name@digest it was made for.
type storedDecision struct {
	verify.Decision
	image string
}

// decideStored asks the verifier about each name's digests in the store; the first allowed
// decides, else the first refusal is returned. base carries the namespace to decide for.
func (p *Proxy) decideStored(ctx context.Context, v Verifier, names []verify.Image, st storedImage, base verify.Request) (storedDecision, error) {
	var refused *storedDecision
	for _, img := range names {
		digests := st.digestsOf(img)
		if len(digests) == 0 {
			digests = []digest.Digest{""} // imported without a registry digest
		}
		for _, dg := range digests {
			req := base
			req.Image, req.Digest = img, dg
			d, err := v.Known(ctx, req)
			if err != nil {
				return storedDecision{}, err
			}
			sd := storedDecision{d, img.Name() + "@" + dg.String()}
			if dg == "" {
				sd.image = img.String()
			}
			if d.Allowed {
				return sd, nil
			}
			if refused == nil {
				refused = &sd
			}
		}
	}
	if refused == nil {
		return storedDecision{Decision: verify.Decision{Reason: "the image has no name in the runtime's store to check it by"}, image: st.id}, nil
	}
	return *refused, nil
}

// invokeRaw forwards one unary call as bytes, with the caller's metadata, and relays the
// runtime's header and trailer. The header is set, not sent: it leaves with the reply, in one
// write.
func (p *Proxy) invokeRaw(ctx context.Context, method string, req *frame) (*frame, error) {
	var (
		resp            frame
		header, trailer metadata.MD
	)
	err := p.upstream.Invoke(outgoing(ctx), method, req, &resp, grpc.ForceCodec(codec{}), grpc.Header(&header), grpc.Trailer(&trailer))
	if len(header) > 0 {
		grpc.SetHeader(ctx, header)
	}
	if len(trailer) > 0 {
		grpc.SetTrailer(ctx, trailer)
	}
	if err != nil {
		return nil, err
	}
	return &resp, nil
}

// outgoing passes the caller's metadata on to the runtime; gRPC itself drops the headers each
// hop sets for itself (content-type, user-agent, ...).
func outgoing(ctx context.Context) context.Context {
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		return metadata.NewOutgoingContext(ctx, md)
	}
	return ctx
}

func (p *Proxy) countStatus(source string) {
	if p.metrics != nil {
		p.metrics.statuses.WithLabelValues(source).Inc()
	}
}

func (p *Proxy) countStored(method, verdict, rule string) {
	if p.metrics != nil {
		p.metrics.stored.WithLabelValues(method, verdict, rule).Inc()
	}
}

// rawMethod describes a unary method whose request reaches handler as bytes, and whose reply
// may be bytes (a *frame) or a message.
func rawMethod(name string, handler func(context.Context, *frame) (any, error), service string) grpc.MethodDesc {
	full := fmt.Sprintf("/%s/%s", service, name)
	return grpc.MethodDesc{
		MethodName: name,
		Handler: func(_ any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
			in := new(frame)
			if err := dec(in); err != nil {
				return nil, err
			}
			if interceptor == nil {
				return handler(ctx, in)
			}
			return interceptor(ctx, in, &grpc.UnaryServerInfo{FullMethod: full}, func(ctx context.Context, req any) (any, error) {
				return handler(ctx, req.(*frame))
			})
		},
	}
}
