package image

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"strings"
	"testing"
)

func TestInstaller(t *testing.T) {
	t.Parallel()
	// Debian's static busybox stands in for a static pullgate.
	bin, err := os.ReadFile("/bin/busybox")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skip("needs Debian's busybox-static package")
	}
	img, err := Installer(bin, "v9.9.9")
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || strings.Join(cf.Config.Entrypoint, " ") != BinaryPath || strings.Join(cf.Config.Cmd, " ") != "version" ||
		cf.Config.Labels["org.opencontainers.image.version"] != "v9.9.9" {
		t.Errorf("config = %+v", cf)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers: %v, %v", layers, err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	found := false
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if "/"+h.Name == BinaryPath {
			b, _ := io.ReadAll(tr)
			found = h.Mode == 0o755 && bytes.Equal(b, bin)
		}
	}
	if !found {
		t.Errorf("the image does not hold the binary at %s, mode 0755", BinaryPath)
	}
	// The same binary makes the same image.
	again, _ := Installer(bin, "v9.9.9")
	d1, _ := img.Digest()
	d2, _ := again.Digest()
	if d1 != d2 {
		t.Errorf("two builds of one binary: %s and %s", d1, d2)
	}
}

func TestInstallerRefusesDynamicBinaries(t *testing.T) {
	t.Parallel()
	// coreutils' ls, dynamically linked on Debian.
	bin, err := os.ReadFile("/bin/ls")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	if _, err := Installer(bin, "dev"); err == nil || !strings.Contains(err.Error(), "CGO_ENABLED=0") {
		t.Errorf("Installer(/bin/ls) = %v, want a refusal naming CGO_ENABLED=0", err)
	}
	if _, err := Installer([]byte("#!/bin/sh\n"), "dev"); err == nil {
		t.Error("Installer accepted a script")
	}
}
