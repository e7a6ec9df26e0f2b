# pullgate: see README.md. Everything here runs as root on a Debian machine.

CONTAINERD2_VERSION ?= v2.4.2
# The versions test/kubelet's go.mod requires: k8s.io/kubernetes (kubelet and the control plane)
# and the etcd server module (the control plane's etcd).
KUBELET_VERSION := $(shell sed -n 's/^\(require\)\{0,1\}[[:space:]]*k8s\.io\/kubernetes \(v[^ ]*\).*/\2/p' test/kubelet/go.mod)
ETCD_VERSION := $(shell sed -n 's/^\(require\)\{0,1\}[[:space:]]*go\.etcd\.io\/etcd\/server\/v3 \(v[^ ]*\).*/\2/p' test/kubelet/go.mod)
COSIGN_VERSION ?= v2.6.5
# promtool, which tests the alerting rules in systemd/monitoring (Prometheus's Go module versions
# are v0.3xx for Prometheus 3.x).
PROMTOOL_VERSION ?= v0.316.0
# Helm's CLI, which lints, renders and installs charts/pullgate in the tests.
HELM_VERSION ?= v3.22.0
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
GO ?= go
BIN := $(CURDIR)/bin

PULLGATE := $(BIN)/pullgate
CONTAINERD2 := $(BIN)/containerd-$(CONTAINERD2_VERSION)/containerd
SHIM2 := $(BIN)/containerd-$(CONTAINERD2_VERSION)/containerd-shim-runc-v2
KUBELET := $(BIN)/kubelet-$(KUBELET_VERSION)/kubelet
KUBE_APISERVER := $(BIN)/kube-apiserver-$(KUBELET_VERSION)/kube-apiserver
KUBE_CONTROLLER_MANAGER := $(BIN)/kube-controller-manager-$(KUBELET_VERSION)/kube-controller-manager
KUBE_SCHEDULER := $(BIN)/kube-scheduler-$(KUBELET_VERSION)/kube-scheduler
KUBECTL := $(BIN)/kubectl-$(KUBELET_VERSION)/kubectl
ETCD := $(BIN)/etcd-$(ETCD_VERSION)/etcd
CONTROL_PLANE := $(KUBE_APISERVER) $(KUBE_CONTROLLER_MANAGER) $(KUBE_SCHEDULER) $(ETCD)
COSIGN := $(BIN)/cosign-$(COSIGN_VERSION)/cosign
PROMTOOL := $(BIN)/promtool-$(PROMTOOL_VERSION)/promtool
HELM := $(BIN)/helm-$(HELM_VERSION)/helm
export PULLGATE_BIN := $(PULLGATE)
export PULLGATE_CONTAINERD2 := $(CONTAINERD2)
export PULLGATE_KUBELET := $(KUBELET)
export PULLGATE_KUBE_APISERVER := $(KUBE_APISERVER)
export PULLGATE_KUBE_CONTROLLER_MANAGER := $(KUBE_CONTROLLER_MANAGER)
export PULLGATE_KUBE_SCHEDULER := $(KUBE_SCHEDULER)
export PULLGATE_ETCD := $(ETCD)
export PULLGATE_KUBECTL := $(KUBECTL)
export PULLGATE_PROMTOOL := $(PROMTOOL)
export PULLGATE_HELM := $(HELM)

.PHONY: all build image test unit e2e fuzz fuzz-brief bench bench-deps demo node cluster control-plane deps check clean

all: build

build: $(PULLGATE)

# Always rebuilt (Go's build cache makes that cheap), so the tests never run a stale binary.
# Statically linked, so that the same binary runs on any node and in the installer image.
.PHONY: $(PULLGATE)
$(PULLGATE):
	CGO_ENABLED=0 $(GO) build -trimpath -buildvcs=false -ldflags "-X main.version=$(VERSION)" -o $@ ./cmd/pullgate

# The installer image the DaemonSet runs, as an OCI image layout in bin/pullgate-image; pushed
# when IMAGE names where (with the credentials of ~/.docker/config.json).
IMAGE ?=
image: $(PULLGATE)
	$(GO) run ./systemd/image/build -binary $(PULLGATE) -o $(BIN)/pullgate-image -version $(VERSION) $(if $(IMAGE),-push $(IMAGE))

