package proxy_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/pullgate/pullgate/proxy"
	"github.com/pullgate/pullgate/verify"
	"github.com/pullgate/pullgate/verify/auth"
)

// syncBuffer is a log sink the proxy's handlers and the test may use at once.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestPullLog(t *testing.T) {
	t.Parallel()
	const (
		kubeletPassword = "kubelet-s3cret-Pa55"
		nodePasswordA   = "node-a-s3cret-Pa55"
		nodePasswordB   = "node-b-s3cret-Pa55"
		nodeToken       = "node-b-t0ken"
	)
	secrets := []string{kubeletPassword, nodePasswordA, nodePasswordB, nodeToken}
	kubeletAuth := &runtimeapi.AuthConfig{Username: "kubelet-user", Password: kubeletPassword}
	nodeA := auth.Credential{Username: "node-a", Password: nodePasswordA}
	nodeB := auth.Credential{Username: "node-b", Password: nodePasswordB, RegistryToken: nodeToken}

	tests := []struct {
		name    string
		image   string
		auth    *runtimeapi.AuthConfig
		keyring *fakeKeyring
		resolve func(verify.Image, auth.Credential) (digest.Digest, error)
		decide  func(verify.Request) (verify.Decision, error)
		pullErr error

		wantVerdict string
		wantDigest  digest.Digest // "" if the line must have none
		wantRule    string
		wantReason  string
	}{{
		name:        "allowed",
		image:       "registry.example.com/team/app:v1",
		auth:        kubeletAuth,
		wantVerdict: "allowed",
		wantDigest:  tagDigest,
		wantRule:    "test-rule",
	}, {
		name:  "denied",
		image: "registry.example.com/team/app:v1",
		auth:  kubeletAuth,
		decide: func(verify.Request) (verify.Decision, error) {
			return verify.Decision{Rule: "internal-apps", Reason: "no signature from release-key"}, nil
		},
		wantVerdict: "denied",
		wantDigest:  tagDigest,
		wantRule:    "internal-apps",
		wantReason:  "no signature from release-key",
	}, {
		name:  "registry unavailable",
		image: "registry.example.com/team/app:v1",
		auth:  kubeletAuth,
		resolve: func(img verify.Image, _ auth.Credential) (digest.Digest, error) {
			return "", &verify.RegistryError{Image: img, Unavailable: true, Err: errors.New("connection refused")}
		},
		wantVerdict: "error",
	}, {
		name:        "runtime error",
		image:       "registry.example.com/team/app:v1",
		auth:        kubeletAuth,
		pullErr:     status.Error(codes.Unknown, "failed to pull and unpack image"),
		wantVerdict: "error",
		wantDigest:  tagDigest,
		wantRule:    "test-rule",
	}, {
		name:        "invalid reference",
		image:       "registry.example.com/Team/app:v1",
		auth:        kubeletAuth,
		wantVerdict: "error",
	}, {
		name:    "node credentials",
		image:   "registry.example.com/team/app:v1",
		keyring: &fakeKeyring{creds: []auth.Credential{nodeA, nodeB}, err: errors.New("auth.json: bad entry")},
		resolve: func(_ verify.Image, c auth.Credential) (digest.Digest, error) {
			if c == nodeB {
				return tagDigest, nil
			}
			return "", unauthorized(401)
		},
		wantVerdict: "allowed",
		wantDigest:  tagDigest,
		wantRule:    "test-rule",
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var buf syncBuffer
			opts := []proxy.Option{proxy.WithLogger(slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})))}
			if tc.keyring != nil {
				opts = append(opts, proxy.WithKeyring(tc.keyring))
			}
			rt := &fakeRuntime{fail: func(m string, _ proto.Message) error {
				if m == "PullImage" {
					return tc.pullErr
				}
				return nil
			}}
			e := start(t, setup{
				runtime:  rt,
				resolver: &fakeResolver{resolve: tc.resolve},
				verifier: &fakeVerifier{decide: tc.decide},
				opts:     opts,
			})
			_, err := e.imageClient().PullImage(t.Context(), pullRequest(tc.image, tc.auth))
			if (err == nil) != (tc.wantVerdict == "allowed") {
				t.Fatalf("PullImage error = %v, want verdict %s", err, tc.wantVerdict)
			}

			out := buf.String()
			var decisions []map[string]any
			sc := bufio.NewScanner(strings.NewReader(out))
			for sc.Scan() {
				var line map[string]any
				if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
					t.Fatalf("log line is not JSON: %q: %v", sc.Text(), err)
				}
				if _, ok := line["verdict"]; ok {
					decisions = append(decisions, line)
				}
			}
			if len(decisions) != 1 {
				t.Fatalf("%d decision lines, want 1:\n%s", len(decisions), out)
			}
			d := decisions[0]
			want := map[string]any{"image": tc.image, "verdict": tc.wantVerdict, "namespace": "prod-web", "pod": "web-0"}
			if tc.wantDigest != "" {
				want["digest"] = tc.wantDigest.String()
			}
			if tc.wantRule != "" {
				want["rule"] = tc.wantRule
			}
			if tc.wantReason != "" {
				want["reason"] = tc.wantReason
			}
			for k, v := range want {
				if d[k] != v {
					t.Errorf("decision %s = %v, want %v", k, d[k], v)
				}
			}
			if _, ok := d["digest"]; ok && tc.wantDigest == "" {
				t.Errorf("decision has digest %v, want none", d["digest"])
			}
			if _, ok := d["duration"]; !ok {
				t.Error("decision has no duration")
			}
			for _, s := range secrets {
				if strings.Contains(out, s) {
					t.Errorf("log contains a secret %q:\n%s", s, out)
				}
			}
		})
	}
}

