package install

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
)

// endpointFlags are kubelet's command-line flags for the endpoint fields; a flag overrides the
// configuration file.
var endpointFlags = map[string]string{
	"imageServiceEndpoint":     "image-service-endpoint",
	"containerRuntimeEndpoint": "container-runtime-endpoint",
}

// checkRunningKubelet refuses when the running kubelet would go around pullgate whatever its
// configuration file says: a flag or a --config-dir drop-in that sets an endpoint elsewhere,
// or a --config that is not the file install edits. With hostPID, proc is the host's.
func (in *Installer) checkRunningKubelet(h host) error {
	kubelets, err := runningKubelets(in.proc)
	if err != nil {
		return fmt.Errorf("look for kubelet in %s: %w", in.proc, err)
	}
	if len(kubelets) == 0 {
		in.log.Warn("no running kubelet found: its flags and drop-in directory were not checked", "proc", in.proc)
		return nil
	}
	var problems []error
	for _, args := range kubelets {
		problems = append(problems, in.checkKubelet(h, args)...)
	}
	return errors.Join(problems...)
}

func (in *Installer) checkKubelet(h host, args []string) []error {
	var problems []error
	if c, ok := flagValue(args, "config"); ok && path.Clean(c) != path.Clean(in.kubeletConfig) {
		problems = append(problems, fmt.Errorf("kubelet runs with --config %s, not %s: pass --kubelet-config %s", c, in.kubeletConfig, c))
	}
	for _, f := range in.endpoints() {
		flag := endpointFlags[f.key]
		if v, ok := flagValue(args, flag); ok && !isPullgate(v) {
			problems = append(problems, fmt.Errorf("kubelet runs with --%s=%s, which overrides %s in its configuration file: remove the flag (kubeadm keeps kubelet's flags in /var/lib/kubelet/kubeadm-flags.env), restart kubelet, then run pullgate install again", flag, v, f.key))
		}
	}
	if dir, ok := flagValue(args, "config-dir"); ok {
		problems = append(problems, in.checkDropIns(h, dir)...)
	}
	return problems
}

// checkDropIns refuses drop-ins of kubelet's --config-dir that set an endpoint elsewhere.
func (in *Installer) checkDropIns(h host, dir string) []error {
	dropIns, problems := readDropIns(h, dir)
	for _, d := range dropIns {
		for _, f := range in.endpoints() {
			if v, ok := d.fields[f.key]; ok && !isPullgate(v) {
				problems = append(problems, fmt.Errorf("kubelet's drop-in %s sets %s: %v, which overrides its configuration file: remove it there or set it to %s, then run pullgate install again", d.path, f.key, v, Endpoint))
			}
		}
	}
	return problems
}

// flagsLeftPullgate refuses while the running kubelet is pointed at pullgate by a flag or a
// --config-dir drop-in: the installer never writes those, so it cannot set them back.
func (in *Installer) flagsLeftPullgate(h host) error {
	kubelets, err := runningKubelets(in.proc)
	if err != nil {
		return fmt.Errorf("look for kubelet in %s: %w", in.proc, err)
	}
	var found []string
	for _, args := range kubelets {
		for _, k := range endpointKeys {
			if v, ok := flagValue(args, endpointFlags[k]); ok && isPullgate(v) {
				found = append(found, fmt.Sprintf("its flag --%s=%s", endpointFlags[k], v))
			}
		}
		dir, ok := flagValue(args, "config-dir")
		if !ok {
			continue
		}
		dropIns, problems := readDropIns(h, dir)
		if len(problems) > 0 {
			return errors.Join(problems...)
		}
		for _, d := range dropIns {
			for _, k := range endpointKeys {
				if isPullgate(d.fields[k]) {
					found = append(found, fmt.Sprintf("%s in its drop-in %s", k, d.path))
				}
			}
		}
	}
	if len(found) > 0 {
		return fmt.Errorf("kubelet still uses pullgate through %s, which the installer did not set and cannot set back; pullgate left running: point it at containerd's socket (unix:///run/containerd/containerd.sock), restart kubelet, then run pullgate uninstall again", strings.Join(found, " and "))
	}
	return nil
}

type dropIn struct {
	path   string
	fields map[string]any
}

// readDropIns reads the drop-ins of kubelet's --config-dir: its *.conf files, which override
// its configuration file.
func readDropIns(h host, dir string) ([]dropIn, []error) {
	entries, err := fs.ReadDir(h.r.FS(), rel(dir))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, []error{fmt.Errorf("read kubelet's --config-dir %s: %w", dir, explain(dir, err))}
	}
	var dropIns []dropIn
	var problems []error
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".conf") {
			continue
		}
		p := path.Join(dir, e.Name())
		data, err := h.ReadFile(p)
		var m map[string]any
		if err == nil {
			m, err = decodeMap(data)
		}
		if err != nil {
			problems = append(problems, fmt.Errorf("kubelet's drop-in %s: %w", p, err))
			continue
		}
		dropIns = append(dropIns, dropIn{p, m})
	}
	return dropIns, problems
}

// runningKubelets returns the command lines of the kubelet processes under proc.
func runningKubelets(proc string) ([][]string, error) {
	entries, err := os.ReadDir(proc)
	if err != nil {
		return nil, err
	}
	var found [][]string
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		// A process gone meanwhile, or a kernel thread, has none.
		data, err := os.ReadFile(filepath.Join(proc, e.Name(), "cmdline"))
		if err != nil || len(data) == 0 {
			continue
		}
		args := strings.Split(strings.TrimSuffix(string(data), "\x00"), "\x00")
		if filepath.Base(args[0]) == "kubelet" {
			found = append(found, args)
		}
	}
	return found, nil
}

// flagValue returns the value kubelet takes for --name: the last one given, as --name=value
// or --name value.
func flagValue(args []string, name string) (string, bool) {
	value, found := "", false
	for i := 1; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			break
		}
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			value, found = v, true
		} else if a == "--"+name && i+1 < len(args) {
			value, found = args[i+1], true
			i++
		}
	}
	return value, found
}
