# pullgate: see README.md. Everything here runs as root on a Debian machine.

CONTAINERD2_VERSION ?= v2.4.2
COSIGN_VERSION ?= v2.6.5
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
GO ?= go
BIN := $(CURDIR)/bin

PULLGATE := $(BIN)/pullgate
CONTAINERD2 := $(BIN)/containerd-$(CONTAINERD2_VERSION)/containerd
COSIGN := $(BIN)/cosign-$(COSIGN_VERSION)/cosign
export PULLGATE_BIN := $(PULLGATE)
export PULLGATE_CONTAINERD2 := $(CONTAINERD2)

.PHONY: all build test unit e2e bench demo deps check clean

all: build

build: $(PULLGATE)

# Always rebuilt (Go's build cache makes that cheap), so the tests never run a stale binary.
.PHONY: $(PULLGATE)
$(PULLGATE):
	$(GO) build -trimpath -ldflags "-X main.version=$(VERSION)" -o $@ ./cmd/pullgate

# containerd 2.x from its Go module, built once per version.
$(CONTAINERD2):
	GOBIN=$(dir $@) $(GO) install -tags no_btrfs github.com/containerd/containerd/v2/cmd/containerd@$(CONTAINERD2_VERSION)

# The cosign CLI, for `make bench` to compare against.
$(COSIGN):
	GOBIN=$(dir $@) $(GO) install github.com/sigstore/cosign/v2/cmd/cosign@$(COSIGN_VERSION)

# The real parts the tests start, from Debian's packages: containerd 1.6, and systemd's tools
# (systemd-analyze, systemd-socket-activate) for the unit tests.
deps:
	@command -v containerd >/dev/null && command -v systemd-socket-activate >/dev/null || \
		{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y containerd systemd; }

check:
	@test -z "$$(gofmt -l cmd proxy verify test systemd install)" || { gofmt -l cmd proxy verify test systemd install; echo "gofmt needed"; exit 1; }
	$(GO) vet ./...

unit:
	$(GO) test -race -count=1 ./verify/... ./proxy/... ./cmd/... ./systemd/... ./install/...

e2e: deps $(PULLGATE) $(CONTAINERD2)
	$(GO) test -count=1 -timeout 15m ./test/...

test: check unit e2e

demo: deps $(PULLGATE)
	$(GO) run ./test/demo

bench: deps $(PULLGATE) $(CONTAINERD2) $(COSIGN)
	COSIGN=$(COSIGN) $(GO) run ./test/bench

clean:
	rm -rf $(BIN)
