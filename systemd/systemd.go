// Package systemd carries the files in this directory (units, kubelet drop-in, kubelet
// configuration snippet) so that `pullgate install` writes exactly the
// files that are reviewed and tested here.
package systemd

import "embed"

// Files holds the units and the kubelet files by their names in this directory.
//
//go:embed pullgate.service pullgate.socket 10-pullgate.conf kubelet-config.yaml
var Files embed.FS
