package main

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	sd "github.com/coreos/go-systemd/v22/daemon"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
)

// notifySystemd tells systemd (Type=notify) that pullgate is ready once its own socket is
// served and the runtime answers, so that `systemctl start` and the installer's probe never
// see a half-started gate. It then pings the watchdog (WatchdogSec) while the socket is
// still served. Outside systemd both checks still run but nothing is sent. ready is set once
// READY=1 is sent. It returns when ctx ends.
func notifySystemd(ctx context.Context, logger *slog.Logger, socket string, runtimeReady func(context.Context) error, ready *atomic.Bool) {
	wait := 100 * time.Millisecond
	for {
		err := selfProbe(ctx, socket, 2*time.Second)
		if err == nil {
			check, cancel := context.WithTimeout(ctx, 5*time.Second)
			err = runtimeReady(check)
			cancel()
		}
		if err == nil {
			break
		}
		logger.Warn("not ready yet, retrying", "error", err, "retry", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
	}
	ready.Store(true)
	sd.SdNotify(false, sd.SdNotifyReady)
	logger.Info("ready", "socket", socket)

	interval, err := sd.SdWatchdogEnabled(false)
	if err != nil || interval == 0 {
		return
	}
	// Half the interval, as sd_watchdog_enabled(3) advises, and a probe bounded well within it.
	t := time.NewTicker(interval / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		// The runtime being down is not pullgate's fault and a restart would not help, so only
		// pullgate's own socket decides whether systemd should restart it.
		if err := selfProbe(ctx, socket, interval/4); err != nil {
			logger.Error("own socket not served, withholding the watchdog ping", "socket", socket, "error", err)
			continue
		}
		sd.SdNotify(false, sd.SdNotifyWatchdog)
	}
}

// selfProbe connects to pullgate's own socket and waits for the gRPC server's handshake,
// which shows that the accept loop and the HTTP/2 transport run.
func selfProbe(ctx context.Context, socket string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("probe %s: %w", socket, err)
	}
	defer conn.Close()
	conn.Connect()
	for s := conn.GetState(); s != connectivity.Ready; s = conn.GetState() {
		if !conn.WaitForStateChange(ctx, s) {
			return fmt.Errorf("probe %s: no gRPC handshake within %s (last state %s)", socket, timeout, s)
		}
	}
	return nil
}
