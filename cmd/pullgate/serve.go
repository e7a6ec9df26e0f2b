package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"reflect"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	sd "github.com/coreos/go-systemd/v22/daemon"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/pullgate/pullgate/proxy"
	"github.com/pullgate/pullgate/proxy/config"
	"github.com/pullgate/pullgate/verify"
	"github.com/pullgate/pullgate/verify/auth"
	"github.com/pullgate/pullgate/verify/cluster"
	"github.com/pullgate/pullgate/verify/hosts"
	"github.com/pullgate/pullgate/verify/state"
)

func serve(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("serve", "serve [--config FILE] [--listen unix:///PATH] [--runtime-endpoint unix:///PATH] [--state-dir DIR]")
	var l loader
	fs.StringVar(&l.path, "config", config.DefaultPath, "configuration file")
	fs.StringVar(&l.listen, "listen", "", "override listen: unix:///path.sock")
	fs.StringVar(&l.runtimeEndpoint, "runtime-endpoint", "", "override runtimeEndpoint: unix:///path.sock")
	fs.StringVar(&l.stateDir, "state-dir", "", "override stateDir")
	if err := parseFlags(fs, args, stdout, stderr); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		fs.Usage()
		return usageError{errors.New("serve takes no arguments")}
	}
	// Caught from the start: SIGHUP's default action would end a pullgate reloaded while it
	// starts.
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	d, err := newDaemon(l.load, stderr)
	if err != nil {
		return err
	}
	defer d.conn.Close()
	cfg, logger, p := d.started, d.logger, d.proxy
	slog.SetDefault(logger)

	lis, err := listener(cfg.Listen)
	if err != nil {
		return err
	}
	srv := grpc.NewServer(p.ServerOptions()...)
	p.Register(srv)

	var metrics *http.Server
	if cfg.MetricsAddress != "" {
		ml, err := net.Listen("tcp", cfg.MetricsAddress)
		if err != nil {
			return fmt.Errorf("metrics address: %w", err)
		}
		metrics = metricsServer(d.registry, p)
		go func() {
			if err := metrics.Serve(ml); !errors.Is(err, http.ErrServerClosed) {
				logger.Error("metrics server stopped", "error", err)
			}
		}()
		logger.Info("metrics serving", "address", ml.Addr().String())
	}

	monitorCtx, stopMonitor := context.WithCancel(context.Background())
	defer stopMonitor()
	go p.MonitorUpstream(monitorCtx, 5*time.Second)
	go p.WatchImages(monitorCtx, d.images)
	if cfg.Cluster != nil {
		go d.watchCluster(monitorCtx, *cfg.Cluster, d.registry)
	}
	if d.state != nil {
		go p.PruneState(monitorCtx, d.state, 6*time.Hour, 24*time.Hour)
	}

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(lis) }()
	logger.Info("pullgate serving", "version", versionString(), "listen", cfg.Listen, "runtime", cfg.RuntimeEndpoint, "defaultAction", cfg.DefaultAction)
	var ready atomic.Bool
	go notifySystemd(monitorCtx, logger, lis.Addr().String(), p.Ready, &ready)

	for {
		select {
		case err := <-serveErr:
			return err
		case sig := <-signals:
			if sig == syscall.SIGHUP {
				// Before start-up is done, READY=1 would tell systemd too early.
				wasReady := ready.Load()
				if wasReady {
					sd.SdNotify(false, sd.SdNotifyReloading)
				}
				d.reload()
				if wasReady {
					sd.SdNotify(false, sd.SdNotifyReady)
				}
				continue
			}
			logger.Info("shutting down", "signal", sig.String(), "grace", d.current.ShutdownGracePeriod.Duration)
			sd.SdNotify(false, sd.SdNotifyStopping)
			d.shutdown(srv, metrics)
			return nil
		}
	}
}

// loader reads the configuration file and applies the command line's overrides, at start and
// on every reload.
type loader struct {
	path, listen, runtimeEndpoint, stateDir string
}

