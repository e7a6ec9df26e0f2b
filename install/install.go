// Package install puts pullgate on a node and takes it off again: the binary, units,
// configuration and keys, and kubelet's image service endpoint, which is switched only after
// pullgate answered on its socket and switched back when kubelet does not come back healthy.
// Every file it changes is backed up first, and uninstall puts back exactly what was there.
package install

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/pullgate/pullgate/proxy/config"
	"github.com/pullgate/pullgate/systemd"
)

// Places on the host, relative to its root.
const (
	BinaryPath  = "/usr/local/bin/pullgate"
	ConfigPath  = config.DefaultPath
	KeysDir     = "/etc/pullgate/keys"
	UnitDir     = "/etc/systemd/system"
	KubeletDrop = "/etc/systemd/system/kubelet.service.d/10-pullgate.conf"
	Socket      = "/run/pullgate/pullgate.sock"
	// BackupDir is outside pullgate's own StateDirectory (/var/lib/pullgate), which the
	// sandboxed daemon may write: uninstall, as root, acts on what is in it.
	BackupDir = "/var/lib/pullgate-install"

	DefaultKubeletConfig  = "/var/lib/kubelet/config.yaml"
	DefaultKubeletHealthz = "http://127.0.0.1:10248/healthz"
	Endpoint              = "unix://" + Socket
)

// Systemctl runs systemctl on the host.
type Systemctl interface {
	Run(ctx context.Context, args ...string) error
}

// Sources are what Install puts on the host.
type Sources struct {
	Binary string // the pullgate binary
	Config string // configuration file; empty keeps the installed one
	Keys   string // directory whose files go to KeysDir; empty installs none
}

// Installer installs pullgate under a host root.
type Installer struct {
	root           string
	systemctl      Systemctl
	probe          func(ctx context.Context, socket string) error
	kubeletHealthy func(context.Context) error
	kubeletConfig  string
	proc           string
	runtimeService bool
	probeTimeout   time.Duration
	kubeletTimeout time.Duration
	log            *slog.Logger
}

// Option changes a default of New.
type Option func(*Installer)

// WithProbe replaces CRIProbe, the check that pullgate answers on its socket.
func WithProbe(probe func(ctx context.Context, socket string) error) Option {
	return func(in *Installer) { in.probe = probe }
}

// WithKubeletHealth replaces the check of kubelet's health
// (HTTPHealth(DefaultKubeletHealthz, DefaultSettle)).
func WithKubeletHealth(check func(context.Context) error) Option {
	return func(in *Installer) { in.kubeletHealthy = check }
}

// WithKubeletConfig names kubelet's KubeletConfiguration file on the host (DefaultKubeletConfig).
func WithKubeletConfig(path string) Option {
	return func(in *Installer) { in.kubeletConfig = path }
}

// WithProc names the proc file system in which to find the running kubelet ("/proc"; from a
// pod with hostPID, that is the host's).
func WithProc(dir string) Option {
	return func(in *Installer) { in.proc = dir }
}

// WithRuntimeService points kubelet's containerRuntimeEndpoint at pullgate too.
func WithRuntimeService() Option {
	return func(in *Installer) { in.runtimeService = true }
}

// WithTimeouts bounds the wait for pullgate to answer (60s) and for kubelet to be healthy
// after a restart (120s).
func WithTimeouts(probe, kubelet time.Duration) Option {
	return func(in *Installer) { in.probeTimeout, in.kubeletTimeout = probe, kubelet }
}

// WithLogger reports each step (default: nothing).
func WithLogger(l *slog.Logger) Option {
	return func(in *Installer) { in.log = l }
}

