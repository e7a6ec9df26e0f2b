package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/emptypb"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/pullgate/pullgate/proxy/config"
	"github.com/pullgate/pullgate/verify"
	"github.com/pullgate/pullgate/verify/cluster"
)

// syncBuffer collects what loggers write from several goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// jsonLines returns the JSON log lines written, and fails on a line of another format.
func (s *syncBuffer) jsonLines(t *testing.T) []map[string]any {
	t.Helper()
	var lines []map[string]any
	for l := range strings.Lines(s.String()) {
		m := map[string]any{}
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line is not JSON: %q", l)
		}
		lines = append(lines, m)
	}
	return lines
}

// fakeRegistry answers every tag with one digest to any user with basic-auth credentials,
// and records which users asked for manifests. With block, it never answers, until the client
// gives up.
type fakeRegistry struct {
	srv *httptest.Server

	mu    sync.Mutex
	users []string
}

func newRegistry(t *testing.T, block bool) *fakeRegistry {
	t.Helper()
	r := &fakeRegistry{}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		user, _, ok := req.BasicAuth()
		switch {
		case block:
			<-req.Context().Done()
		case !ok:
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			w.WriteHeader(http.StatusUnauthorized)
		case req.URL.Path == "/v2/":
		case strings.Contains(req.URL.Path, "/manifests/"):
			r.mu.Lock()
			r.users = append(r.users, user)
			r.mu.Unlock()
			w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
			w.Header().Set("Docker-Content-Digest", "sha256:"+strings.Repeat("a", 64))
			w.Header().Set("Content-Length", "2")
		default:
			http.NotFound(w, req)
		}
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *fakeRegistry) host() string { return strings.TrimPrefix(r.srv.URL, "http://") }

// seen returns who asked for manifests since the last call.
func (r *fakeRegistry) seen() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	u := r.users
	r.users = nil
	return u
}

// fixture is a daemon built from a configuration file in dir, with credential files a.json
// (user-a) and b.json (user-b) for registry. Its runtime is absent: pulls get as far as the
// registry.
type fixture struct {
	dir, path, registry string
	logs                *syncBuffer
	d                   *daemon
}

func newFixture(t *testing.T, registry, fields string) *fixture {
	t.Helper()
	f := &fixture{dir: t.TempDir(), registry: registry, logs: new(syncBuffer)}
	f.path = filepath.Join(f.dir, "config.yaml")
	for _, user := range []string{"a", "b"} {
		auth := base64.StdEncoding.EncodeToString([]byte("user-" + user + ":pass-" + user))
		writeFile(t, filepath.Join(f.dir, user+".json"), fmt.Sprintf(`{"auths": {%q: {"auth": %q}}}`, registry, auth))
	}
	f.write(t, fields)
	d, err := newDaemon(loader{path: f.path}.load, f.logs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.conn.Close() })
	f.d = d
	return f
}

// write writes the configuration file: fields (in which DIR stands for the fixture's
// directory) on top of what every test needs.
func (f *fixture) write(t *testing.T, fields string) {
	t.Helper()
	writeFile(t, f.path, strings.ReplaceAll(fmt.Sprintf(`apiVersion: pullgate.io/v1alpha1
kind: PullgateConfig
runtimeEndpoint: unix://DIR/containerd.sock
registryConfigPath: DIR/certs.d
stateDir: DIR/state
policies:
- name: local
  images: [%q]
  mode: skip
`, f.registry+"/**")+fields, "DIR", f.dir))
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// pull asks the proxy to pull from the fixture's registry, as kubelet does without
// credentials of its own.
func (f *fixture) pull(ctx context.Context) error {
	_, err := f.d.proxy.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: f.registry + "/team/app:v1"}})
	return err
}

