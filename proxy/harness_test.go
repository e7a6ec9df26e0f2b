package proxy_test

import (
	"context"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"
	internalapi "k8s.io/cri-api/pkg/apis"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	remote "k8s.io/cri-client/pkg"

	"github.com/pullgate/pullgate/proxy"
	"github.com/pullgate/pullgate/verify"
	"github.com/pullgate/pullgate/verify/auth"
)

var (
	// tagDigest is what the fake resolver says every tag points to.
	tagDigest = digest.Digest("sha256:" + strings.Repeat("a", 64))
	// pinDigest is a digest callers name themselves.
	pinDigest = digest.Digest("sha256:" + strings.Repeat("b", 64))
	// imageID is the image_ref the fake runtime answers a pull with, as containerd does.
	imageID = "sha256:" + strings.Repeat("c", 64)
)

// futureMethod is a RuntimeService method the proxy has never heard of, futureImageMethod an
// ImageService one. The fake runtime serves both.
const (
	futureMethod      = "/runtime.v1.RuntimeService/SomeFutureMethod"
	futureImageMethod = "/runtime.v1.ImageService/SomeFutureMethod"
)

// socketDir returns a short directory for Unix sockets, whose paths are limited to 108 bytes.
func socketDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// call is one request the fake runtime received.
type call struct {
	method   string
	req      proto.Message
	md       metadata.MD
	deadline bool
}

// fakeRuntime is containerd's CRI as far as the proxy can tell. Configure it before serve.
type fakeRuntime struct {
	runtimeapi.UnimplementedImageServiceServer
	runtimeapi.UnimplementedRuntimeServiceServer

	// replies by method name ("ImageStatus"); a method without one answers an empty reply.
	replies map[string]proto.Message
	// statusByImage, when it has the image asked for, answers ImageStatus instead of replies.
	statusByImage map[string]*runtimeapi.ImageStatusResponse
	// fail, when set, returns the error a call ends with (nil: success).
	fail func(method string, req proto.Message) error
	// header and trailer are sent with every answer.
	header, trailer metadata.MD
	// events are what GetContainerEvents streams.
	events []*runtimeapi.ContainerEventResponse

	mu    sync.Mutex
	calls []call
}

func (f *fakeRuntime) record(ctx context.Context, method string, req proto.Message) error {
	md, _ := metadata.FromIncomingContext(ctx)
	_, deadline := ctx.Deadline()
	f.mu.Lock()
	f.calls = append(f.calls, call{method: method, req: proto.Clone(req), md: md.Copy(), deadline: deadline})
	f.mu.Unlock()
	if f.header != nil {
		if err := grpc.SetHeader(ctx, f.header); err != nil {
			return err
		}
	}
	if f.trailer != nil {
		grpc.SetTrailer(ctx, f.trailer)
	}
	if f.fail != nil {
		return f.fail(method, req)
	}
	return nil
}

// callsTo returns the calls of method, in order.
func (f *fakeRuntime) callsTo(method string) []call {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []call
	for _, c := range f.calls {
		if c.method == method {
			out = append(out, c)
		}
	}
	return out
}

// answer records req and returns the configured reply for method, or an empty one.
func answer[R proto.Message](ctx context.Context, f *fakeRuntime, method string, req proto.Message) (R, error) {
	var zero R
	if err := f.record(ctx, method, req); err != nil {
		return zero, err
	}
	if r, ok := f.replies[method].(R); ok {
		return r, nil
	}
	return zero.ProtoReflect().Type().New().Interface().(R), nil
}

func (f *fakeRuntime) ImageStatus(ctx context.Context, req *runtimeapi.ImageStatusRequest) (*runtimeapi.ImageStatusResponse, error) {
	if r, ok := f.statusByImage[req.GetImage().GetImage()]; ok {
		return r, f.record(ctx, "ImageStatus", req)
	}
	return answer[*runtimeapi.ImageStatusResponse](ctx, f, "ImageStatus", req)
}

