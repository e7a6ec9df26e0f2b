package proxy

import (
	"context"
	"time"
)

const (
	// statusMaxAge bounds how long an ImageStatus reply is kept without an event, for what
	// changes with time alone.
	statusMaxAge = 30 * time.Second
	// statusEntries bounds the replies kept; kubelet asks about the images of the node's pods.
	statusEntries = 4096
)

// PolicyChanged drops what ImageStatus replies were kept: the gate's answers in them were
// decided under the policy before. (A new verifier does the same by itself.)
func (p *Proxy) PolicyChanged() { p.statuses.drop() }

// WatchImages follows the runtime's image events until ctx ends, so that ImageStatus can be
// answered from the replies kept since the last one. Without it every ImageStatus asks the
// runtime. A broken watch is started again, with backoff; while it is down nothing is kept.
func (p *Proxy) WatchImages(ctx context.Context, src ImageEvents) {
	go p.settleImages(ctx, src)
	wait := time.Second
	for {
		start := time.Now()
		err := src.Watch(ctx, func() { p.statuses.setLive(true) }, p.statuses.changed)
		p.statuses.setLive(false)
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > time.Minute {
			wait = time.Second
		}
		p.logger.Warn("the runtime's image events are not followed: every ImageStatus asks the runtime until they are", "error", err, "retryIn", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, 30*time.Second)
	}
}

// settleImages clears each changed name once the runtime's CRI shows it as the image store
// holds it: from then on, its replies reflect the change.
func (p *Proxy) settleImages(ctx context.Context, src ImageEvents) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.statuses.settle:
		}
		for wait := time.Millisecond; ; wait = min(2*wait, time.Second) {
			for name, gen := range p.statuses.unsettled() {
				if ok, err := src.Shows(ctx, name); err == nil && ok {
					p.statuses.settled(name, gen)
				}
			}
			if len(p.statuses.unsettled()) == 0 {
				break
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
		}
	}
}
