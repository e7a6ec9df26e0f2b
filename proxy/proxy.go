// Package proxy serves the CRI in front of the node's runtime: it forwards every call untouched,
// except PullImage, which it pins to a digest the node's policy allows before the runtime sees it.
package proxy

import (
	"context"
	"log/slog"
	"slices"
	"sync/atomic"

	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/pullgate/pullgate/verify"
	"github.com/pullgate/pullgate/verify/auth"
	"github.com/pullgate/pullgate/verify/flight"
)

// MaxMessageSize is the gRPC message limit both ways, as kubelet and containerd use.
const MaxMessageSize = 16 << 20

// Resolver turns a tag into the digest it points to.
type Resolver = verify.TagResolver

// Keyring finds node credentials for an image ("registry/repository").
type Keyring interface {
	Lookup(image string) ([]auth.Credential, error)
}

// Verifier decides whether a digest may be pulled and, from what the node knows without asking
// the registry, whether an image already in the runtime's store may be used.
type Verifier interface {
	verify.Decider
	Known(ctx context.Context, req verify.Request) (verify.Decision, error)
	// Served records that the registry served img at dg to cred; ServedTo tells whether it
	// served it to one of creds (or to anyone), for a pull answered while it is down.
	Served(img verify.Image, dg digest.Digest, cred auth.Credential)
	ServedTo(img verify.Image, dg digest.Digest, creds []auth.Credential) bool
}

// Tagger records name -> the image the runtime stored for pinned, in the runtime's image store.
type Tagger interface {
	Tag(ctx context.Context, name, pinned string) error
}

// ImagePuller is the part of the runtime's image service the proxy calls itself.
type ImagePuller interface {
	PullImage(ctx context.Context, in *runtimeapi.PullImageRequest, opts ...grpc.CallOption) (*runtimeapi.PullImageResponse, error)
}

// Proxy is the CRI server in front of the runtime.
type Proxy struct {
	upstream    grpc.ClientConnInterface
	images      ImagePuller
	imageClient runtimeapi.ImageServiceClient
	resolver    Resolver
	verifier    func() Verifier
	tagger      Tagger
	// holder, when set, lets a pull of an image the runtime already holds unpacked be answered
	// without the runtime.
	holder Holder

	// keyring holds the node credentials; SetKeyring turns them on and off while pulls run.
	keyring nodeKeyring
	// gate checks images already in the store at ImageStatus and CreateContainer.
	gate bool
	// warnings records what an admin must see on the Node (SetNodeWarnings); nil until set.
	warnings atomic.Pointer[func(reason, message string)]
	// statuses keeps ImageStatus replies while WatchImages runs.
	statuses *statuses
	// runtimePulls shares the runtime's pull among concurrent pulls of one digest.
	runtimePulls flight.Group[runtimePull, *runtimeapi.PullImageResponse]
	logger       *slog.Logger
	metrics      *Metrics
}

// Option configures a Proxy.
type Option func(*Proxy)

// WithKeyring sets the node credentials used when kubelet sends none.
func WithKeyring(k Keyring) Option { return func(p *Proxy) { p.SetKeyring(k) } }

// SetKeyring replaces the node credentials from the next pull on, safely while pulls run; nil
// stops their use (a reloaded auth.nodeCredentials: never).
func (p *Proxy) SetKeyring(k Keyring) { p.keyring.current.Store(&k) }

// nodeKeyring is the keyring in use, or none.
type nodeKeyring struct{ current atomic.Pointer[Keyring] }

var _ Keyring = (*nodeKeyring)(nil)

func (n *nodeKeyring) Lookup(image string) ([]auth.Credential, error) {
	k := n.current.Load()
	if k == nil || *k == nil {
		return nil, nil
	}
	return (*k).Lookup(image)
}

// SetNodeWarnings has f record, from now on, what an admin must see without the node's logs
// (Events on the Node): a container refused at CreateContainer.
func (p *Proxy) SetNodeWarnings(f func(reason, message string)) { p.warnings.Store(&f) }

func (p *Proxy) warn(reason, message string) {
	if f := p.warnings.Load(); f != nil && *f != nil {
		(*f)(reason, message)
	}
}