func TestLoad(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	writeFile(t, good, "apiVersion: pullgate.io/v1alpha1\nkind: PullgateConfig\nlisten: unix:///run/file.sock\nstateDir: /var/lib/file\n")
	bad := filepath.Join(dir, "bad.yaml")
	writeFile(t, bad, "apiVersion: pullgate.io/v1alpha1\nkind: PullgateConfig\nlog: {format: xml}\nauth: {nodeCredentials: sometimes}\n")
	tests := []struct {
		name       string
		l          loader
		wantListen string
		wantState  string
		wantErr    []string // all in the error
	}{
		{name: "file", l: loader{path: good}, wantListen: "unix:///run/file.sock", wantState: "/var/lib/file"},
		{name: "overrides", l: loader{path: good, listen: "unix:///run/flag.sock", stateDir: "/var/lib/flag"}, wantListen: "unix:///run/flag.sock", wantState: "/var/lib/flag"},
		{name: "every problem with the file's name", l: loader{path: bad}, wantErr: []string{bad, "log.format", "auth.nodeCredentials"}},
		{name: "an override is validated too", l: loader{path: good, listen: "/run/flag.sock"}, wantErr: []string{good, "listen"}},
		{name: "missing file", l: loader{path: filepath.Join(dir, "none.yaml")}, wantErr: []string{"none.yaml"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, err := tc.l.load()
			if tc.wantErr != nil {
				for _, want := range tc.wantErr {
					if err == nil || !strings.Contains(err.Error(), want) {
						t.Errorf("error = %v, want it to mention %q", err, want)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.Listen != tc.wantListen || c.StateDir != tc.wantState {
				t.Errorf("listen %q, stateDir %q; want %q, %q", c.Listen, c.StateDir, tc.wantListen, tc.wantState)
			}
		})
	}
}

func TestReloadNodeCredentials(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name          string
		before, after string
		// wantBefore and wantAfter are the users whose credentials a pull sends the registry.
		wantBefore, wantAfter []string
	}{{
		name:       "switched to never",
		before:     "auth: {files: [DIR/a.json], nodeCredentials: fallback}",
		after:      "auth: {files: [DIR/a.json], nodeCredentials: never}",
		wantBefore: []string{"user-a"},
		wantAfter:  nil,
	}, {
		name:       "switched to fallback",
		before:     "auth: {files: [DIR/a.json], nodeCredentials: never}",
		after:      "auth: {files: [DIR/a.json], nodeCredentials: fallback}",
		wantBefore: nil,
		wantAfter:  []string{"user-a"},
	}, {
		name:       "other files",
		before:     "auth: {files: [DIR/a.json]}",
		after:      "auth: {files: [DIR/b.json]}",
		wantBefore: []string{"user-a"},
		wantAfter:  []string{"user-b"},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			reg := newRegistry(t, false)
			f := newFixture(t, reg.host(), tc.before)
			f.pull(t.Context())
			if got := reg.seen(); !slices.Equal(got, tc.wantBefore) {
				t.Fatalf("before the reload, the registry saw %q, want %q", got, tc.wantBefore)
			}
			f.write(t, tc.after)
			f.d.reload()
			f.pull(t.Context())
			if got := reg.seen(); !slices.Equal(got, tc.wantAfter) {
				t.Errorf("after the reload, the registry saw %q, want %q", got, tc.wantAfter)
			}
		})
	}
}

func TestReloadResolveTimeout(t *testing.T) {
	t.Parallel()
	reg := newRegistry(t, true)
	f := newFixture(t, reg.host(), "auth: {files: []}\nverification: {timeout: 1h}")
	f.write(t, "auth: {files: []}\nverification: {timeout: 100ms}")
	f.d.reload()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	start := time.Now()
	err := f.pull(ctx)
	if err == nil || !strings.Contains(err.Error(), "RegistryUnavailable") {
		t.Errorf("pull from a registry that never answers: %v, want RegistryUnavailable", err)
	}
	if elapsed := time.Since(start); elapsed > 10*time.Second {
		t.Errorf("resolving gave up after %s, want about the reloaded 100ms", elapsed)
	}
}

func TestReloadLog(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, after string
		// probe is the level logged at after the reload.
		probe slog.Level
		// want is the probe's line without its time, "" if it must not be written.
		want string
	}{
		{name: "format", after: "log: {format: text}", probe: slog.LevelInfo, want: "level=INFO msg=probe component=test\n"},
		{name: "more detail", after: "log: {level: debug}", probe: slog.LevelDebug, want: `level":"DEBUG","msg":"probe","component":"test"}` + "\n"},
		{name: "less detail", after: "log: {level: error}", probe: slog.LevelInfo},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t, "registry.example.com", "log: {format: json, level: info}")
			// Derived before the reload, as the proxy's loggers are.
			logger := f.d.logger.With("component", "test")
			f.write(t, tc.after)
			f.d.reload()
			before := len(f.logs.String())
			logger.Log(t.Context(), tc.probe, "probe")
			got := f.logs.String()[before:]
			// The time changes: the line is checked from the level on.
			if i := strings.Index(got, "level"); i > 0 {
				got = got[i:]
			}
			if got != tc.want {
				t.Errorf("logged %q, want %q (without the time)", got, tc.want)
			}
		})
	}
}

