package harness

import (
	"bufio"
	_ "embed"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// machineInit is PID 1 of a machine until it becomes systemd.
//
//go:embed machine-init.sh
var machineInit []byte

// Machine is a host with systemd as PID 1, as a node of a cluster is, made on this machine
// (whose own PID 1 may be anything) the way kind makes its nodes, without a container runtime:
// systemd in new mount, PID, UTS, IPC and cgroup namespaces, on the host's network, its root an
// overlay of the host's root file system under a tmpfs. It runs the host's own systemd,
// containerd and runc, reaches the host's loopback services, and writes nothing to the host.
type Machine struct {
	Name string
	// PID is the host's PID of the machine's systemd.
	PID int

	t       T
	base    string
	cmd     *exec.Cmd
	exited  chan struct{}
	cgroups []string
}

// machineUnits are the host's units that make no sense in a machine: logins, the host's kernel
// file systems, timers, networking (the network is the host's).
var machineMasked = []string{
	"getty@.service", "serial-getty@.service", "console-getty.service", "container-getty@.service", "getty.target",
	"sys-kernel-debug.mount", "sys-kernel-tracing.mount", "sys-kernel-config.mount", "sys-fs-fuse-connections.mount", "dev-hugepages.mount",
	"systemd-timesyncd.service", "systemd-modules-load.service", "systemd-pstore.service", "systemd-firstboot.service",
	"systemd-networkd.service", "systemd-networkd.socket", "systemd-networkd-wait-online.service", "systemd-network-generator.service",
	"systemd-binfmt.service", "proc-sys-fs-binfmt_misc.automount", "proc-sys-fs-binfmt_misc.mount", "systemd-remount-fs.service",
	"e2scrub_reap.service", "e2scrub_all.timer", "fstrim.timer", "apt-daily.timer", "apt-daily-upgrade.timer", "man-db.timer", "dpkg-db-backup.timer",
}

// machineTarget is what the machine boots to: the basic system and the units files name, not
// the services the host itself has enabled.
const machineTarget = "pullgate-machine.target"

// machineStartTimeout bounds systemd's boot; it takes under a second on an idle machine.
const machineStartTimeout = time.Minute

// MachineConfig is what a machine has over the host's root file system.
type MachineConfig struct {
	// Files are contents by their absolute path in the machine. /var/lib/containerd is a
	// directory of the host's own, since containerd's overlayfs snapshots cannot live on an
	// overlay.
	Files map[string][]byte
	// Binaries are the host's executables to copy, by their path in the machine: the host's
	// /tmp, where tests keep theirs, is not the machine's.
	Binaries map[string]string
	// Wants are the units started at boot.
	Wants []string
}

// StartMachine boots a machine named name. It is powered off and removed when the test ends,
// its journal shown if the test failed.
func StartMachine(t T, name string, cfg MachineConfig) *Machine {
	t.Helper()
	if _, err := exec.LookPath("unshare"); err != nil {
		Missing(t, "unshare not found: apt-get install util-linux")
	}
	if !isExecutable("/lib/systemd/systemd") {
		Missing(t, "/lib/systemd/systemd not found: apt-get install systemd")
	}
	base, err := os.MkdirTemp("/tmp", "pg-machine-")
	if err != nil {
		t.Fatal(err)
	}
	m := &Machine{Name: name, t: t, base: base, exited: make(chan struct{})}
	t.Cleanup(m.cleanup)
	for _, d := range []string{"root", "scratch", "containerd", "seed"} {
		if err := os.MkdirAll(filepath.Join(base, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	seed := map[string][]byte{
		"/etc/systemd/system/" + machineTarget:             fmt.Appendf(nil, "[Unit]\nDescription=pullgate test machine\nRequires=basic.target\nAfter=basic.target\nWants=%s\nAllowIsolate=yes\n", strings.Join(cfg.Wants, " ")),
		"/etc/systemd/system.conf.d/pullgate-machine.conf": []byte("[Manager]\nDefaultTimeoutStopSec=10s\n"),
	}
	for path, b := range cfg.Files {
		seed[path] = b
	}
	for path, b := range seed {
		// /var/lib/containerd is a directory of the host's (see machine-init.sh).
		dir := filepath.Join(base, "seed")
		if rest, ok := strings.CutPrefix(path, "/var/lib/containerd/"); ok {
			dir, path = filepath.Join(base, "containerd"), rest
		}
		if err := writeSeed(filepath.Join(dir, path), b); err != nil {
			t.Fatal(err)
		}
	}
	for path, bin := range cfg.Binaries {
		if err := copyBinary(bin, filepath.Join(base, "seed", path)); err != nil {
			t.Fatal(err)
		}
	}
	for _, u := range machineMasked {
		if err := os.Symlink("/dev/null", filepath.Join(base, "seed", "etc/systemd/system", u)); err != nil {
			t.Fatal(err)
		}
	}
	initPath := filepath.Join(base, "init.sh")
	if err := os.WriteFile(initPath, machineInit, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := m.makeCgroups(); err != nil {
		t.Fatal(err)
	}
	if err := m.launch(initPath); err != nil {
		t.Fatal(err)
	}
	if err := m.waitRunning(); err != nil {
		t.Fatal(err)
	}
	return m
}

func writeSeed(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

// copyBinary links (or, across file systems, copies) the executable from to.
func copyBinary(from, to string) error {
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		return err
	}
	if os.Link(from, to) == nil {
		return nil
	}
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, b, 0o755)
}

// makeCgroups makes the machine a cgroup of its own below the test's, in every hierarchy.
func (m *Machine) makeCgroups() error {
	f, err := os.Open("/proc/self/cgroup")
	if err != nil {
		return err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		_, rest, _ := strings.Cut(s.Text(), ":")
		ctrl, path, _ := strings.Cut(rest, ":")
		var dir string
		switch {
		case ctrl == "" && isDir("/sys/fs/cgroup/unified"):
			dir = "/sys/fs/cgroup/unified" + path
		case ctrl == "":
			dir = "/sys/fs/cgroup" + path
		case ctrl == "name=systemd":
			dir = "/sys/fs/cgroup/systemd" + path
		default:
			dir = "/sys/fs/cgroup/" + ctrl + path
		}
		dir = filepath.Join(dir, "pullgate-machine-"+filepath.Base(m.base))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("cgroup for the machine: %w", err)
		}
		m.cgroups = append(m.cgroups, dir)
		if ctrl == "cpuset" {
			// Empty, a cpuset admits no process.
			for _, file := range []string{"cpuset.cpus", "cpuset.mems"} {
				b, err := os.ReadFile(filepath.Join(filepath.Dir(dir), file))
				if err != nil {
					return err
				}
				if err := os.WriteFile(filepath.Join(dir, file), b, 0o644); err != nil {
					return err
				}
			}
		}
	}
	return s.Err()
}

func isDir(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.IsDir()
}

// launch starts init as PID 1 of the machine's namespaces. The launcher joins the machine's
// cgroups before unshare, so that the new cgroup namespace's root is the machine's cgroup; once
// PID 1 is there, the launcher leaves them again.
func (m *Machine) launch(init string) error {
	var join strings.Builder
	for _, d := range m.cgroups {
		fmt.Fprintf(&join, "echo $$ > %q/cgroup.procs\n", d)
	}
	logFile, err := os.Create(filepath.Join(m.base, "launcher.log"))
	if err != nil {
		return err
	}
	defer logFile.Close()
	m.cmd = exec.Command("/bin/bash", "-c", join.String()+`exec unshare --mount --uts --ipc --pid --cgroup --fork --propagation private "$@"`,
		"launcher", "/bin/bash", init, m.Name, m.base, machineTarget)
	m.cmd.Stdout, m.cmd.Stderr = logFile, logFile
	// Pdeathsig: a test binary killed by `go test -timeout` must not leave a machine behind
	// (unshare passes SIGKILL to PID 1, which takes the whole namespace).
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL}
	if err := m.cmd.Start(); err != nil {
		return fmt.Errorf("start the machine: %w", err)
	}
	go func() { _ = m.cmd.Wait(); close(m.exited) }()

	launcher := m.cmd.Process.Pid
	deadline := time.Now().Add(10 * time.Second)
	for m.PID == 0 {
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", launcher, launcher)); err == nil {
			if f := strings.Fields(string(b)); len(f) > 0 {
				m.PID, _ = strconv.Atoi(f[0])
				break
			}
		}
		select {
		case <-m.exited:
			return fmt.Errorf("the machine's launcher exited: %s", m.log())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the machine's PID 1 did not appear: %s", m.log())
		}
	}
	for _, d := range m.cgroups {
		if err := os.WriteFile(filepath.Join(filepath.Dir(d), "cgroup.procs"), []byte(strconv.Itoa(launcher)), 0o644); err != nil {
			return fmt.Errorf("move the launcher out of the machine's cgroup: %w", err)
		}
	}
	return os.WriteFile(filepath.Join(m.base, "go"), nil, 0o644)
}

// Exited says that the machine has powered off, or returns nil while it runs: waiting for what
// runs on it would only time out.
func (m *Machine) Exited() error {
	select {
	case <-m.exited:
		return fmt.Errorf("machine %s exited: %s", m.Name, m.log())
	default:
		return nil
	}
}

func (m *Machine) log() string {
	b, _ := os.ReadFile(filepath.Join(m.base, "launcher.log"))
	return string(tail(b, 8<<10))
}

// waitRunning waits until systemd has booted (running, or degraded: a unit failed).
func (m *Machine) waitRunning() error {
	deadline := time.Now().Add(machineStartTimeout)
	var state string
	for {
		out, _ := m.Command("systemctl", "is-system-running").Output()
		state = strings.TrimSpace(string(out))
		if state == "running" || state == "degraded" {
			return nil
		}
		select {
		case <-m.exited:
			return fmt.Errorf("machine %s exited while booting: %s", m.Name, m.log())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("machine %s not booted after %v (%q)", m.Name, machineStartTimeout, state)
		}
	}
}

// Command is name run in the machine, as on its console.
func (m *Machine) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"-t", strconv.Itoa(m.PID), "-m", "-u", "-i", "-p", "-C", "--", name}, args...)...)
}