// New returns an installer for the host whose root directory is root ("/" on the host itself).
func New(root string, systemctl Systemctl, opts ...Option) *Installer {
	in := &Installer{
		root:           root,
		systemctl:      systemctl,
		probe:          CRIProbe,
		kubeletHealthy: HTTPHealth(DefaultKubeletHealthz, DefaultSettle),
		kubeletConfig:  DefaultKubeletConfig,
		proc:           "/proc",
		probeTimeout:   60 * time.Second,
		kubeletTimeout: 120 * time.Second,
		log:            slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	for _, o := range opts {
		o(in)
	}
	return in
}

// Install puts pullgate in place and starts it, then points kubelet at it once it answers.
// Running it again with the same sources changes nothing; with a new binary it upgrades in
// place, the socket staying open across the restart.
func (in *Installer) Install(ctx context.Context, src Sources) error {
	h, err := openHost(in.root)
	if err != nil {
		return fmt.Errorf("install: %w", err)
	}
	defer h.Close()
	p, err := in.prepare(h, src)
	if err != nil {
		return err
	}
	f := &files{h: h}
	if _, err := f.load(in.kubeletConfig); err != nil {
		return fmt.Errorf("install: %w", err)
	}
	f.m.KubeletConfig = in.kubeletConfig
	reload, restart, err := in.place(f, p)
	if err != nil {
		return err
	}
	if err := in.startPullgate(ctx, f, reload, restart, usesPullgate(p.kubeletBefore)); err != nil {
		return err
	}
	if bytes.Equal(p.kubeletBefore, p.kubeletAfter) && !f.m.Pending.Kubelet {
		in.log.Info("kubelet already uses pullgate", "config", in.kubeletConfig)
		return nil
	}
	return in.switchKubelet(ctx, f, p.kubeletBefore, p.kubeletAfter)
}

// plan is what Install puts on the host, read and checked before the first change.
type plan struct {
	units, daemonFiles          []file
	keys                        []key
	keysGiven                   bool // so that keys dropped from the source are removed
	kubeletBefore, kubeletAfter []byte
}

func (in *Installer) prepare(h host, src Sources) (plan, error) {
	bin, err := os.ReadFile(src.Binary)
	if err != nil {
		return plan{}, fmt.Errorf("install: read binary: %w", err)
	}
	var cfg []byte
	if src.Config != "" {
		if cfg, err = readConfig(src.Config); err != nil {
			return plan{}, err
		}
	} else if _, err := h.Stat(ConfigPath); err != nil {
		return plan{}, fmt.Errorf("install: no configuration at %s: pass --config FILE (systemd/config.yaml is an example; its defaultAction deny refuses every pull until policies are added)", ConfigPath)
	}
	p := plan{keysGiven: src.Keys != ""}
	if p.keys, err = readKeys(src.Keys); err != nil {
		return plan{}, err
	}
	if p.kubeletBefore, p.kubeletAfter, err = in.readKubelet(h); err != nil {
		return plan{}, err
	}
	p.units = []file{
		{UnitDir + "/pullgate.socket", unit("pullgate.socket"), 0o644},
		{UnitDir + "/pullgate.service", unit("pullgate.service"), 0o644},
		{KubeletDrop, unit("10-pullgate.conf"), 0o644},
	}
	p.daemonFiles = []file{{BinaryPath, bin, 0o755}}
	if cfg != nil {
		p.daemonFiles = append(p.daemonFiles, file{ConfigPath, cfg, 0o644})
	}
	for _, k := range p.keys {
		p.daemonFiles = append(p.daemonFiles, file{filepath.Join(KeysDir, k.name), k.data, 0o644})
	}
	if err := reachable(h, slices.Concat(p.units, p.daemonFiles, []file{{path: manifestPath}})); err != nil {
		return plan{}, fmt.Errorf("install: %w", err)
	}
	return p, nil
}

// readKubelet returns kubelet's configuration as it is and as it will be, once the running
// kubelet was checked to read nothing that overrides it.
func (in *Installer) readKubelet(h host) (before, after []byte, err error) {
	if fi, err := h.Lstat(in.kubeletConfig); err == nil && !fi.Mode().IsRegular() {
		return nil, nil, fmt.Errorf("install: kubelet configuration %s is not a regular file; point --kubelet-config at the file itself", in.kubeletConfig)
	}
	before, err = h.ReadFile(in.kubeletConfig)
	if err != nil {
		return nil, nil, fmt.Errorf("install: read kubelet configuration: %w; point --kubelet-config at the KubeletConfiguration file kubelet runs with", err)
	}
	after, err = setFields(before, in.endpoints())
	if err != nil {
		return nil, nil, fmt.Errorf("install: kubelet configuration %s: %w", in.kubeletConfig, err)
	}
	if err := in.checkRunningKubelet(h); err != nil {
		return nil, nil, fmt.Errorf("install: %w", err)
	}
	return before, after, nil
}

// place puts pullgate's files in place, and reports whether systemd must reload its units and
// pullgate restart, for this run's changes or those of an earlier run cut short.
func (in *Installer) place(f *files, p plan) (reload, restart bool, err error) {
	earlier := f.m.Pending
	// Marked pending before the first write (put saves the manifest first), cleared once done.
	f.m.Pending.DaemonReload, f.m.Pending.Restart = true, true
	unitsChanged, err := in.putAll(f, p.units)
	if err != nil {
		return false, false, err
	}
	reload = unitsChanged || earlier.DaemonReload
	f.m.Pending.DaemonReload = reload
	daemonChanged, err := in.putAll(f, p.daemonFiles)
	if err != nil {
		return false, false, err
	}
	if p.keysGiven {
		removed, err := in.removeDroppedKeys(f, p.keys)
		if err != nil {
			return false, false, fmt.Errorf("install: %w", err)
		}
		daemonChanged = daemonChanged || removed
	}
	restart = reload || daemonChanged || earlier.Restart
	f.m.Pending.Restart = restart
	return reload, restart, nil
}

// startPullgate starts pullgate, or restarts it behind its socket, and probes it. When kubelet
// already uses pullgate, an upgrade that does not answer is rolled back.
func (in *Installer) startPullgate(ctx context.Context, f *files, reload, restart, kubeletUsesIt bool) error {
	err := in.start(ctx, reload, restart)
	if err != nil && !kubeletUsesIt {
		return fmt.Errorf("install: %w; kubelet left as it was; see journalctl -u pullgate", err)
	}
	if err != nil {
		if rerr := in.rollback(ctx, f, reload); rerr != nil {
			return fmt.Errorf("install: %w; putting back the previous files: %w; kubelet uses pullgate: see journalctl -u pullgate now", err, rerr)
		}
		if serr := f.settled(); serr != nil {
			return fmt.Errorf("install: %w; put back the previous files, and pullgate answers again, but %w", err, serr)
		}
		return fmt.Errorf("install: %w; put back the previous files, and pullgate answers again; see journalctl -u pullgate", err)
	}
	in.log.Info("pullgate answers", "socket", Socket)
	if restart {
		if err := f.settled(); err != nil {
			return fmt.Errorf("install: %w", err)
		}
	}
	return nil
}

func (in *Installer) start(ctx context.Context, reload, restart bool) error {
	if reload {
		if err := in.systemctl.Run(ctx, "daemon-reload"); err != nil {
			return err
		}
	}
	if err := in.systemctl.Run(ctx, "enable", "pullgate.socket", "pullgate.service"); err != nil {
		return err
	}
	if err := in.systemctl.Run(ctx, "start", "pullgate.socket"); err != nil {
		return err
	}
	// The socket unit keeps the listening socket during a restart, so kubelet's calls wait.
	start := "start"
	if restart {
		start = "restart"
	}
	if err := in.systemctl.Run(ctx, start, "pullgate.service"); err != nil {
		return err
	}
	return in.probeSocket(ctx)
}

// switchKubelet points kubelet at pullgate, restarts it and waits for its health, and puts its
// previous configuration back if it is not healthy. With nothing left to write, it finishes
// the switch of an earlier run that was cut short before kubelet was seen healthy.
func (in *Installer) switchKubelet(ctx context.Context, f *files, before, after []byte) error {
	mode := fileMode(f.h, in.kubeletConfig)
	resumed := bytes.Equal(before, after)
	f.m.Pending.Kubelet = true
	if !resumed {
		if _, err := f.put(in.kubeletConfig, after, mode, false); err != nil {
			return err
		}
	}
	in.log.Info("switched kubelet to pullgate, restarting kubelet", "config", in.kubeletConfig, "endpoint", Endpoint, "resumed", resumed)
	err := in.restartKubelet(ctx)
	if err == nil {
		in.log.Info("kubelet healthy with pullgate")
		return f.done(func(p *pending) { p.Kubelet = false })
	}
	if perr := in.unswitchKubelet(f, before, mode, resumed); perr != nil {
		return fmt.Errorf("install: kubelet not healthy after the switch to pullgate (%v), and the previous %s could not be put back: %w", err, in.kubeletConfig, perr)
	}
	again := "kubelet is healthy again"
	if rerr := in.restartKubelet(ctx); rerr != nil {
		again = fmt.Sprintf("kubelet is not healthy with it either: %v", rerr)
	}
	if serr := f.done(func(p *pending) { p.Kubelet = false }); serr != nil {
		again += "; " + serr.Error()
	}
	return fmt.Errorf("install: kubelet not healthy after the switch to pullgate: %w; put back the previous %s and restarted kubelet; %s", err, in.kubeletConfig, again)
}

// unswitchKubelet puts back kubelet's configuration from before the switch: this run's copy,
// or for a switch resumed from an earlier run, the endpoints from before the first install.
func (in *Installer) unswitchKubelet(f *files, before []byte, mode fs.FileMode, resumed bool) error {
	if !resumed {
		_, err := f.put(in.kubeletConfig, before, mode, false)
		return err
	}
	o, ok := f.m.find(in.kubeletConfig)
	if !ok {
		return fmt.Errorf("no backup of %s", in.kubeletConfig)
	}
	_, err := in.revertKubelet(f, o)
	return err
}

// Uninstall points kubelet back at what it used before, while pullgate still answers, then
// stops pullgate and puts back every file as it was before the first install.
func (in *Installer) Uninstall(ctx context.Context) error {
	h, err := openHost(in.root)
	if err != nil {
		return fmt.Errorf("uninstall: %w", err)
	}
	defer h.Close()
	f := &files{h: h}
	found, err := f.load(in.kubeletConfig)
	if err != nil {
		return fmt.Errorf("uninstall: %w", err)
	}
	if !found {
		in.log.Info("nothing to uninstall", "manifest", manifestPath)
		return nil
	}
	kubelet, ok := f.m.find(f.m.KubeletConfig)
	if ok {
		changed, err := in.revertKubelet(f, kubelet)
		if err != nil {
			return fmt.Errorf("uninstall: kubelet configuration %s: %w; set its imageServiceEndpoint back by hand (the original is in %s), then run pullgate uninstall again", kubelet.Path, err, BackupDir)
		}
		if changed {
			in.log.Info("restored kubelet configuration, restarting kubelet", "config", kubelet.Path)
			if err := in.restartKubelet(ctx); err != nil {
				return fmt.Errorf("uninstall: kubelet not healthy with its restored configuration %s: %w; pullgate left running; fix kubelet, then run pullgate uninstall again", kubelet.Path, err)
			}
		}
	}
	if err := in.kubeletLeftPullgate(f); err != nil {
		return fmt.Errorf("uninstall: %w", err)
	}
	if err := in.systemctl.Run(ctx, "disable", "--now", "pullgate.service", "pullgate.socket"); err != nil {
		return fmt.Errorf("uninstall: %w", err)
	}
	for _, o := range slices.Backward(f.m.Files) {
		if o.Path == kubelet.Path {
			continue
		}
		if _, err := f.restore(o); err != nil {
			return fmt.Errorf("uninstall: %w", err)
		}
		in.log.Info("restored", "path", o.Path, "existed", o.Existed)
	}
	if err := in.systemctl.Run(ctx, "daemon-reload"); err != nil {
		return fmt.Errorf("uninstall: %w", err)
	}
	if err := f.removeBackups(slices.Concat(f.m.Files, f.m.Previous)); err != nil {
		return fmt.Errorf("uninstall: %w", err)
	}
	if err := f.h.Remove(manifestPath); err != nil {
		return fmt.Errorf("uninstall: %w", err)
	}
	// Directories the install created go too, unless something else was put in them since.
	for _, d := range slices.Backward(f.m.Dirs) {
		if err := f.h.Remove(d); err != nil && !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOTEMPTY) {
			return fmt.Errorf("uninstall: %w", err)
		}
	}
	in.log.Info("uninstalled")
	return nil
}