func TestReloadRefused(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		file func(t *testing.T, f *fixture) // breaks the file
	}{{
		name: "not YAML",
		file: func(t *testing.T, f *fixture) { writeFile(t, f.path, "apiVersion: [\n") },
	}, {
		// Valid changes next to an invalid one are refused too.
		name: "one field invalid",
		file: func(t *testing.T, f *fixture) {
			f.write(t, "auth: {files: [DIR/a.json], nodeCredentials: never}\nlog: {format: text}\nshutdownGracePeriod: 1s\nverification: {timeout: -1s}")
		},
	}, {
		name: "unknown field",
		file: func(t *testing.T, f *fixture) {
			f.write(t, "auth: {files: [DIR/a.json], nodeCredentials: never}\nlog: {format: text}\nverifcation: {}")
		},
	}, {
		name: "removed",
		file: func(t *testing.T, f *fixture) {
			if err := os.Remove(f.path); err != nil {
				t.Fatal(err)
			}
		},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			reg := newRegistry(t, false)
			f := newFixture(t, reg.host(), "auth: {files: [DIR/a.json]}\nlog: {format: json}\nshutdownGracePeriod: 20s")
			tc.file(t, f)
			f.d.reload()
			lines := f.logs.jsonLines(t) // the log is still JSON
			if last := lines[len(lines)-1]; last["msg"] != "configuration reload refused, keeping the running configuration" || last["level"] != "ERROR" {
				t.Errorf("last log line %v, want the refusal", last)
			}
			f.pull(t.Context())
			if got := reg.seen(); !slices.Equal(got, []string{"user-a"}) {
				t.Errorf("after the refused reload, the registry saw %q, want the node credentials kept", got)
			}
			if g := f.d.current.ShutdownGracePeriod.Duration; g != 20*time.Second {
				t.Errorf("shutdownGracePeriod %s after the refused reload, want 20s kept", g)
			}
		})
	}
}

func TestReloadNamesRestartOnlyFields(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, after string
		want        []any // the warning's fields, nil for no warning
	}{{
		name:  "changed",
		after: "listen: unix://DIR/other.sock\ncontainerdNamespace: other\nverification: {verifyPresentImages: false}\nlog: {level: debug}",
		want:  []any{"listen", "containerdNamespace", "verification.verifyPresentImages"},
	}, {
		name:  "only fields that reload",
		after: "log: {level: debug, format: json}\nshutdownGracePeriod: 1s\nauth: {nodeCredentials: never}\nverification: {timeout: 5s, cacheTTL: 1h, maxSignatures: 3}\ndefaultAction: allow",
	}, {
		name:  "unchanged",
		after: "",
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t, "registry.example.com", "")
			f.write(t, tc.after)
			f.d.reload()
			var got []any
			warned := 0
			for _, l := range f.logs.jsonLines(t) {
				if l["level"] == "WARN" && strings.HasPrefix(l["msg"].(string), "configuration reloaded") {
					warned++
					got, _ = l["fields"].([]any)
				}
			}
			if warned > 1 || !slices.Equal(got, tc.want) {
				t.Errorf("%d warnings, fields %v; want %v", warned, got, tc.want)
			}
		})
	}
}

