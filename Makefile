# pullgate: see README.md. Everything here runs as root on a Debian machine.

CONTAINERD2_VERSION ?= v2.4.2
KUBELET_VERSION := $(shell sed -n 's/^require k8s.io\/kubernetes //p' test/kubelet/go.mod)
COSIGN_VERSION ?= v2.6.5
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
GO ?= go
BIN := $(CURDIR)/bin

PULLGATE := $(BIN)/pullgate
CONTAINERD2 := $(BIN)/containerd-$(CONTAINERD2_VERSION)/containerd
SHIM2 := $(BIN)/containerd-$(CONTAINERD2_VERSION)/containerd-shim-runc-v2
KUBELET := $(BIN)/kubelet-$(KUBELET_VERSION)/kubelet
COSIGN := $(BIN)/cosign-$(COSIGN_VERSION)/cosign
export PULLGATE_BIN := $(PULLGATE)
export PULLGATE_CONTAINERD2 := $(CONTAINERD2)
export PULLGATE_KUBELET := $(KUBELET)

.PHONY: all build image test unit e2e fuzz fuzz-brief bench bench-deps demo node deps check clean

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

# The real kubelet, built once per version from the module in test/kubelet (its version is that
# module's k8s.io/kubernetes requirement). The first build takes minutes; Go's build cache keeps it.
$(KUBELET): test/kubelet/go.mod test/kubelet/go.sum
	cd test/kubelet && $(GO) build -trimpath -ldflags "-X k8s.io/component-base/version.gitVersion=$(KUBELET_VERSION)" \
		-o $@ k8s.io/kubernetes/cmd/kubelet

# The cosign CLI, for `make bench` to compare against.
$(COSIGN):
	GOBIN=$(dir $@) $(GO) install github.com/sigstore/cosign/v2/cmd/cosign@$(COSIGN_VERSION)

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

e2e: deps $(PULLGATE) $(CONTAINERD2) $(SHIM2) $(KUBELET)
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

# Debian's registry (CNCF Distribution), which `make bench` runs with htpasswd auth. Its package
# starts an unauthenticated registry on port 5000 as a service; that one is stopped and disabled.
bench-deps: deps
	@command -v docker-registry >/dev/null || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y docker-registry && \
		{ systemctl disable --now docker-registry.service 2>/dev/null || true; }; }

bench: bench-deps $(PULLGATE) $(CONTAINERD2) $(COSIGN)
	COSIGN=$(COSIGN) $(GO) run ./test/bench

clean:
	rm -rf $(BIN)