func (f *fakeRuntime) ListImages(ctx context.Context, req *runtimeapi.ListImagesRequest) (*runtimeapi.ListImagesResponse, error) {
	return answer[*runtimeapi.ListImagesResponse](ctx, f, "ListImages", req)
}

func (f *fakeRuntime) RemoveImage(ctx context.Context, req *runtimeapi.RemoveImageRequest) (*runtimeapi.RemoveImageResponse, error) {
	return answer[*runtimeapi.RemoveImageResponse](ctx, f, "RemoveImage", req)
}

func (f *fakeRuntime) ImageFsInfo(ctx context.Context, req *runtimeapi.ImageFsInfoRequest) (*runtimeapi.ImageFsInfoResponse, error) {
	return answer[*runtimeapi.ImageFsInfoResponse](ctx, f, "ImageFsInfo", req)
}

func (f *fakeRuntime) PullImage(ctx context.Context, req *runtimeapi.PullImageRequest) (*runtimeapi.PullImageResponse, error) {
	if _, ok := f.replies["PullImage"]; !ok {
		if err := f.record(ctx, "PullImage", req); err != nil {
			return nil, err
		}
		return &runtimeapi.PullImageResponse{ImageRef: imageID}, nil
	}
	return answer[*runtimeapi.PullImageResponse](ctx, f, "PullImage", req)
}

func (f *fakeRuntime) CreateContainer(ctx context.Context, req *runtimeapi.CreateContainerRequest) (*runtimeapi.CreateContainerResponse, error) {
	return answer[*runtimeapi.CreateContainerResponse](ctx, f, "CreateContainer", req)
}

func (f *fakeRuntime) Version(ctx context.Context, req *runtimeapi.VersionRequest) (*runtimeapi.VersionResponse, error) {
	return answer[*runtimeapi.VersionResponse](ctx, f, "Version", req)
}

func (f *fakeRuntime) Status(ctx context.Context, req *runtimeapi.StatusRequest) (*runtimeapi.StatusResponse, error) {
	return answer[*runtimeapi.StatusResponse](ctx, f, "Status", req)
}

func (f *fakeRuntime) GetContainerEvents(req *runtimeapi.GetEventsRequest, s runtimeapi.RuntimeService_GetContainerEventsServer) error {
	md, _ := metadata.FromIncomingContext(s.Context())
	f.mu.Lock()
	f.calls = append(f.calls, call{method: "GetContainerEvents", req: proto.Clone(req), md: md.Copy()})
	f.mu.Unlock()
	if f.header != nil {
		if err := s.SendHeader(f.header); err != nil {
			return err
		}
	}
	if f.trailer != nil {
		s.SetTrailer(f.trailer)
	}
	for _, e := range f.events {
		if err := s.Send(e); err != nil {
			return err
		}
	}
	if f.fail != nil {
		return f.fail("GetContainerEvents", req)
	}
	return nil
}

// future answers SomeFutureMethod, which only the runtime knows: a StringValue, echoed.
func (f *fakeRuntime) future(ctx context.Context, req *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
	if err := f.record(ctx, "SomeFutureMethod", req); err != nil {
		return nil, err
	}
	return wrapperspb.String("future:" + req.GetValue()), nil
}

// serve starts the fake runtime on a Unix socket and returns its path. Its limits are far above
// the proxy's, so that the proxy's own limits are what tests see.
func (f *fakeRuntime) serve(t *testing.T) string {
	t.Helper()
	path := filepath.Join(socketDir(t), "rt.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.MaxRecvMsgSize(64<<20), grpc.MaxSendMsgSize(64<<20))
	future := grpc.MethodDesc{
		MethodName: "SomeFutureMethod",
		Handler: func(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			in := new(wrapperspb.StringValue)
			if err := dec(in); err != nil {
				return nil, err
			}
			return srv.(*fakeRuntime).future(ctx, in)
		},
	}
	for _, desc := range []grpc.ServiceDesc{runtimeapi.ImageService_ServiceDesc, runtimeapi.RuntimeService_ServiceDesc} {
		desc.Methods = append(slices.Clone(desc.Methods), future)
		srv.RegisterService(&desc, f)
	}
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	return path
}

type resolveCall struct {
	image string
	cred  auth.Credential
}

// fakeResolver resolves every tag to tagDigest unless resolve says otherwise.
type fakeResolver struct {
	resolve func(img verify.Image, cred auth.Credential) (digest.Digest, error)

	mu    sync.Mutex
	calls []resolveCall
}

var _ proxy.Resolver = (*fakeResolver)(nil)

func (r *fakeResolver) Resolve(_ context.Context, img verify.Image, cred auth.Credential) (digest.Digest, error) {
	r.mu.Lock()
	r.calls = append(r.calls, resolveCall{img.String(), cred})
	r.mu.Unlock()
	if r.resolve != nil {
		return r.resolve(img, cred)
	}
	return tagDigest, nil
}

func (r *fakeResolver) seen() []resolveCall {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.calls)
}

