package install

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
)

// manifest records, for every host path the installer changed, what was there before pullgate,
// so that uninstall puts back exactly that: the same bytes, mode and owner, or no file at all.
type manifest struct {
	// KubeletConfig is the KubeletConfiguration file the install switched, which uninstall
	// switches back first.
	KubeletConfig string     `json:"kubeletConfig,omitempty"`
	Files         []original `json:"files"`
	// Dirs the installer created, parents first; uninstall removes those left empty.
	Dirs []string `json:"dirs"`
	// Pending is what a run set out to do after changing files and has not seen through yet,
	// so that a run cut short (a systemctl error, the pod killed) is finished by the next one
	// rather than taken for done because the files are already in place.
	Pending pending `json:"pending,omitzero"`
	// Previous records, for each of pullgate's files changed since pullgate last answered,
	// what it was then (backups named previousPrefix+...), so that an upgrade that does not
	// answer is rolled back even by a run that resumes one cut short.
	Previous []original `json:"previous,omitempty"`
}

const previousPrefix = "previous_"

type pending struct {
	DaemonReload bool `json:"daemonReload,omitempty"`
	Restart      bool `json:"restart,omitempty"` // pullgate.service, then the probe
	Kubelet      bool `json:"kubelet,omitempty"` // kubelet.service, then its health check
}

type original struct {
	Path    string      `json:"path"`
	Existed bool        `json:"existed"`
	Mode    fs.FileMode `json:"mode,omitempty"`
	UID     int         `json:"uid,omitempty"`
	GID     int         `json:"gid,omitempty"`
	Backup  string      `json:"backup,omitempty"` // file name in BackupDir
}

func (m *manifest) find(path string) (original, bool) {
	for _, o := range m.Files {
		if o.Path == path {
			return o, true
		}
	}
	return original{}, false
}

// files changes files under a host root, keeping the originals in BackupDir.
type files struct {
	h host
	m manifest
}

var manifestPath = filepath.Join(BackupDir, "manifest.json")

// load reads the manifest of an earlier install; none is an empty one. kubelet is kubelet's
// configuration file, the one path outside pullgate's own the manifest may name.
func (f *files) load(kubelet string) (bool, error) {
	data, err := f.h.ReadFile(manifestPath)
	if errors.Is(err, fs.ErrNotExist) {
		return false, f.noOldBackups()
	}
	if err != nil {
		return false, fmt.Errorf("read backup manifest: %w", err)
	}
	if err := json.Unmarshal(data, &f.m); err != nil {
		return false, fmt.Errorf("read backup manifest %s: %w", manifestPath, err)
	}
	if err := f.m.check(kubelet); err != nil {
		return false, fmt.Errorf("backup manifest %s: %w; it names only what the installer writes, so it was changed by something else: check the node, then put back the files it lists by hand", manifestPath, err)
	}
	return true, nil
}

// oldBackupDir is where installers before BackupDir kept the backups, writable by pullgate.
const oldBackupDir = "/var/lib/pullgate/backup"

// noOldBackups refuses to take a node whose backups are still where pullgate could change them
// for a fresh one: its originals would be lost, and they are to be checked before they are used.
func (f *files) noOldBackups() error {
	old := filepath.Join(oldBackupDir, "manifest.json")
	if _, err := f.h.Lstat(old); err != nil {
		return nil
	}
	return fmt.Errorf("backups of an earlier install are in %s, where pullgate itself may write: check that %s lists only pullgate's files and that the backups next to it are the originals, then move them: mv %s %s && chmod 0700 %s", oldBackupDir, old, oldBackupDir, BackupDir, BackupDir)
}

// check accepts only what the installer itself writes, since uninstall acts on the manifest
// with full root: its own paths, kubelet's configuration, backups named after them, and their
// parent directories.
func (m *manifest) check(kubelet string) error {
	if m.KubeletConfig != "" && m.KubeletConfig != kubelet {
		return fmt.Errorf("kubelet configuration %s, not %s: pass --kubelet-config %s if that is kubelet's file", m.KubeletConfig, kubelet, m.KubeletConfig)
	}
	var problems []error
	for _, o := range m.Files {
		problems = append(problems, o.check(kubelet, ""))
	}
	for _, o := range m.Previous {
		problems = append(problems, o.check(kubelet, previousPrefix))
	}
	for _, d := range m.Dirs {
		if !ownDir(d, kubelet) {
			problems = append(problems, fmt.Errorf("directory %q is not one the installer creates", d))
		}
	}
	return errors.Join(problems...)
}