func (l loader) load() (config.Config, error) {
	data, err := os.ReadFile(l.path)
	if err != nil {
		return config.Config{}, err
	}
	c, err := config.Parse(data)
	if err != nil {
		return config.Config{}, fmt.Errorf("%s: %w", l.path, err)
	}
	if l.listen != "" {
		c.Listen = l.listen
	}
	if l.runtimeEndpoint != "" {
		c.RuntimeEndpoint = l.runtimeEndpoint
	}
	if l.stateDir != "" {
		c.StateDir = l.stateDir
	}
	if err := c.Validate(); err != nil {
		return config.Config{}, fmt.Errorf("%s: %w", l.path, err)
	}
	return c, nil
}

// daemon is what serve runs: the parts a reload changes, and the configurations in effect.
type daemon struct {
	load func() (config.Config, error)

	// mu keeps a reload and a change of the cluster's policy apart.
	mu sync.Mutex
	// started is the configuration pullgate started with, which restart-only fields keep;
	// current is the last one applied.
	started, current config.Config
	// applied are the cluster's NodeImagePolicy objects in effect, with cluster set.
	applied []cluster.Applied

	logs     *logSwitch
	logger   *slog.Logger
	conn     *grpc.ClientConn
	state    *state.Store // nil when stateDir cannot be used
	registry *prometheus.Registry
	resolver *verify.Resolver
	verifier *verify.Verifier
	images   *proxy.ImageStore
	proxy    *proxy.Proxy
}

// newDaemon loads the configuration and builds pullgate from it, logging to logOut. Nothing
// is served yet, and the runtime is dialled only when first called.
func newDaemon(load func() (config.Config, error), logOut io.Writer) (*daemon, error) {
	cfg, err := load()
	if err != nil {
		return nil, err
	}
	d := &daemon{load: load, started: cfg, current: cfg, logs: newLogSwitch(logOut, cfg.Log)}
	d.logger = slog.New(d.logs.handler())
	d.loadApplied(cfg)
	policy, err := d.policy(cfg)
	if err != nil {
		return nil, err
	}
	d.conn, err = grpc.NewClient(cfg.RuntimeEndpoint,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(proxy.MaxMessageSize), grpc.MaxCallSendMsgSize(proxy.MaxMessageSize)),
		// Reconnect quickly when the runtime restarts: kubelet keeps calling meanwhile.
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second}, MinConnectTimeout: time.Second}),
	)
	if err != nil {
		return nil, fmt.Errorf("runtime endpoint %s: %w", cfg.RuntimeEndpoint, err)
	}
	store, err := proxy.NewImageStore(d.conn, cfg.ContainerdNamespace)
	if err != nil {
		d.conn.Close()
		return nil, err
	}

	d.registry = prometheus.NewRegistry()
	d.registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	d.resolver = verify.NewResolver(hosts.New(cfg.RegistryConfigPath), verify.WithResolveTimeout(cfg.Verification.Timeout.Duration), verify.WithResolveLogger(d.logger))
	opts := []proxy.Option{proxy.WithLogger(d.logger), proxy.WithMetrics(proxy.NewMetrics(d.registry)), proxy.WithKeyring(nodeKeyring(cfg.Auth)), proxy.WithHeldImages(store)}
	if cfg.Verification.PresentImages() {
		opts = append(opts, proxy.WithPresentImageChecks())
	}
	vopts := []verify.VerifierOption{verify.WithVerifierLogger(d.logger)}
	d.state, err = state.Open(cfg.StateDir, state.WithLogger(d.logger))
	if err != nil {
		// Serving without the state still fails closed: images on the node count as never
		// verified until pulled again. Refusing to serve would stop every pull on the node.
		d.logger.Error("state unavailable; decisions are kept in memory only until pullgate restarts with a working stateDir", "error", err)
	} else {
		vopts = append(vopts, verify.WithState(d.state))
	}
	d.registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "pullgate_state_usable",
		Help: "1 when stateDir holds pullgate's decisions, 0 when they are kept in memory only (see the log).",
	}, func() float64 {
		if d.state == nil {
			return 0
		}
		return 1
	}))
	d.verifier = verify.NewVerifier(policy, d.resolver, vopts...)
	d.images = store
	d.proxy = proxy.New(d.conn, d.resolver, func() proxy.Verifier { return d.verifier }, store, opts...)
	return d, nil
}

