package main

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"sync/atomic"

	"github.com/pullgate/pullgate/proxy/config"
)

// logSwitch holds the configured log format and level. Every logger pullgate makes writes
// through it, so that a reload changes them for loggers handed out at start too (the proxy's,
// the verifier's, the resolver's).
type logSwitch struct {
	out     io.Writer
	level   slog.LevelVar
	current atomic.Pointer[slog.Handler]
}

func newLogSwitch(out io.Writer, c config.Log) *logSwitch {
	s := &logSwitch{out: out}
	s.set(c)
	return s
}

// set switches every logger to c's format and level.
func (s *logSwitch) set(c config.Log) {
	s.level.Set(parseLevel(c.Level))
	opts := &slog.HandlerOptions{Level: &s.level}
	var h slog.Handler = slog.NewJSONHandler(s.out, opts)
	if c.Format == "text" {
		h = slog.NewTextHandler(s.out, opts)
	}
	s.current.Store(&h)
}

func (s *logSwitch) handler() slog.Handler { return &logHandler{sw: s} }

func parseLevel(s string) slog.Level {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return slog.LevelInfo
	}
	return l
}

// logHandler writes through the handler its logSwitch holds at the time.
type logHandler struct {
	sw *logSwitch
	// derive replays, on the handler in use, the With and WithGroup calls that made this one.
	derive []func(slog.Handler) slog.Handler
	// cache is derive applied to one handler of the switch: derived once, not on every record.
	cache atomic.Pointer[derived]
}

type derived struct {
	from *slog.Handler
	h    slog.Handler
}

var _ slog.Handler = (*logHandler)(nil)

func (h *logHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= h.sw.level.Level() }

func (h *logHandler) Handle(ctx context.Context, r slog.Record) error {
	return h.current().Handle(ctx, r)
}

func (h *logHandler) WithAttrs(as []slog.Attr) slog.Handler {
	if len(as) == 0 {
		return h
	}
	return h.with(func(b slog.Handler) slog.Handler { return b.WithAttrs(as) })
}

func (h *logHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	return h.with(func(b slog.Handler) slog.Handler { return b.WithGroup(name) })
}

func (h *logHandler) with(f func(slog.Handler) slog.Handler) *logHandler {
	return &logHandler{sw: h.sw, derive: append(slices.Clip(h.derive), f)}
}

func (h *logHandler) current() slog.Handler {
	from := h.sw.current.Load()
	if d := h.cache.Load(); d != nil && d.from == from {
		return d.h
	}
	out := *from
	for _, f := range h.derive {
		out = f(out)
	}
	h.cache.Store(&derived{from, out})
	return out
}