// Run runs name in the machine and returns its output, failing the test if it fails.
func (m *Machine) Run(name string, args ...string) string {
	m.t.Helper()
	out, err := m.Command(name, args...).CombinedOutput()
	if err != nil {
		m.t.Fatalf("%s %s in machine %s: %v\n%s", name, strings.Join(args, " "), m.Name, err, out)
	}
	return string(out)
}

// Path is where the host sees path of the machine's file system.
func (m *Machine) Path(path string) string {
	return filepath.Join(fmt.Sprintf("/proc/%d/root", m.PID), path)
}

// ReadFile reads path in the machine.
func (m *Machine) ReadFile(path string) ([]byte, error) { return os.ReadFile(m.Path(path)) }

// Journal is the machine's journal of units (all of them when none is given).
func (m *Machine) Journal(units ...string) string {
	args := []string{"--no-pager", "-o", "short-precise"}
	for _, u := range units {
		args = append(args, "-u", u)
	}
	out, _ := m.Command("journalctl", args...).CombinedOutput()
	return string(out)
}

// sigPoweroff is SIGRTMIN+4, systemd's poweroff (Go's syscall has no SIGRTMIN).
const sigPoweroff = syscall.Signal(34 + 4)

// cleanup powers the machine off (SIGRTMIN+4 asks systemd for a poweroff), kills what is left,
// and removes its cgroups and files.
func (m *Machine) cleanup() {
	if m.t.Failed() && m.PID != 0 {
		m.t.Logf("journal of machine %s:\n%s", m.Name, tail([]byte(m.Journal()), 256<<10))
	}
	if m.cmd != nil && m.cmd.Process != nil && m.PID != 0 {
		_ = syscall.Kill(m.PID, sigPoweroff)
		select {
		case <-m.exited:
		case <-time.After(30 * time.Second):
			_ = syscall.Kill(m.PID, syscall.SIGKILL)
			<-m.exited
		}
	} else if m.cmd != nil && m.cmd.Process != nil {
		_ = m.cmd.Process.Kill()
		<-m.exited
	}
	var errs []error
	for i := len(m.cgroups) - 1; i >= 0; i-- {
		if err := removeCgroup(m.cgroups[i]); err != nil {
			errs = append(errs, err)
		}
	}
	unmountUnder(m.base)
	if err := os.RemoveAll(m.base); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		m.t.Errorf("remove machine %s: %v", m.Name, err)
	}
}

// removeCgroup kills what is left in dir's tree and removes it, deepest first.
func removeCgroup(dir string) error {
	var err error
	for range 50 {
		var dirs []string
		_ = filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		if len(dirs) == 0 {
			return nil
		}
		for i := len(dirs) - 1; i >= 0; i-- {
			if b, _ := os.ReadFile(filepath.Join(dirs[i], "cgroup.procs")); len(b) > 0 {
				for _, p := range strings.Fields(string(b)) {
					if pid, _ := strconv.Atoi(p); pid > 0 {
						_ = syscall.Kill(pid, syscall.SIGKILL)
					}
				}
			}
			err = syscall.Rmdir(dirs[i])
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("cgroup %s: %w", dir, err)
}