// kubeletLeftPullgate refuses while kubelet's configuration still leads to pullgate's socket
// after it was put back: it pointed there before the install (set by hand), so stopping pullgate
// would leave kubelet without an image service.
func (in *Installer) kubeletLeftPullgate(f *files) error {
	path := in.kubeletConfig
	data, err := f.h.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("read kubelet configuration: %w", err)
	}
	if keys := pullgateFields(data); len(keys) > 0 {
		return fmt.Errorf("kubelet configuration %s still points %s at pullgate, as it did before the install, so there is no earlier value to put back; pullgate left running: set %s to containerd's socket (unix:///run/containerd/containerd.sock), restart kubelet, then run pullgate uninstall again", path, strings.Join(keys, " and "), strings.Join(keys, " and "))
	}
	return in.flagsLeftPullgate(f.h)
}

// revertKubelet points kubelet's configuration back at what it used before pullgate.
func (in *Installer) revertKubelet(f *files, o original) (bool, error) {
	current, err := f.h.ReadFile(o.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return f.restore(o)
	}
	if err != nil {
		return false, err
	}
	orig, err := f.h.ReadFile(filepath.Join(BackupDir, o.Backup))
	if err != nil {
		return false, err
	}
	data, exact, err := revert(orig, current)
	if err != nil {
		return false, err
	}
	if exact {
		return f.restore(o)
	}
	if bytes.Equal(data, current) {
		return false, nil
	}
	in.log.Warn("kubelet configuration changed since pullgate install; setting back only its endpoints", "config", o.Path)
	fi, err := f.h.Stat(o.Path)
	if err != nil {
		return false, err
	}
	owner, _ := fi.Sys().(*syscall.Stat_t)
	return true, f.h.writeAtomic(o.Path, data, fi.Mode().Perm(), owner)
}