// check accepts a record of a path the installer writes whose backup is named after it.
func (o original) check(kubelet, prefix string) error {
	switch {
	case !ownPath(o.Path, kubelet):
		return fmt.Errorf("path %q is not one the installer writes", o.Path)
	case o.Existed && o.Backup != prefix+backupName(o.Path), !o.Existed && o.Backup != "":
		return fmt.Errorf("backup %q of %s is not the installer's", o.Backup, o.Path)
	case o.Mode&^fs.ModePerm != 0 || o.UID < 0 || o.GID < 0:
		return fmt.Errorf("mode %v or owner %d:%d of %s", o.Mode, o.UID, o.GID, o.Path)
	}
	return nil
}

// ownPath reports whether the installer writes path: one of its files, a key, or kubelet's
// configuration.
func ownPath(path, kubelet string) bool {
	if path != filepath.Clean(path) || !filepath.IsAbs(path) {
		return false
	}
	switch path {
	case BinaryPath, ConfigPath, UnitDir + "/pullgate.socket", UnitDir + "/pullgate.service", KubeletDrop, kubelet:
		return true
	}
	dir, name := filepath.Split(path)
	return dir == KeysDir+"/" && name != "" && !strings.HasPrefix(name, ".")
}

// ownDir reports whether dir is a directory the installer may create: a parent of a path it
// writes.
func ownDir(dir, kubelet string) bool {
	if dir != filepath.Clean(dir) || !filepath.IsAbs(dir) || dir == "/" {
		return false
	}
	for _, p := range []string{BinaryPath, ConfigPath, KeysDir + "/key", KubeletDrop, kubelet, BackupDir + "/manifest.json"} {
		if strings.HasPrefix(p, dir+"/") {
			return true
		}
	}
	return false
}

func backupName(path string) string {
	return strings.ReplaceAll(strings.TrimPrefix(path, "/"), "/", "_")
}

// done clears what a run has now seen through and saves that.
func (f *files) done(clear func(*pending)) error {
	clear(&f.m.Pending)
	if err := f.save(); err != nil {
		return fmt.Errorf("save backup manifest: %w", err)
	}
	return nil
}

func (f *files) save() error {
	if err := f.mkdirBackup(); err != nil {
		return err
	}
	data, err := json.MarshalIndent(f.m, "", "  ")
	if err != nil {
		return err
	}
	return f.h.writeAtomic(manifestPath, append(data, '\n'), 0o600, nil)
}

// put makes path hold data with mode, and reports whether anything changed. Before the first
// change of a path, what was there is backed up and recorded, and with previous, also what it
// was when pullgate last answered. The manifest is saved before the file changes, so that an
// install cut short can still be undone.
func (f *files) put(path string, data []byte, mode fs.FileMode, previous bool) (bool, error) {
	fi, err := f.h.Lstat(path)
	switch {
	case err == nil:
		if fi.Mode().Perm() == mode {
			if cur, err := f.h.ReadFile(path); err == nil && bytes.Equal(cur, data) {
				return false, nil
			}
		}
	case !errors.Is(err, fs.ErrNotExist):
		return false, fmt.Errorf("install %s: %w", path, err)
	}
	if _, ok := f.m.find(path); !ok {
		if err := f.backup(path, fi); err != nil {
			return false, err
		}
	}
	if previous {
		if err := f.remember(path, fi); err != nil {
			return false, err
		}
	}
	if err := f.mkdirAll(filepath.Dir(path)); err != nil {
		return false, err
	}
	if err := f.save(); err != nil {
		return false, fmt.Errorf("install %s: %w", path, err)
	}
	var owner *syscall.Stat_t
	if fi != nil {
		owner, _ = fi.Sys().(*syscall.Stat_t)
	}
	if err := f.h.writeAtomic(path, data, mode, owner); err != nil {
		return false, fmt.Errorf("install %s: %w", path, err)
	}
	return true, nil
}

