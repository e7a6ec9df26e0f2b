package main

import (
	"context"
	"flag"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/pullgate/pullgate/install"
)

// installFlags are shared by install and uninstall.
type installFlags struct {
	hostRoot, systemctl, healthz, kubeletConfig, proc string
	kubeletTimeout, kubeletSettle                     time.Duration
}

func (f *installFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.hostRoot, "host-root", "/", "the host's root directory (/host from the DaemonSet)")
	fs.StringVar(&f.systemctl, "systemctl", "", `command that runs the host's systemctl (default "systemctl"; with --host-root, the host's nsenter, run in the host's root, into PID 1's namespaces)`)
	fs.StringVar(&f.healthz, "kubelet-healthz", install.DefaultKubeletHealthz, "kubelet's health endpoint")
	fs.StringVar(&f.kubeletConfig, "kubelet-config", install.DefaultKubeletConfig, "kubelet's KubeletConfiguration file on the host")
	fs.StringVar(&f.proc, "proc", "/proc", "where to find the running kubelet, whose flags are checked (with hostPID, the host's)")
	fs.DurationVar(&f.kubeletTimeout, "kubelet-timeout", 2*time.Minute, "how long kubelet may take to be healthy after a restart")
	fs.DurationVar(&f.kubeletSettle, "kubelet-settle", install.DefaultSettle, "how long kubelet's healthz must answer 200 without a break to count as healthy")
}

func (f *installFlags) installer(stderr io.Writer, opts ...install.Option) *install.Installer {
	var systemctl install.Systemctl = install.Command{"systemctl"}
	if f.hostRoot != "/" {
		systemctl = install.HostSystemctl{Root: f.hostRoot}
	}
	if f.systemctl != "" {
		systemctl = install.Command(strings.Fields(f.systemctl))
	}
	opts = append(opts, install.WithKubeletConfig(f.kubeletConfig), install.WithProc(f.proc), install.WithKubeletHealth(install.HTTPHealth(f.healthz, f.kubeletSettle)), install.WithLogger(slog.New(slog.NewTextHandler(stderr, nil))))
	return install.New(f.hostRoot, systemctl, opts...)
}

func installCmd(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("install", "install [--config FILE] [--keys DIR] [--runtime-service] [flags]")
	var f installFlags
	f.register(fs)
	var src install.Sources
	fs.StringVar(&src.Binary, "binary", "", "pullgate binary to install (default: this one)")
	fs.StringVar(&src.Config, "config", "", "configuration to install as "+install.ConfigPath+" (default: keep the installed one)")
	fs.StringVar(&src.Keys, "keys", "", "directory whose files are installed in "+install.KeysDir)
	runtimeService := fs.Bool("runtime-service", false, "point kubelet's containerRuntimeEndpoint at pullgate too")
	probeTimeout := fs.Duration("probe-timeout", time.Minute, "how long pullgate may take to answer on its socket")
	if err := parseFlags(fs, args, stdout, stderr); err != nil {
		return err
	}
	if src.Binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		src.Binary = exe
	}
	opts := []install.Option{install.WithTimeouts(*probeTimeout, f.kubeletTimeout)}
	if *runtimeService {
		opts = append(opts, install.WithRuntimeService())
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return f.installer(stderr, opts...).Install(ctx, src)
}

func uninstallCmd(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("uninstall", "uninstall [flags]")
	var f installFlags
	f.register(fs)
	if err := parseFlags(fs, args, stdout, stderr); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return f.installer(stderr, install.WithTimeouts(time.Minute, f.kubeletTimeout)).Uninstall(ctx)
}
