//go:build tools

// Package kubelet pins the kubelet the end-to-end tests run: `go build k8s.io/kubernetes/cmd/kubelet`
// in this directory (see the Makefile).
package kubelet

import _ "k8s.io/kubernetes/cmd/kubelet"