# containerd 2.x from its Go module, built once per version.
$(CONTAINERD2):
	GOBIN=$(dir $@) $(GO) install -tags no_btrfs github.com/containerd/containerd/v2/cmd/containerd@$(CONTAINERD2_VERSION)

# Its runc shim, of the same version: the kubelet tests start containers through containerd 2.x,
# which finds the shim next to itself.
$(SHIM2):
	GOBIN=$(dir $@) $(GO) install github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$(CONTAINERD2_VERSION)

# The Kubernetes binaries' version is stamped as Kubernetes' own build does: kube-apiserver serves
# it at /version and derives its binary version (for compatibility versions and feature gates) from it.
KUBE_LDFLAGS := -X k8s.io/component-base/version.gitVersion=$(KUBELET_VERSION) \
	-X k8s.io/component-base/version.gitMajor=$(word 1,$(subst ., ,$(patsubst v%,%,$(KUBELET_VERSION)))) \
	-X k8s.io/component-base/version.gitMinor=$(word 2,$(subst ., ,$(patsubst v%,%,$(KUBELET_VERSION)))) \
	-X k8s.io/component-base/version.gitTreeState=clean

# The real kubelet, built once per version from the module in test/kubelet (its version is that
# module's k8s.io/kubernetes requirement). The first build takes minutes; Go's build cache keeps it.
$(KUBELET): test/kubelet/go.mod test/kubelet/go.sum
	@echo "build kubelet $(KUBELET_VERSION) (minutes on a cold build cache, seconds when warm)"
	cd test/kubelet && $(GO) build -trimpath -ldflags "$(KUBE_LDFLAGS)" -o $@ k8s.io/kubernetes/cmd/kubelet

# The control plane for cluster features (make cluster, test/cluster_test.go), from the same module
# and version as kubelet, and etcd at the version k8s.io/kubernetes requires (test/kubelet/etcd);
# kubectl for `make cluster` and test/daemonset_test.go. On 2 cores with kubelet's build cached: kube-apiserver about 4
# minutes, kube-controller-manager 2, kube-scheduler and etcd well under one; seconds once built.
control-plane: $(CONTROL_PLANE)

$(KUBE_APISERVER) $(KUBE_CONTROLLER_MANAGER) $(KUBE_SCHEDULER) $(KUBECTL): test/kubelet/go.mod test/kubelet/go.sum
	@echo "build $(notdir $@) $(KUBELET_VERSION) (minutes on a cold build cache, seconds when warm)"
	cd test/kubelet && $(GO) build -trimpath -ldflags "$(KUBE_LDFLAGS)" -o $@ k8s.io/kubernetes/cmd/$(notdir $@)

$(ETCD): test/kubelet/go.mod test/kubelet/go.sum test/kubelet/etcd/main.go
	@echo "build etcd $(ETCD_VERSION) from go.etcd.io/etcd/server/v3/embed (a minute cold, seconds warm)"
	cd test/kubelet && $(GO) build -trimpath -o $@ ./etcd

# The cosign CLI, for `make bench` to compare against.
$(COSIGN):
	GOBIN=$(dir $@) $(GO) install github.com/sigstore/cosign/v2/cmd/cosign@$(COSIGN_VERSION)

$(HELM):
	@echo "building helm $(HELM_VERSION) from its Go module (about 4 minutes the first time)"
	GOBIN=$(dir $@) $(GO) install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)

$(PROMTOOL):
	@echo "building promtool $(PROMTOOL_VERSION) from its Go module (about 5 minutes the first time)"
	GOBIN=$(dir $@) $(GO) install github.com/prometheus/prometheus/cmd/promtool@$(PROMTOOL_VERSION)

# The real parts the tests start, from Debian's packages: containerd 1.6, runc, systemd's tools
# (systemd-analyze, systemd-socket-activate) for the unit tests, and the static busybox that the
# kubelet tests' images run.
deps:
	@command -v containerd >/dev/null && command -v runc >/dev/null && command -v systemd-socket-activate >/dev/null && \
		dpkg -s busybox-static >/dev/null 2>&1 || \
		{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y containerd runc systemd busybox-static; }

