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
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"
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
	"github.com/pullgate/pullgate/verify/hosts"
	"github.com/pullgate/pullgate/verify/state"
)

func serve(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("serve", "serve [--config FILE] [--listen unix:///PATH] [--runtime-endpoint unix:///PATH] [--state-dir DIR]")
	configPath := fs.String("config", config.DefaultPath, "configuration file")
	listen := fs.String("listen", "", "override listen: unix:///path.sock")
	runtimeEndpoint := fs.String("runtime-endpoint", "", "override runtimeEndpoint: unix:///path.sock")
	stateDir := fs.String("state-dir", "", "override stateDir")
	if err := parseFlags(fs, args, stdout, stderr); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		fs.Usage()
		return usageError{errors.New("serve takes no arguments")}
	}
	load := func() (config.Config, error) {
		data, err := os.ReadFile(*configPath)
		if err != nil {
			return config.Config{}, err
		}
		c, err := config.Parse(data)
		if err != nil {
			return config.Config{}, fmt.Errorf("%s: %w", *configPath, err)
		}
		if *listen != "" {
			c.Listen = *listen
		}
		if *runtimeEndpoint != "" {
			c.RuntimeEndpoint = *runtimeEndpoint
		}
		if *stateDir != "" {
			c.StateDir = *stateDir
		}
		if err := c.Validate(); err != nil {
			return config.Config{}, fmt.Errorf("%s: %w", *configPath, err)
		}
		return c, nil
	}
	// Caught from the start: SIGHUP's default action would end a pullgate reloaded while it
	// starts.
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	cfg, err := load()
	if err != nil {
		return err
	}
	level := new(slog.LevelVar)
	logger := newLogger(stderr, cfg.Log, level)
	slog.SetDefault(logger)

	conn, err := grpc.NewClient(cfg.RuntimeEndpoint,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(proxy.MaxMessageSize), grpc.MaxCallSendMsgSize(proxy.MaxMessageSize)),
		// Reconnect quickly when the runtime restarts: kubelet keeps calling meanwhile.
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second}, MinConnectTimeout: time.Second}),
	)
	if err != nil {
		return fmt.Errorf("runtime endpoint %s: %w", cfg.RuntimeEndpoint, err)
	}
	defer conn.Close()
	store, err := proxy.NewImageStore(conn, cfg.ContainerdNamespace)
	if err != nil {
		return err
	}

	policy, err := cfg.Policy()
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := proxy.NewMetrics(reg)
	resolver := verify.NewResolver(hosts.New(cfg.RegistryConfigPath), verify.WithResolveTimeout(cfg.Verification.Timeout.Duration), verify.WithResolveLogger(logger))
	opts := []proxy.Option{proxy.WithLogger(logger), proxy.WithMetrics(metrics)}
	if cfg.Auth.NodeCredentials == "fallback" {
		opts = append(opts, proxy.WithKeyring(auth.NewKeyring(cfg.Auth.Files)))
	}
	if cfg.Verification.PresentImages() {
		opts = append(opts, proxy.WithPresentImageChecks())
	}
	vopts := []verify.VerifierOption{verify.WithVerifierLogger(logger)}
	st, err := state.Open(cfg.StateDir, state.WithLogger(logger))
	if err != nil {
		// Serving without the state still fails closed: images on the node count as never
		// verified until pulled again. Refusing to serve would stop every pull on the node.
		logger.Error("state unavailable; decisions are kept in memory only until pullgate restarts with a working stateDir", "error", err)
	} else {
		vopts = append(vopts, verify.WithState(st))
	}
	verifier := verify.NewVerifier(policy, resolver, vopts...)
	p := proxy.New(conn, resolver, func() proxy.Verifier { return verifier }, store, opts...)

	lis, err := listener(cfg.Listen)
	if err != nil {
		return err
	}
	srv := grpc.NewServer(p.ServerOptions()...)
	p.Register(srv)

	if cfg.MetricsAddress != "" {
		ml, err := net.Listen("tcp", cfg.MetricsAddress)
		if err != nil {
			return fmt.Errorf("metrics address: %w", err)
		}
		go http.Serve(ml, healthMux(reg, p))
		logger.Info("metrics serving", "address", ml.Addr().String())
	}

	monitorCtx, stopMonitor := context.WithCancel(context.Background())
	defer stopMonitor()
	go p.MonitorUpstream(monitorCtx, 5*time.Second)
	if st != nil {
		go p.PruneState(monitorCtx, st, 6*time.Hour, 24*time.Hour)
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
					daemon.SdNotify(false, daemon.SdNotifyReloading)
				}
				reload(logger, load, cfg, verifier, level)
				if wasReady {
					daemon.SdNotify(false, daemon.SdNotifyReady)
				}
				continue
			}
			logger.Info("shutting down", "signal", sig.String(), "grace", cfg.ShutdownGracePeriod.Duration)
			daemon.SdNotify(false, daemon.SdNotifyStopping)
			stopped := make(chan struct{})
			go func() { srv.GracefulStop(); close(stopped) }()
			select {
			case <-stopped:
			case <-time.After(cfg.ShutdownGracePeriod.Duration):
				logger.Warn("grace period over, cancelling calls still running")
				srv.Stop()
			}
			return nil
		}
	}
}

// reload applies a changed configuration file; a file that does not validate is refused whole
// and the running configuration kept.
func reload(logger *slog.Logger, load func() (config.Config, error), running config.Config, verifier *verify.Verifier, level *slog.LevelVar) {
	cfg, err := load()
	if err != nil {
		logger.Error("configuration reload refused, keeping the running configuration", "error", err)
		return
	}
	policy, err := cfg.Policy()
	if err != nil {
		logger.Error("configuration reload refused, keeping the running configuration", "error", err)
		return
	}
	verifier.SetPolicy(policy)
	level.Set(parseLevel(cfg.Log.Level))
	if cfg.Listen != running.Listen || cfg.RuntimeEndpoint != running.RuntimeEndpoint || cfg.MetricsAddress != running.MetricsAddress ||
		cfg.RegistryConfigPath != running.RegistryConfigPath || cfg.ContainerdNamespace != running.ContainerdNamespace ||
		cfg.StateDir != running.StateDir || cfg.Verification.PresentImages() != running.Verification.PresentImages() {
		logger.Warn("configuration reloaded; listen, runtimeEndpoint, metricsAddress, registryConfigPath, containerdNamespace, stateDir and verification.verifyPresentImages take effect on restart")
	}
	logger.Info("configuration reloaded", "defaultAction", cfg.DefaultAction, "policies", len(cfg.Policies))
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

func newLogger(out io.Writer, c config.Log, level *slog.LevelVar) *slog.Logger {
	level.Set(parseLevel(c.Level))
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "text" {
		return slog.New(slog.NewTextHandler(out, opts))
	}
	return slog.New(slog.NewJSONHandler(out, opts))
}

func parseLevel(s string) slog.Level {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return slog.LevelInfo
	}
	return l
}