// remove removes a file the manifest already lists, recording it and saving the manifest
// first as put does.
func (f *files) remove(path string) error {
	fi, err := f.h.Lstat(path)
	if err != nil {
		return err
	}
	if err := f.remember(path, fi); err != nil {
		return err
	}
	if err := f.save(); err != nil {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	if err := f.h.Remove(path); err != nil {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return f.h.syncDir(filepath.Dir(rel(path)))
}

func (f *files) backup(path string, fi fs.FileInfo) error {
	o, err := f.keep(path, fi, "")
	if err != nil {
		return err
	}
	f.m.Files = append(f.m.Files, o)
	return nil
}

// remember records what path is before its first change since pullgate last answered.
func (f *files) remember(path string, fi fs.FileInfo) error {
	if slices.ContainsFunc(f.m.Previous, func(o original) bool { return o.Path == path }) {
		return nil
	}
	o, err := f.keep(path, fi, previousPrefix)
	if err != nil {
		return err
	}
	f.m.Previous = append(f.m.Previous, o)
	return nil
}

// settled forgets the previous versions once pullgate answers with the files in place (or with
// those put back), and what was pending for it.
func (f *files) settled() error {
	prev := f.m.Previous
	f.m.Previous = nil
	if err := f.done(func(p *pending) { p.DaemonReload, p.Restart = false, false }); err != nil {
		return err
	}
	return f.removeBackups(prev)
}

// removeBackups removes the backup files of records the manifest no longer lists.
func (f *files) removeBackups(list []original) error {
	for _, o := range list {
		if o.Backup == "" {
			continue
		}
		if err := f.h.Remove(filepath.Join(BackupDir, o.Backup)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// keep copies what is at path (described by fi, nil if nothing) into BackupDir, its name
// prefixed, and returns the record of it.
func (f *files) keep(path string, fi fs.FileInfo, prefix string) (original, error) {
	o := original{Path: path}
	if fi != nil {
		if !fi.Mode().IsRegular() {
			return original{}, fmt.Errorf("install %w", notRegular(path))
		}
		data, err := f.h.ReadFile(path)
		if err != nil {
			return original{}, fmt.Errorf("back up %s: %w", path, err)
		}
		o.Existed, o.Mode = true, fi.Mode().Perm()
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			o.UID, o.GID = int(st.Uid), int(st.Gid)
		}
		o.Backup = prefix + backupName(path)
		if err := f.mkdirBackup(); err != nil {
			return original{}, err
		}
		if err := f.h.writeAtomic(filepath.Join(BackupDir, o.Backup), data, 0o600, nil); err != nil {
			return original{}, fmt.Errorf("back up %s: %w", path, err)
		}
	}
	return o, nil
}

// restore puts back what was at o.Path before pullgate.
func (f *files) restore(o original) (bool, error) {
	if !o.Existed {
		err := f.h.Remove(o.Path)
		if errors.Is(err, fs.ErrNotExist) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("remove %s: %w", o.Path, err)
		}
		return true, nil
	}
	data, err := f.h.ReadFile(filepath.Join(BackupDir, o.Backup))
	if err != nil {
		return false, fmt.Errorf("restore %s: %w", o.Path, err)
	}
	if cur, err := f.h.ReadFile(o.Path); err == nil && bytes.Equal(cur, data) {
		if fi, err := f.h.Stat(o.Path); err == nil && fi.Mode().Perm() == o.Mode && ownedBy(fi, o.UID, o.GID) {
			return false, nil
		}
	}
	owner := &syscall.Stat_t{Uid: uint32(o.UID), Gid: uint32(o.GID)}
	if err := f.h.writeAtomic(o.Path, data, o.Mode, owner); err != nil {
		return false, fmt.Errorf("restore %s: %w", o.Path, err)
	}
	return true, nil
}

func ownedBy(fi fs.FileInfo, uid, gid int) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && int(st.Uid) == uid && int(st.Gid) == gid
}

// mkdirAll creates the missing directories of a host path and records them.
func (f *files) mkdirAll(dir string) error {
	if dir == "/" || dir == "." {
		return nil
	}
	if err := f.mkdirAll(filepath.Dir(dir)); err != nil {
		return err
	}
	err := f.h.Mkdir(dir, 0o755)
	if errors.Is(err, fs.ErrExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	f.m.Dirs = append(f.m.Dirs, dir)
	return nil
}

// mkdirBackup creates BackupDir for root alone: the originals may be secrets, and what is in
// it decides what uninstall writes as root.
func (f *files) mkdirBackup() error {
	if err := f.mkdirAll(BackupDir); err != nil {
		return err
	}
	if err := f.h.Chmod(BackupDir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", BackupDir, err)
	}
	return nil
}