check:
	@test -z "$$(gofmt -l cmd proxy verify test systemd install)" || { gofmt -l cmd proxy verify test systemd install; echo "gofmt needed"; exit 1; }
	$(GO) vet ./...

unit: deps
	$(GO) test -race -count=1 ./verify/... ./proxy/... ./cmd/... ./systemd/... ./install/...

e2e: deps $(PULLGATE) $(CONTAINERD2) $(SHIM2) $(KUBELET) $(CONTROL_PLANE) $(KUBECTL) $(PROMTOOL) $(HELM)
	$(GO) test -count=1 -timeout 15m ./test/...

# Fuzzing. Every parser of untrusted input has Go fuzz targets (func FuzzXxx in *_fuzz_test.go);
# `make unit` runs their seed corpora (f.Add and testdata/fuzz/FuzzXxx/) as tests. `make fuzz`
# fuzzes each target for FUZZTIME, one after the other, since go test fuzzes one target per run;
# a failing input is written to the package's testdata/fuzz/FuzzXxx/ and fails the run.
# FUZZMINIMIZETIME bounds the shrinking of each new input (go's default, 60s, can stall both
# workers for most of a short run). Budgets are counts of inputs, not durations: Go 1.26's fuzz
# coordinator can fail a run with "context deadline exceeded" at the end of a -fuzztime duration,
# with no failing input (go.dev/issue/75804, fixed in Go 1.27). 100000 inputs take 30 s to a few
# minutes per target on a 2-core machine.
FUZZTIME ?= 100000x
FUZZMINIMIZETIME ?= 1000x
FUZZ_PKGS := cmd proxy verify install systemd
fuzz:
	@grep -rHo --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*' $(FUZZ_PKGS) | \
		sed -E 's|^(.*)/[^/]*:func (Fuzz[A-Za-z0-9_]*)$$|./\1 \2|' | sort | \
		while read pkg name; do \
			echo "fuzz $$name in $$pkg for $(FUZZTIME)"; \
			$(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZETIME) $$pkg || exit 1; \
		done

# A short real fuzzing run of every target, as part of `make test`.
fuzz-brief:
	@$(MAKE) --no-print-directory fuzz FUZZTIME=3000x

test: check unit fuzz-brief e2e

demo: deps $(PULLGATE) $(CONTAINERD2) $(SHIM2) $(KUBELET)
	$(GO) run ./test/demo
	$(GO) run ./test/node -exit

# One node to try pullgate on by hand: a real kubelet, pullgate and containerd 2.x, kept running
# until Ctrl-C. NODE_FLAGS=-runtime puts kubelet's runtime service through pullgate too.
node: deps $(PULLGATE) $(CONTAINERD2) $(SHIM2) $(KUBELET)
	$(GO) run ./test/node $(NODE_FLAGS)

# A single-node cluster to try pullgate on by hand: etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, and the node of `make node` with kubelet registered as a Node, kept running until
# Ctrl-C. It prints the admin kubeconfig and a kubectl to use it with. See docs/cluster.md.
cluster: deps $(PULLGATE) $(CONTAINERD2) $(SHIM2) $(KUBELET) $(CONTROL_PLANE) $(KUBECTL)
	$(GO) run ./test/cluster $(CLUSTER_FLAGS)

# Debian's registry (CNCF Distribution), which `make bench` runs with htpasswd auth. Its package
# starts an unauthenticated registry on port 5000 as a service; that one is stopped and disabled.
bench-deps: deps
	@command -v docker-registry >/dev/null || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y docker-registry && \
		{ systemctl disable --now docker-registry.service 2>/dev/null || true; }; }

bench: bench-deps $(PULLGATE) $(CONTAINERD2) $(COSIGN) $(CONTROL_PLANE)
	COSIGN=$(COSIGN) $(GO) run ./test/bench

clean:
	rm -rf $(BIN)