// sample is the value of the series of metric name with exactly labels, or -1 if there is none.
func sample(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel()) != len(labels) {
				continue
			}
			for _, l := range m.GetLabel() {
				if labels[l.GetName()] != l.GetValue() {
					continue metrics
				}
			}
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue()
			case m.GetHistogram() != nil:
				return float64(m.GetHistogram().GetSampleCount())
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue()
			}
		}
	}
	return -1
}

func TestMetrics(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	rt := &fakeRuntime{
		replies: map[string]proto.Message{"ImageStatus": &runtimeapi.ImageStatusResponse{}},
		events:  []*runtimeapi.ContainerEventResponse{{ContainerId: "c1"}, {ContainerId: "c2"}},
		fail: func(m string, req proto.Message) error {
			if r, ok := req.(*runtimeapi.ImageStatusRequest); ok && r.GetImage().GetImage() == "missing" {
				return status.Error(codes.NotFound, "no such image")
			}
			return nil
		},
	}
	verifier := &fakeVerifier{decide: func(req verify.Request) (verify.Decision, error) {
		if req.Image.Repository == "team/unsigned" {
			return verify.Decision{Rule: "internal-apps", Reason: "unsigned"}, nil
		}
		return verify.Decision{Allowed: true, Rule: "base-images"}, nil
	}}
	e := start(t, setup{runtime: rt, verifier: verifier, opts: []proxy.Option{proxy.WithMetrics(proxy.NewMetrics(reg))}})
	images, rts := e.imageClient(), e.runtimeClient()
	ctx := t.Context()

	for _, image := range []string{"nginx", "nginx:1.27", "busybox", "missing"} {
		_, err := images.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: image}})
		if (err != nil) != (image == "missing") {
			t.Fatalf("ImageStatus(%s): %v", image, err)
		}
	}
	for _, image := range []string{"registry.example.com/team/unsigned:v1", "registry.example.com/team/unsigned:v2", "nginx:1.27"} {
		if _, err := images.PullImage(ctx, pullRequest(image, nil)); (err != nil) != strings.Contains(image, "unsigned") {
			t.Fatalf("PullImage(%s): %v", image, err)
		}
	}
	if _, err := images.PullImage(ctx, pullRequest("Bad:ref", nil)); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("PullImage(Bad:ref): %v", err)
	}
	s, err := rts.GetContainerEvents(ctx, &runtimeapi.GetEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for err == nil {
		_, err = s.Recv()
	}
	if err := e.conn.Invoke(ctx, futureMethod, wrapperspb.String("x"), new(wrapperspb.StringValue)); err != nil {
		t.Fatal(err)
	}
	// Methods pullgate does not know share one label, whatever a caller calls them.
	for _, m := range []string{futureImageMethod, "/runtime.v1.RuntimeService/Invented1", "/not.cri/Invented2"} {
		e.conn.Invoke(ctx, m, wrapperspb.String("x"), new(wrapperspb.StringValue))
	}

	tests := []struct {
		name   string
		metric string
		labels map[string]string
		want   float64
	}{
		{"ImageStatus OK", "pullgate_cri_requests_total", map[string]string{"method": "ImageStatus", "code": "OK"}, 3},
		{"ImageStatus NotFound", "pullgate_cri_requests_total", map[string]string{"method": "ImageStatus", "code": "NotFound"}, 1},
		{"PullImage Unknown", "pullgate_cri_requests_total", map[string]string{"method": "PullImage", "code": "Unknown"}, 2},
		{"PullImage OK", "pullgate_cri_requests_total", map[string]string{"method": "PullImage", "code": "OK"}, 1},
		{"PullImage InvalidArgument", "pullgate_cri_requests_total", map[string]string{"method": "PullImage", "code": "InvalidArgument"}, 1},
		{"stream", "pullgate_cri_requests_total", map[string]string{"method": "GetContainerEvents", "code": "OK"}, 1},
		{"unknown method", "pullgate_cri_requests_total", map[string]string{"method": "unknown", "code": "OK"}, 1},
		{"unknown methods refused", "pullgate_cri_requests_total", map[string]string{"method": "unknown", "code": "Unimplemented"}, 3},
		{"ImageStatus durations", "pullgate_cri_request_duration_seconds", map[string]string{"method": "ImageStatus"}, 4},
		{"PullImage durations", "pullgate_cri_request_duration_seconds", map[string]string{"method": "PullImage"}, 4},
		{"denied", "pullgate_pull_decisions_total", map[string]string{"verdict": "denied", "rule": "internal-apps"}, 2},
		{"allowed", "pullgate_pull_decisions_total", map[string]string{"verdict": "allowed", "rule": "base-images"}, 1},
		{"error", "pullgate_pull_decisions_total", map[string]string{"verdict": "error", "rule": ""}, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := sample(t, reg, tc.metric, tc.labels); got != tc.want {
				t.Errorf("%s%v = %v, want %v", tc.metric, tc.labels, got, tc.want)
			}
		})
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "pullgate_pull_decisions_total" && len(mf.GetMetric()) != 3 {
			t.Errorf("pullgate_pull_decisions_total has %d series, want 3", len(mf.GetMetric()))
		}
	}
}