func (in *Installer) endpoints() []field {
	fs := []field{{key: endpointKeys[0], value: Endpoint}}
	if in.runtimeService {
		fs = append(fs, field{key: endpointKeys[1], value: Endpoint})
	}
	return fs
}

func (in *Installer) probeSocket(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, in.probeTimeout)
	defer cancel()
	if err := in.probe(ctx, filepath.Join(in.root, Socket)); err != nil {
		return fmt.Errorf("pullgate does not answer on %s within %s: %w", Socket, in.probeTimeout, err)
	}
	return nil
}

// rollback puts back the files as they were when pullgate last answered (before this run, or
// the earlier one it resumes), restarts pullgate and probes it.
func (in *Installer) rollback(ctx context.Context, f *files, reload bool) error {
	for _, o := range slices.Backward(f.m.Previous) {
		if _, err := f.restore(o); err != nil {
			return err
		}
	}
	if reload {
		if err := in.systemctl.Run(ctx, "daemon-reload"); err != nil {
			return err
		}
	}
	if err := in.systemctl.Run(ctx, "restart", "pullgate.service"); err != nil {
		return err
	}
	return in.probeSocket(ctx)
}

func (in *Installer) restartKubelet(ctx context.Context) error {
	if err := in.systemctl.Run(ctx, "restart", "kubelet.service"); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, in.kubeletTimeout)
	defer cancel()
	return in.kubeletHealthy(ctx)
}

