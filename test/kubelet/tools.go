//go:build tools

// Package kubelet pins the kubelet and the control plane the end-to-end tests run:
// `go build k8s.io/kubernetes/cmd/kubelet` (and kube-apiserver, kube-controller-manager,
// kube-scheduler, and kubectl for `make cluster`) in this directory (see the Makefile).
// etcd is built from ./etcd, at the go.etcd.io/etcd/server/v3 version k8s.io/kubernetes requires.
package kubelet

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
