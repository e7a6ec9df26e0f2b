package install

import (
	"crypto/rand"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// host is the host's file system under its root, by the host's absolute paths. No symbolic
// link is followed out of the root, and absolute ones not at all (they would lead into the
// installer's container, not the host): a link planted on the host cannot send a write
// elsewhere.
type host struct{ r *os.Root }

func openHost(root string) (host, error) {
	r, err := os.OpenRoot(root)
	if err != nil {
		return host{}, fmt.Errorf("open host root: %w", err)
	}
	return host{r}, nil
}

func (h host) Close() error { return h.r.Close() }

// rel is a host path as os.Root takes it.
func rel(path string) string {
	if p := strings.TrimLeft(path, "/"); p != "" {
		return p
	}
	return "."
}

func (h host) ReadFile(path string) ([]byte, error) {
	data, err := h.r.ReadFile(rel(path))
	return data, explain(path, err)
}

func (h host) Stat(path string) (fs.FileInfo, error) {
	fi, err := h.r.Stat(rel(path))
	return fi, explain(path, err)
}

func (h host) Lstat(path string) (fs.FileInfo, error) {
	fi, err := h.r.Lstat(rel(path))
	return fi, explain(path, err)
}

func (h host) Remove(path string) error { return explain(path, h.r.Remove(rel(path))) }

func (h host) Mkdir(path string, mode fs.FileMode) error {
	return explain(path, h.r.Mkdir(rel(path), mode))
}

func (h host) Chmod(path string, mode fs.FileMode) error {
	return explain(path, h.r.Chmod(rel(path), mode))
}

// explain says what an escape from the root means, since os.Root reports it in its terms.
func explain(path string, err error) error {
	if err != nil && strings.Contains(err.Error(), "path escapes from parent") {
		return fmt.Errorf("%w: a symbolic link on the way to %s is absolute or leads out of the host root, and the installer follows neither; replace it with the directory itself", err, path)
	}
	return err
}

// writeAtomic replaces path by data in one rename, so that a reader (systemd starting the
// binary, kubelet reading its configuration) sees the old file or the new one, never half.
func (h host) writeAtomic(path string, data []byte, mode fs.FileMode, owner *syscall.Stat_t) error {
	tmp := filepath.Join(filepath.Dir(rel(path)), "."+filepath.Base(path)+".pullgate-"+rand.Text()[:8])
	f, err := h.r.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return explain(path, err)
	}
	defer h.r.Remove(tmp)
	if err := fill(f, data, mode, owner); err != nil {
		return err
	}
	if err := h.r.Rename(tmp, rel(path)); err != nil {
		return explain(path, err)
	}
	return h.syncDir(filepath.Dir(rel(path)))
}

// syncDir makes a rename in dir durable: until the directory is synced, a power loss may bring
// back the old file, or a manifest that does not list a file already changed.
func (h host) syncDir(dir string) error {
	d, err := h.r.Open(dir)
	if err != nil {
		return err
	}
	if err := d.Sync(); err != nil {
		d.Close()
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return d.Close()
}

// fill writes and syncs a new file, with its mode and owner set before anyone can open it by
// its final name.
func fill(f *os.File, data []byte, mode fs.FileMode, owner *syscall.Stat_t) error {
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if owner != nil {
		if err := f.Chown(int(owner.Uid), int(owner.Gid)); err != nil {
			f.Close()
			return err
		}
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