// WithPresentImageChecks checks images already in the runtime's store, however they got there:
// ImageStatus reports an image absent unless the policy allows its digest in every namespace,
// so that kubelet pulls it through pullgate, and CreateContainer refuses a container whose
// image the pod's rule does not allow.
func WithPresentImageChecks() Option { return func(p *Proxy) { p.gate = true } }

// WithHeldImages answers a pull by tag whose digest, resolved and allowed, the runtime already
// holds unpacked (h says so) with that image, without asking the runtime to pull it again.
func WithHeldImages(h Holder) Option { return func(p *Proxy) { p.holder = h } }

// WithLogger sets the logger for decisions.
func WithLogger(l *slog.Logger) Option { return func(p *Proxy) { p.logger = l } }

// WithMetrics records requests and decisions in m.
func WithMetrics(m *Metrics) Option { return func(p *Proxy) { p.metrics = m } }

// New returns a proxy that forwards to upstream. verifier is called on every pull, so that a
// reloaded policy applies to the next pull.
func New(upstream grpc.ClientConnInterface, resolver Resolver, verifier func() Verifier, tagger Tagger, opts ...Option) *Proxy {
	p := &Proxy{
		upstream:    upstream,
		images:      runtimeapi.NewImageServiceClient(upstream),
		imageClient: runtimeapi.NewImageServiceClient(upstream),
		resolver:    resolver,
		verifier:    verifier,
		tagger:      tagger,
		logger:      slog.Default(),
		statuses:    newStatuses(statusMaxAge, statusEntries),
	}
	for _, o := range opts {
		o(p)
	}
	return p
}

// ServerOptions are the gRPC server options the proxy needs: its codec, the message limits,
// passthrough of every method it does not intercept, and metrics.
func (p *Proxy) ServerOptions() []grpc.ServerOption {
	opts := []grpc.ServerOption{
		grpc.ForceServerCodec(codec{}),
		grpc.MaxRecvMsgSize(MaxMessageSize),
		grpc.MaxSendMsgSize(MaxMessageSize),
		grpc.UnknownServiceHandler(p.forward),
	}
	if p.metrics != nil {
		opts = append(opts, grpc.ChainUnaryInterceptor(p.metrics.unary), grpc.ChainStreamInterceptor(p.metrics.stream))
	}
	return opts
}

// Register adds the intercepted methods to s. Every other method of every service reaches
// the runtime through the unknown-service handler.
func (p *Proxy) Register(s *grpc.Server) {
	images := imageServiceDesc
	images.Methods = append(slices.Clone(images.Methods), rawMethod("ImageStatus", p.imageStatus, images.ServiceName))
	s.RegisterService(&images, p)
	if !p.gate {
		return
	}
	s.RegisterService(&grpc.ServiceDesc{
		ServiceName: "runtime.v1.RuntimeService",
		HandlerType: (*any)(nil),
		Methods:     []grpc.MethodDesc{rawMethod("CreateContainer", p.createContainer, "runtime.v1.RuntimeService")},
		Metadata:    "api.proto",
	}, p)
}

type pullServer interface {
	PullImage(context.Context, *runtimeapi.PullImageRequest) (*runtimeapi.PullImageResponse, error)
}

var _ pullServer = (*Proxy)(nil)

// imageServiceDesc holds only the intercepted ImageService method; gRPC sends the service's
// other methods to the unknown-service handler.
var imageServiceDesc = grpc.ServiceDesc{
	ServiceName: "runtime.v1.ImageService",
	HandlerType: (*pullServer)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "PullImage",
		Handler: func(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
			in := new(runtimeapi.PullImageRequest)
			if err := dec(in); err != nil {
				return nil, err
			}
			if interceptor == nil {
				return srv.(pullServer).PullImage(ctx, in)
			}
			info := &grpc.UnaryServerInfo{Server: srv, FullMethod: runtimeapi.ImageService_PullImage_FullMethodName}
			return interceptor(ctx, in, info, func(ctx context.Context, req any) (any, error) {
				return srv.(pullServer).PullImage(ctx, req.(*runtimeapi.PullImageRequest))
			})
		},
	}},
	Metadata: "api.proto",
}