type file struct {
	path string
	data []byte
	mode fs.FileMode
}

// putAll puts every file of pullgate's in place, keeping what each was when pullgate last
// answered for a rollback.
func (in *Installer) putAll(f *files, list []file) (bool, error) {
	changed := false
	for _, fl := range list {
		c, err := f.put(fl.path, fl.data, fl.mode, true)
		if err != nil {
			return false, err
		}
		if c {
			in.log.Info("installed", "path", fl.path)
		}
		changed = changed || c
	}
	return changed, nil
}

// reachable refuses, before anything is written, paths the installer could not write without
// leaving the host root or replacing something other than a file.
func reachable(h host, list []file) error {
	for _, fl := range list {
		fi, err := h.Lstat(fl.path)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return fmt.Errorf("%s: %w", fl.path, err)
		case !fi.Mode().IsRegular():
			return notRegular(fl.path)
		}
	}
	return nil
}

func notRegular(path string) error {
	return fmt.Errorf("%s: exists and is not a regular file (a symbolic link is not followed, so that uninstall can put it back); move it away first", path)
}

// removeDroppedKeys removes the keys the installer put in KeysDir that are no longer among
// keys, so that a key taken out of --keys stops being trusted. The manifest lists each since it
// was first installed, so uninstall puts back what was there before pullgate.
func (in *Installer) removeDroppedKeys(f *files, keys []key) (bool, error) {
	removed := false
	for _, o := range slices.Clone(f.m.Files) {
		dir, name := filepath.Split(o.Path)
		if dir != KeysDir+"/" || slices.ContainsFunc(keys, func(k key) bool { return k.name == name }) {
			continue
		}
		_, err := f.h.Lstat(o.Path)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return false, err
		}
		if err := f.remove(o.Path); err != nil {
			return false, err
		}
		in.log.Info("removed a key no longer in --keys", "path", o.Path)
		removed = true
	}
	return removed, nil
}