// fakeVerifier allows everything under rule "test-rule" unless decide (for pulls) or known
// (for images in the store) says otherwise.
type fakeVerifier struct {
	decide func(verify.Request) (verify.Decision, error)
	known  func(verify.Request) (verify.Decision, error)
	// byName, when set, decides pulls by the image's name before any registry request.
	byName *verify.Decision
	// recall is what tags resolved to when last allowed.
	recall map[string]digest.Digest
	// served holds "name@digest user" for what the registry served to whom ("" for
	// anonymous access); Served adds to it.
	served map[string]bool

	mu     sync.Mutex
	reqs   []verify.Request
	stored []verify.Request
}

var _ proxy.Verifier = (*fakeVerifier)(nil)

func (v *fakeVerifier) Verify(_ context.Context, req verify.Request) (verify.Decision, error) {
	v.mu.Lock()
	v.reqs = append(v.reqs, req)
	v.mu.Unlock()
	if v.decide != nil {
		return v.decide(req)
	}
	return verify.Decision{Allowed: true, Rule: "test-rule"}, nil
}

func (v *fakeVerifier) DecideByName(verify.Image, string) (verify.Decision, bool) {
	if v.byName != nil {
		return *v.byName, true
	}
	return verify.Decision{}, false
}

func (v *fakeVerifier) Recall(img verify.Image) (digest.Digest, bool) {
	d, ok := v.recall[img.String()]
	return d, ok
}

func servedKey(img verify.Image, dg digest.Digest, cred auth.Credential) string {
	return img.Name() + "@" + dg.String() + " " + cred.Username
}

func (v *fakeVerifier) Served(img verify.Image, dg digest.Digest, cred auth.Credential) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.served == nil {
		v.served = map[string]bool{}
	}
	v.served[servedKey(img, dg, cred)] = true
}

func (v *fakeVerifier) ServedTo(img verify.Image, dg digest.Digest, creds []auth.Credential) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return slices.ContainsFunc(append(creds, auth.Credential{}), func(c auth.Credential) bool { return v.served[servedKey(img, dg, c)] })
}

// seenServed returns what Served recorded.
func (v *fakeVerifier) seenServed() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return slices.Sorted(maps.Keys(v.served))
}

func (v *fakeVerifier) Known(_ context.Context, req verify.Request) (verify.Decision, error) {
	v.mu.Lock()
	v.stored = append(v.stored, req)
	v.mu.Unlock()
	if v.known != nil {
		return v.known(req)
	}
	return verify.Decision{Allowed: true, Rule: "test-rule"}, nil
}

// seenKnown returns the requests Known was asked.
func (v *fakeVerifier) seenKnown() []verify.Request {
	v.mu.Lock()
	defer v.mu.Unlock()
	return slices.Clone(v.stored)
}

func (v *fakeVerifier) seen() []verify.Request {
	v.mu.Lock()
	defer v.mu.Unlock()
	return slices.Clone(v.reqs)
}

type tagCall struct{ name, pinned string }

type fakeTagger struct {
	err error

	mu   sync.Mutex
	tags []tagCall
}

var _ proxy.Tagger = (*fakeTagger)(nil)