// nodeKeyring is the node credentials auth configures, nil for none.
func nodeKeyring(a config.Auth) proxy.Keyring {
	if a.NodeCredentials == "never" {
		return nil
	}
	return auth.NewKeyring(a.Files)
}

// reload applies the configuration file again; a file that does not validate is refused whole
// and the running configuration kept. Fields that take effect only on restart are named when
// the file changes them.
func (d *daemon) reload() {
	d.mu.Lock()
	defer d.mu.Unlock()
	cfg, err := d.load()
	var policy *verify.Policy
	if err == nil {
		policy, err = d.policy(cfg)
	}
	if err != nil {
		d.logger.Error("configuration reload refused, keeping the running configuration", "error", err)
		return
	}
	// The log first, so that what follows is written as configured.
	d.logs.set(cfg.Log)
	d.setPolicy(policy)
	d.resolver.SetTimeout(cfg.Verification.Timeout.Duration)
	d.proxy.SetKeyring(nodeKeyring(cfg.Auth))
	d.current = cfg
	if fields := restartOnly(d.started, cfg); len(fields) > 0 {
		d.logger.Warn("configuration reloaded; changed fields that take effect on restart", "fields", fields)
	}
	d.logger.Info("configuration reloaded", "defaultAction", cfg.DefaultAction, "policies", len(cfg.Policies))
}

// restartOnly names the fields that next changes from running but that take effect only when
// pullgate restarts: the sockets, the state and what was registered with the gRPC server.
func restartOnly(running, next config.Config) []string {
	var fields []string
	for _, f := range []struct {
		name    string
		changed bool
	}{
		{"listen", running.Listen != next.Listen},
		{"runtimeEndpoint", running.RuntimeEndpoint != next.RuntimeEndpoint},
		{"containerdNamespace", running.ContainerdNamespace != next.ContainerdNamespace},
		{"registryConfigPath", running.RegistryConfigPath != next.RegistryConfigPath},
		{"stateDir", running.StateDir != next.StateDir},
		{"metricsAddress", running.MetricsAddress != next.MetricsAddress},
		{"verification.verifyPresentImages", running.Verification.PresentImages() != next.Verification.PresentImages()},
		{"cluster", !reflect.DeepEqual(running.Cluster, next.Cluster)},
	} {
		if f.changed {
			fields = append(fields, f.name)
		}
	}
	return fields
}

// shutdown lets calls in flight finish within the grace period of the configuration in effect,
// then cancels them, and stops the metrics server (nil if none).
func (d *daemon) shutdown(srv *grpc.Server, metrics *http.Server) {
	ctx, cancel := context.WithTimeout(context.Background(), d.current.ShutdownGracePeriod.Duration)
	defer cancel()
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-ctx.Done():
		d.logger.Warn("grace period over, cancelling calls still running")
		srv.Stop()
	}
	if metrics == nil {
		return
	}
	// A scrape in progress gets what is left of the grace period.
	if err := metrics.Shutdown(ctx); err != nil {
		metrics.Close()
	}
}

// listener uses the socket systemd passed in (socket activation) or opens the configured one.
func listener(endpoint string) (net.Listener, error) {
	ls, err := activation.Listeners()
	if err != nil {
		return nil, fmt.Errorf("systemd socket activation: %w", err)
	}
	switch len(ls) {
	case 0:
	case 1:
		return ls[0], nil
	default:
		return nil, fmt.Errorf("systemd passed %d sockets, want 1", len(ls))
	}
	path, err := config.UnixPath(endpoint)
	if err != nil {
		return nil, err
	}
	return proxy.Listen(path)
}

// metricsServer serves /metrics, /healthz and /readyz. Its timeouts keep a client that is
// slow or gone from holding a connection open for good.
func metricsServer(reg *prometheus.Registry, p *proxy.Proxy) *http.Server {
	return &http.Server{
		Handler:           healthMux(reg, p),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		// Well beyond /readyz's 2 s bound on asking the runtime, and a scrape.
		WriteTimeout: 30 * time.Second,
		IdleTimeout:  2 * time.Minute,
	}
}

func healthMux(reg *prometheus.Registry, p *proxy.Proxy) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := p.Ready(ctx); err != nil {
			http.Error(w, "runtime not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}