func unit(name string) []byte {
	data, err := systemd.Files.ReadFile(name)
	if err != nil {
		panic(err) // embedded at build time
	}
	return data
}

func fileMode(h host, path string) fs.FileMode {
	if fi, err := h.Stat(path); err == nil {
		return fi.Mode().Perm()
	}
	return 0o644
}

func readConfig(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("install: read configuration: %w", err)
	}
	c, err := config.Parse(data)
	if err == nil {
		err = withoutMissingFiles(c.Validate())
	}
	if err != nil {
		return nil, fmt.Errorf("install: configuration %s: %w; check it with pullgate check-config", path, err)
	}
	return data, nil
}

// withoutMissingFiles drops the problems of files the configuration names (keys, trusted
// root): they are host paths, installed along with it, and the unit's ExecStartPre checks them
// on the host before pullgate starts. The policy compiler formats rather than wraps its
// errors, so they are recognised by the operating system's message.
func withoutMissingFiles(err error) error {
	if err == nil {
		return nil
	}
	problems := []error{err}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		problems = j.Unwrap()
	}
	var kept []error
	for _, p := range problems {
		if !errors.Is(p, fs.ErrNotExist) && !strings.HasSuffix(p.Error(), syscall.ENOENT.Error()) {
			kept = append(kept, p)
		}
	}
	return errors.Join(kept...)
}

type key struct {
	name string
	data []byte
}

// readKeys reads the public keys in dir, leaving out a mounted Secret's hidden bookkeeping
// entries. Symbolic links are followed only within dir, as a Secret has them: a link to a file
// elsewhere (a secret of the node) is refused, since installed keys are readable by everyone.
func readKeys(dir string) ([]key, error) {
	if dir == "" {
		return nil, nil
	}
	r, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("install: read keys: %w", err)
	}
	defer r.Close()
	entries, err := fs.ReadDir(r.FS(), ".")
	if err != nil {
		return nil, fmt.Errorf("install: read keys: %w", err)
	}
	var keys []key
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		data, err := readKey(r, e.Name())
		if err != nil {
			return nil, fmt.Errorf("install: key %s: %w", filepath.Join(dir, e.Name()), err)
		}
		if data != nil {
			keys = append(keys, key{e.Name(), data})
		}
	}
	return keys, nil
}

// readKey returns the content of a key file, or nothing for an entry that is not a file.
func readKey(r *os.Root, name string) ([]byte, error) {
	fi, err := r.Stat(name)
	if err != nil && strings.Contains(err.Error(), "path escapes from parent") {
		return nil, errors.New("a symbolic link out of the directory (only links within it are followed, as a mounted Secret has them)")
	}
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, nil
	}
	data, err := r.ReadFile(name)
	if err != nil {
		return nil, err
	}
	return data, checkKey(data)
}

// checkKey accepts PEM public keys and certificates only: keys are installed readable by all.
func checkKey(data []byte) error {
	rest, n := data, 0
	for {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		n++
		if err := checkBlock(b); err != nil {
			return err
		}
	}
	if n == 0 || len(bytes.TrimSpace(rest)) > 0 {
		return errors.New("not a PEM public key or certificate")
	}
	return nil
}

func checkBlock(b *pem.Block) error {
	var err error
	switch {
	case strings.Contains(b.Type, "PRIVATE KEY"):
		return fmt.Errorf("holds a private key (%s): only public keys belong in --keys, since installed keys are readable by everyone on the node; remove it and keep it secret", b.Type)
	case b.Type == "PUBLIC KEY":
		_, err = x509.ParsePKIXPublicKey(b.Bytes)
	case b.Type == "CERTIFICATE":
		_, err = x509.ParseCertificate(b.Bytes)
	default:
		return fmt.Errorf("holds a %s block: only PEM public keys (PUBLIC KEY) and certificates (CERTIFICATE) are installed", b.Type)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", b.Type, err)
	}
	return nil
}