func TestReady(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		fail    error
		metrics bool
		wantUp  float64
	}{
		{name: "runtime answers", metrics: true, wantUp: 1},
		{name: "runtime fails", fail: status.Error(codes.Unavailable, "containerd is starting"), metrics: true, wantUp: 0},
		{name: "without metrics", fail: status.Error(codes.Unavailable, "containerd is starting")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rt := &fakeRuntime{fail: func(string, proto.Message) error { return tc.fail }}
			reg := prometheus.NewRegistry()
			var opts []proxy.Option
			if tc.metrics {
				m := proxy.NewMetrics(reg)
				m.UpstreamUp.Set(-1)
				opts = append(opts, proxy.WithMetrics(m))
			}
			e := start(t, setup{runtime: rt, opts: opts})
			err := e.proxy.Ready(t.Context())
			if status.Code(err) != status.Code(tc.fail) {
				t.Errorf("Ready = %v, want %v", err, tc.fail)
			}
			if len(rt.callsTo("ImageFsInfo")) != 1 {
				t.Errorf("runtime saw %d ImageFsInfo calls, want 1", len(rt.callsTo("ImageFsInfo")))
			}
			if tc.metrics {
				if got := sample(t, reg, "pullgate_upstream_up", nil); got != tc.wantUp {
					t.Errorf("pullgate_upstream_up = %v, want %v", got, tc.wantUp)
				}
			}
		})
	}
}