func TestRestartOnly(t *testing.T) {
	t.Parallel()
	off := false
	on := true
	tests := []struct {
		name   string
		change func(c *config.Config)
		want   []string
	}{
		{name: "nothing", change: func(*config.Config) {}},
		{name: "listen", change: func(c *config.Config) { c.Listen = "unix:///run/other.sock" }, want: []string{"listen"}},
		{name: "runtimeEndpoint", change: func(c *config.Config) { c.RuntimeEndpoint = "unix:///run/other.sock" }, want: []string{"runtimeEndpoint"}},
		{name: "containerdNamespace", change: func(c *config.Config) { c.ContainerdNamespace = "other" }, want: []string{"containerdNamespace"}},
		{name: "registryConfigPath", change: func(c *config.Config) { c.RegistryConfigPath = "/etc/other" }, want: []string{"registryConfigPath"}},
		{name: "stateDir", change: func(c *config.Config) { c.StateDir = "/var/lib/other" }, want: []string{"stateDir"}},
		{name: "metricsAddress", change: func(c *config.Config) { c.MetricsAddress = "" }, want: []string{"metricsAddress"}},
		{name: "verifyPresentImages off", change: func(c *config.Config) { c.Verification.VerifyPresentImages = &off }, want: []string{"verification.verifyPresentImages"}},
		{name: "verifyPresentImages on, as by default", change: func(c *config.Config) { c.Verification.VerifyPresentImages = &on }},
		{name: "cluster", change: func(c *config.Config) { c.Cluster = &config.Cluster{Kubeconfig: "/var/lib/kubelet/kubeconfig"} }, want: []string{"cluster"}},
		{name: "several", change: func(c *config.Config) { c.StateDir = "/var/lib/other"; c.Listen = "unix:///run/other.sock" }, want: []string{"listen", "stateDir"}},
		{name: "fields that reload", change: func(c *config.Config) {
			c.ShutdownGracePeriod.Duration = time.Second
			c.Log = config.Log{Format: "text", Level: "debug"}
			c.Auth = config.Auth{Files: []string{"/etc/other.json"}, NodeCredentials: "never"}
			c.Verification.Timeout.Duration = time.Second
			c.Verification.CacheTTL.Duration = time.Second
			c.Verification.TrustedRoot = "/etc/root.json"
			c.Verification.MaxSignatures = 1
			c.Verification.MaxBytes = 1
			c.DefaultAction = "allow"
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			next := config.Default()
			tc.change(&next)
			if got := restartOnly(config.Default(), next); !slices.Equal(got, tc.want) {
				t.Errorf("restartOnly = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestEveryFieldReloadsOrWaits keeps a field added to the configuration from being silently
// ignored by a reload: it must be applied by reload, or named by restartOnly.
func TestEveryFieldReloadsOrWaits(t *testing.T) {
	t.Parallel()
	reloads := []string{
		"shutdownGracePeriod", "log.format", "log.level", "auth.files", "auth.nodeCredentials",
		// verification.timeout also bounds resolution: Resolver.SetTimeout. The rest are
		// the policy's, which the verifier swaps whole.
		"verification.timeout", "verification.cacheTTL", "verification.trustedRoot",
		"verification.maxSignatures", "verification.maxBytes", "defaultAction", "policies",
	}
	fixed := []string{"apiVersion", "kind"}
	restart := []string{"listen", "runtimeEndpoint", "containerdNamespace", "registryConfigPath", "stateDir", "metricsAddress", "verification.verifyPresentImages", "cluster"}
	for _, field := range jsonFields(reflect.TypeFor[config.Config](), "") {
		if !slices.Contains(reloads, field) && !slices.Contains(fixed, field) && !slices.Contains(restart, field) {
			t.Errorf("%s neither reloads nor is named by restartOnly", field)
		}
	}
	off := false
	changed := config.Config{Listen: "x", RuntimeEndpoint: "x", ContainerdNamespace: "x", RegistryConfigPath: "x", StateDir: "x", MetricsAddress: "x", Verification: config.Verification{VerifyPresentImages: &off},
		Cluster: &config.Cluster{Kubeconfig: "/x"}}
	if got := restartOnly(config.Default(), changed); !slices.Equal(got, restart) {
		t.Errorf("restartOnly names %q, want %q", got, restart)
	}
}

// jsonFields lists the paths of a configuration struct's fields, into structs of its own.
func jsonFields(t reflect.Type, prefix string) []string {
	var fields []string
	for f := range t.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if f.Type.Kind() == reflect.Struct && f.Type.PkgPath() == t.PkgPath() && f.Type != reflect.TypeFor[config.Duration]() {
			fields = append(fields, jsonFields(f.Type, prefix+name+".")...)
			continue
		}
		fields = append(fields, prefix+name)
	}
	return fields
}

func TestShutdownGraceFromReload(t *testing.T) {
	t.Parallel()
	f := newFixture(t, "registry.example.com", "shutdownGracePeriod: 1h")
	f.write(t, "shutdownGracePeriod: 100ms")
	f.d.reload()

	// A call that runs until it is cancelled.
	inFlight := make(chan struct{})
	srv := grpc.NewServer(grpc.UnknownServiceHandler(func(_ any, s grpc.ServerStream) error {
		close(inFlight)
		<-s.Context().Done()
		return s.Context().Err()
	}))
	sock := filepath.Join(shortDir(t), "s.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	callErr := make(chan error, 1)
	go func() { callErr <- conn.Invoke(t.Context(), "/test.Slow/Call", &emptypb.Empty{}, &emptypb.Empty{}) }()
	<-inFlight

	metrics, metricsURL, metricsErr := startMetrics(t, f.d)
	done := make(chan struct{})
	go func() { f.d.shutdown(srv, metrics); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("shutdown still waiting after 10s; the reloaded grace period is 100ms")
	}
	if err := <-callErr; err == nil {
		t.Error("the call in flight was not cancelled")
	}
	select {
	case err := <-metricsErr:
		if !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("metrics server: %v, want it shut down", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("metrics server still serving after shutdown")
	}
	if resp, err := http.Get(metricsURL + "/healthz"); err == nil {
		resp.Body.Close()
		t.Error("metrics server still answers after shutdown")
	}
}

// startMetrics serves d's metrics server on a loopback port, as serve does.
func startMetrics(t *testing.T, d *daemon) (*http.Server, string, <-chan error) {
	t.Helper()
	srv := metricsServer(d.registry, d.proxy)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	url := "http://" + l.Addr().String()
	resp, err := http.Get(url + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/healthz: %s", resp.Status)
	}
	return srv, url, served
}

func TestMetricsServerCutsSlowHeaders(t *testing.T) {
	t.Parallel()
	srv := metricsServer(prometheus.NewRegistry(), nil)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Headers begun and never finished.
	if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: pullgate\r\n"); err != nil {
		t.Fatal(err)
	}
	// Before ReadTimeout, which would cut it too.
	c.SetReadDeadline(time.Now().Add(srv.ReadHeaderTimeout + 3*time.Second))
	var ne net.Error
	if _, err := io.ReadAll(c); errors.As(err, &ne) && ne.Timeout() {
		t.Errorf("connection with unfinished headers still open after %s", srv.ReadHeaderTimeout+3*time.Second)
	}
}

// shortDir returns a directory for Unix sockets, whose paths are limited to 108 bytes.
func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pg")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// With cluster set, the objects the node applied last are enforced from start, a change of
// them applies at once and is saved, and a reload of the file keeps them.
func TestClusterPolicy(t *testing.T) {
	t.Parallel()
	other, err := verify.ParseImage("other.example/team/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	denied := func(f *fixture) bool {
		d, byName := f.d.verifier.DecideByName(other, "default")
		return byName && !d.Allowed
	}
	extra := cluster.Applied{Name: "extra", Generation: 4, Spec: cluster.Spec{Rules: []verify.RuleSpec{{Name: "other", Images: []string{"other.example/**"}, Mode: verify.Skip}}}}
	const fields = "cluster: {kubeconfig: DIR/kubeconfig, nodeName: node-1}\n"

	f := newFixture(t, "registry.example", fields)
	if !denied(f) {
		t.Fatal("an image no rule matches is not denied under defaultAction: deny")
	}
	if err := f.d.applyCluster([]cluster.Applied{extra}); err != nil {
		t.Fatal(err)
	}
	if denied(f) {
		t.Error("an applied object's rule does not decide")
	}
	if saved, err := cluster.Load(f.d.current.StateDir); err != nil || len(saved) != 1 || saved[0].Name != "extra" {
		t.Errorf("saved %v, %v; want the applied object", saved, err)
	}
	f.d.reload()
	if denied(f) {
		t.Error("a reload of the file dropped the cluster's objects")
	}

	// A new start enforces what was saved, before any API server answers.
	again, err := newDaemon(loader{path: f.path}.load, f.logs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { again.conn.Close() })
	if d, byName := again.verifier.DecideByName(other, "default"); byName && !d.Allowed {
		t.Error("a restart does not enforce the objects applied before")
	}
	if err := again.applyCluster(nil); err != nil {
		t.Fatal(err)
	}
	if d, byName := again.verifier.DecideByName(other, "default"); !byName || d.Allowed {
		t.Error("the object's removal does not apply")
	}
	bad := cluster.Applied{Name: "bad", Spec: cluster.Spec{Rules: []verify.RuleSpec{{Name: "x", Images: []string{"x.io/**"}, Mode: "sometimes"}}}}
	if err := again.applyCluster([]cluster.Applied{bad}); err == nil {
		t.Error("objects that do not compile with the file were applied")
	}
	if saved, _ := cluster.Load(again.current.StateDir); len(saved) != 0 {
		t.Errorf("refused objects were saved: %v", saved)
	}
}
