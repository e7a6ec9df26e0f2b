package proxy_test

import (
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pullgate/pullgate/proxy"
)

// answers reports whether something accepts connections on the socket at path.
func answers(path string) bool {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

func TestListen(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// prepare puts something at path before Listen; it may return a check to run after.
		prepare func(t *testing.T, path string) func(t *testing.T)
		wantErr bool
	}{{
		name:    "new socket in a new directory",
		prepare: func(t *testing.T, path string) func(t *testing.T) { return nil },
	}, {
		name: "stale socket",
		prepare: func(t *testing.T, path string) func(t *testing.T) {
			// A pullgate that died leaves its socket file behind, with nobody listening.
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				t.Fatal(err)
			}
			l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
			if err != nil {
				t.Fatal(err)
			}
			l.SetUnlinkOnClose(false)
			l.Close()
			if _, err := os.Lstat(path); err != nil {
				t.Fatalf("stale socket is gone before Listen: %v", err)
			}
			return nil
		},
	}, {
		name: "regular file",
		prepare: func(t *testing.T, path string) func(t *testing.T) {
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte("keep me"), 0o600); err != nil {
				t.Fatal(err)
			}
			return func(t *testing.T) {
				if b, err := os.ReadFile(path); err != nil || string(b) != "keep me" {
					t.Errorf("regular file changed: %q, %v", b, err)
				}
			}
		},
		wantErr: true,
	}, {
		name: "directory",
		prepare: func(t *testing.T, path string) func(t *testing.T) {
			if err := os.MkdirAll(path, 0o755); err != nil {
				t.Fatal(err)
			}
			return func(t *testing.T) {
				if fi, err := os.Lstat(path); err != nil || !fi.IsDir() {
					t.Errorf("directory is gone: %v", err)
				}
			}
		},
		wantErr: true,
	}, {
		name: "live socket",
		prepare: func(t *testing.T, path string) func(t *testing.T) {
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				t.Fatal(err)
			}
			l, err := net.Listen("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { l.Close() })
			go func() {
				for {
					c, err := l.Accept()
					if err != nil {
						return
					}
					c.Close()
				}
			}()
			return func(t *testing.T) {
				if !answers(path) {
					t.Error("the live listener no longer answers")
				}
			}
		},
		wantErr: true,
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(socketDir(t), "run", "pg.sock")
			check := tc.prepare(t, path)
			l, err := proxy.Listen(path)
			if check != nil {
				defer check(t)
			}
			if tc.wantErr {
				if err == nil {
					l.Close()
					t.Fatal("Listen succeeded, want an error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			fi, err := os.Lstat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o660 {
				t.Errorf("socket mode = %v, want socket 0660", fi.Mode())
			}
			go func() {
				if c, err := l.Accept(); err == nil {
					c.Close()
				}
			}()
			if !answers(path) {
				t.Error("nothing answers on the new socket")
			}
		})
	}
}
