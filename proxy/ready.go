package proxy

import (
	"context"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Ready checks that the runtime answers ImageFsInfo, and records the answer in the
// pullgate_upstream_up gauge.
func (p *Proxy) Ready(ctx context.Context) error {
	_, err := runtimeapi.NewImageServiceClient(p.upstream).ImageFsInfo(ctx, &runtimeapi.ImageFsInfoRequest{})
	if p.metrics != nil {
		if err != nil {
			p.metrics.UpstreamUp.Set(0)
		} else {
			p.metrics.UpstreamUp.Set(1)
		}
	}
	return err
}

// MonitorUpstream checks the runtime every interval until ctx ends, so that
// pullgate_upstream_up is current even when nobody asks /readyz.
func (p *Proxy) MonitorUpstream(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		check, cancel := context.WithTimeout(ctx, interval)
		p.Ready(check)
		cancel()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
