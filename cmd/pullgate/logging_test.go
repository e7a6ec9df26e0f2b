package main

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"testing/slogtest"

	"github.com/pullgate/pullgate/proxy/config"
)

func TestLogHandler(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	bufs := map[*testing.T]*bytes.Buffer{}
	slogtest.Run(t, func(t *testing.T) slog.Handler {
		mu.Lock()
		defer mu.Unlock()
		bufs[t] = new(bytes.Buffer)
		return newLogSwitch(bufs[t], config.Log{Format: "json", Level: "info"}).handler()
	}, func(t *testing.T) map[string]any {
		mu.Lock()
		defer mu.Unlock()
		m := map[string]any{}
		if err := json.Unmarshal(bufs[t].Bytes(), &m); err != nil {
			t.Fatalf("%q: %v", bufs[t], err)
		}
		return m
	})
}

func TestLogSwitch(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	sw := newLogSwitch(&buf, config.Log{Format: "json", Level: "info"})
	logger := slog.New(sw.handler()).With("a", 1).WithGroup("g")
	logger.Info("json", "b", 2)
	sw.set(config.Log{Format: "text", Level: "warn"})
	logger.Info("dropped")
	logger.Warn("text", "b", 2)
	sw.set(config.Log{Format: "json", Level: "warn"})
	logger.Warn("json again", "b", 2)

	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	want := []string{
		`"level":"INFO","msg":"json","a":1,"g":{"b":2}}`,
		`level=WARN msg=text a=1 g.b=2`,
		`"level":"WARN","msg":"json again","a":1,"g":{"b":2}}`,
	}
	if len(lines) != len(want) {
		t.Fatalf("logged %q, want %d lines", lines, len(want))
	}
	for i, l := range lines {
		if !strings.HasSuffix(l, want[i]) {
			t.Errorf("line %d = %q, want it to end in %q", i, l, want[i])
		}
	}
}
