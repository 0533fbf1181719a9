# snigate: build, test and demo. Every target runs as root on Debian with Go
# installed; the packages the lab and the tests use come from apt.

GO       ?= go
BIN      := bin
SNIGATE  := $(BIN)/snigate
LABSERVER := $(BIN)/labserver
# chromium and libnss3-tools: the end-to-end test of a real browser through the
# gateway (with the CAs in an NSS database, as on an office PC).
RUNTIME_PKGS := iproute2 procps curl openssl ca-certificates systemd chromium libnss3-tools
GENERATE_PKGS := clang llvm libbpf-dev linux-libc-dev
BENCH_PKGS := squid-openssl iptables conntrack

.PHONY: all build deps deps-generate generate test unit e2e demo bench lab-down clean

all: build

# Install what the lab and the tests call, only when something is missing.
deps:
	@missing=""; for p in $(RUNTIME_PKGS); do \
		dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

deps-generate:
	@missing=""; for p in $(GENERATE_PKGS); do \
		dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

# Rebuild the committed bpf2go outputs from bpf/steer.c.
generate: deps-generate
	$(GO) generate ./bpf/

VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)

build:
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(SNIGATE) ./cmd/snigate
	$(GO) build -o $(LABSERVER) ./scripts/labserver

# All tests: unit tests and the end-to-end lab tests (root, network namespaces).
test: deps build
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 20m ./...

unit:
	$(GO) test -count=1 -short ./...

# Bring the lab up, run real clients through snigate, print what they saw,
# tear the lab down (also on failure).
demo: deps build
	SNIGATE=$(SNIGATE) LABSERVER=$(LABSERVER) scripts/demo.sh

# Measure direct forwarding, snigate and Squid side by side in the lab and
# print one table (also written to out/). BENCH_QUICK=1 for a short run; the
# other knobs are listed at the top of scripts/bench.sh. A squid service
# that installing the package started on the host is stopped and disabled:
# the benchmark runs its own Squid inside the lab.
bench: deps build
	@missing=""; for p in $(BENCH_PKGS); do \
		dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
		case "$$missing" in *squid-openssl*) \
			if command -v systemctl >/dev/null && systemctl is-active --quiet squid; then \
				echo "stopping the host squid service the package started"; \
				systemctl disable --now squid; \
			fi ;; \
		esac; \
	fi
	$(GO) build -o $(BIN)/benchload ./scripts/benchload
	SNIGATE=$(SNIGATE) LABSERVER=$(LABSERVER) BENCHLOAD=$(BIN)/benchload scripts/bench.sh

lab-down:
	scripts/lab.sh down

clean:
	rm -rf $(BIN)
