// Command build writes the installer image (see package image) as an OCI image layout, and
// pushes it when -push names where: `make image IMAGE=registry.example.com/pullgate/pullgate:v1`.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/pullgate/pullgate/systemd/image"
)

func main() {
	binary := flag.String("binary", "bin/pullgate", "statically linked pullgate binary")
	out := flag.String("o", "bin/pullgate-image", "OCI image layout directory to write")
	push := flag.String("push", "", "image reference to push to, with the credentials of ~/.docker/config.json")
	version := flag.String("version", "dev", "version label")
	flag.Parse()
	if err := build(*binary, *out, *push, *version); err != nil {
		fmt.Fprintln(os.Stderr, "build installer image:", err)
		os.Exit(1)
	}
}

func build(binary, out, push, version string) error {
	b, err := os.ReadFile(binary)
	if err != nil {
		return err
	}
	img, err := image.Installer(b, version)
	if err != nil {
		return err
	}
	if err := os.RemoveAll(out); err != nil {
		return err
	}
	p, err := layout.Write(out, empty.Index)
	if err != nil {
		return err
	}
	if err := p.AppendImage(img); err != nil {
		return err
	}
	d, err := img.Digest()
	if err != nil {
		return err
	}
	fmt.Printf("%s: %s\n", out, d)
	if push == "" {
		return nil
	}
	ref, err := name.ParseReference(push)
	if err != nil {
		return err
	}
	if err := remote.Write(ref, img, remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
		return err
	}
	fmt.Printf("pushed %s@%s\n", ref.Context(), d)
	return nil
}