func (g *fakeTagger) Tag(_ context.Context, name, pinned string) error {
	g.mu.Lock()
	g.tags = append(g.tags, tagCall{name, pinned})
	g.mu.Unlock()
	return g.err
}

func (g *fakeTagger) seen() []tagCall {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.tags)
}

type fakeKeyring struct {
	creds []auth.Credential
	err   error

	mu      sync.Mutex
	lookups []string
}

var _ proxy.Keyring = (*fakeKeyring)(nil)

func (k *fakeKeyring) Lookup(image string) ([]auth.Credential, error) {
	k.mu.Lock()
	k.lookups = append(k.lookups, image)
	k.mu.Unlock()
	return slices.Clone(k.creds), k.err
}

func (k *fakeKeyring) seen() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.lookups)
}

// setup is what a test puts around the proxy; zero fields get permissive fakes.
type setup struct {
	runtime  *fakeRuntime
	resolver *fakeResolver
	verifier *fakeVerifier
	// verifiers, when set, replaces verifier: the proxy asks it for a verifier on every pull.
	verifiers func() proxy.Verifier
	tagger    *fakeTagger
	opts      []proxy.Option
	// upstreamMax is the message limit of the proxy's connection to the runtime; cmd/pullgate
	// dials with proxy.MaxMessageSize, the default here.
	upstreamMax int
}

// env is a fake runtime, the proxy in front of it on a real socket, and clients of the proxy.
type env struct {
	setup
	proxy  *proxy.Proxy
	socket string
	// conn is a plain gRPC connection to the proxy, for what kubelet's client hides
	// (status codes it rewrites, metadata) and for methods it does not know.
	conn *grpc.ClientConn
}

func start(t *testing.T, s setup) *env {
	t.Helper()
	if s.runtime == nil {
		s.runtime = &fakeRuntime{}
	}
	if s.resolver == nil {
		s.resolver = &fakeResolver{}
	}
	if s.verifier == nil {
		s.verifier = &fakeVerifier{}
	}
	if s.verifiers == nil {
		v := s.verifier
		s.verifiers = func() proxy.Verifier { return v }
	}
	if s.tagger == nil {
		s.tagger = &fakeTagger{}
	}
	if s.upstreamMax == 0 {
		s.upstreamMax = proxy.MaxMessageSize
	}
	rtSock := s.runtime.serve(t)
	upstream, err := grpc.NewClient("unix://"+rtSock,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(s.upstreamMax), grpc.MaxCallSendMsgSize(s.upstreamMax)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { upstream.Close() })

	// Quiet by default; a test's own WithLogger comes later and wins.
	opts := append([]proxy.Option{proxy.WithLogger(slog.New(slog.DiscardHandler))}, s.opts...)
	p := proxy.New(upstream, s.resolver, s.verifiers, s.tagger, opts...)
	sock := filepath.Join(socketDir(t), "pg.sock")
	l, err := proxy.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(p.ServerOptions()...)
	p.Register(srv)
	go srv.Serve(l)
	t.Cleanup(srv.Stop)

	conn, err := grpc.NewClient("unix://"+sock,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20), grpc.MaxCallSendMsgSize(64<<20)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &env{setup: s, proxy: p, socket: sock, conn: conn}
}

// images is kubelet's own image service client, connected to the proxy.
func (e *env) images(t *testing.T) internalapi.ImageManagerService {
	t.Helper()
	c, err := remote.NewRemoteImageService(t.Context(), "unix://"+e.socket, 10*time.Second, noop.NewTracerProvider(), false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

// runtime is kubelet's own runtime service client, connected to the proxy.
func (e *env) runtimeService(t *testing.T) internalapi.RuntimeService {
	t.Helper()
	c, err := remote.NewRemoteRuntimeService(t.Context(), "unix://"+e.socket, 10*time.Second, noop.NewTracerProvider(), false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

func (e *env) imageClient() runtimeapi.ImageServiceClient {
	return runtimeapi.NewImageServiceClient(e.conn)
}

func (e *env) runtimeClient() runtimeapi.RuntimeServiceClient {
	return runtimeapi.NewRuntimeServiceClient(e.conn)
}
