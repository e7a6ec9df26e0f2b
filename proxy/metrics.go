package proxy

import (
	"context"
	"path"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// Metrics are pullgate's Prometheus metrics (names in DESIGN.md).
type Metrics struct {
	requests  *prometheus.CounterVec
	durations *prometheus.HistogramVec
	decisions *prometheus.CounterVec
	// verification times checks of signatures that were not cached; cacheHits counts the rest.
	verification prometheus.Histogram
	cacheHits    prometheus.Counter
	// stored counts the checks of images already in the store.
	stored *prometheus.CounterVec
	// statuses counts ImageStatus replies by where they came from.
	statuses *prometheus.CounterVec
	// unavailable counts pulls denied because the registry could not be asked.
	unavailable prometheus.Counter
	// UpstreamUp is 1 while the runtime answers.
	UpstreamUp prometheus.Gauge
}

// NewMetrics registers pullgate's metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pullgate_cri_requests_total",
			Help: "CRI requests served, by method and gRPC status code.",
		}, []string{"method", "code"}),
		durations: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "pullgate_cri_request_duration_seconds",
			Help:    "Time to serve a CRI request, including the runtime's time.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120},
		}, []string{"method"}),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pullgate_pull_decisions_total",
			Help: "PullImage decisions, by verdict (allowed, denied, error) and deciding rule.",
		}, []string{"verdict", "rule"}),
		verification: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "pullgate_verification_duration_seconds",
			Help:    "Time to verify an image's signatures and attestations against its rule, cache misses only.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
		cacheHits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pullgate_cache_hits_total",
			Help: "Pull decisions answered from the verification cache.",
		}),
		stored: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pullgate_present_image_checks_total",
			Help: "Checks of images already in the runtime's store, by method (ImageStatus, CreateContainer), verdict (present, hidden, allowed, denied) and deciding rule.",
		}, []string{"method", "verdict", "rule"}),
		statuses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pullgate_image_status_replies_total",
			Help: "ImageStatus replies, by source: cache (kept since the last image event) or runtime (asked).",
		}, []string{"source"}),
		unavailable: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pullgate_registry_unavailable_total",
			Help: "Pulls denied because the registry could not be reached or answered 5xx/429 (RegistryUnavailable).",
		}),
		UpstreamUp: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pullgate_upstream_up",
			Help: "1 when the runtime answered the last readiness check, else 0.",
		}),
	}
	reg.MustRegister(m.requests, m.durations, m.decisions, m.verification, m.cacheHits, m.stored, m.statuses, m.unavailable, m.UpstreamUp)
	return m
}

// unknownMethod is the method label of every call to a method this build does not know, so
// that callers cannot grow the metrics without bound by inventing names.
const unknownMethod = "unknown"

func (m *Metrics) observe(fullMethod string, start time.Time, err error) {
	method := unknownMethod
	if _, ok := known[fullMethod]; ok {
		method = path.Base(fullMethod)
	}
	m.requests.WithLabelValues(method, status.Code(err).String()).Inc()
	m.durations.WithLabelValues(method).Observe(time.Since(start).Seconds())
}

func (m *Metrics) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := handler(ctx, req)
	m.observe(info.FullMethod, start, err)
	return resp, err
}

func (m *Metrics) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	start := time.Now()
	err := handler(srv, ss)
	m.observe(info.FullMethod, start, err)
	return err
}
