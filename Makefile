# Dockward: make help lists the targets.
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X main.version=$(VERSION)
# HTTP/2 is left out: Dockward talks HTTP/1.1 to the engine, the registry and
# its own clients, and the bundled HTTP/2 code is half a megabyte.
GOFLAGS_BUILD := -trimpath -tags nethttpomithttp2 -ldflags "$(LDFLAGS)"
PREFIX   ?= /usr/local
# End-to-end scenarios wait on containers, not CPU: run them side by side.
E2E_PARALLEL ?= 8
STATICCHECK := $(shell go env GOPATH)/bin/staticcheck

.PHONY: help build release install deps check test unit e2e fuzz bench demo clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-8s %s\n", $$1, $$2}'

build: ## static binary in bin/dockward
	CGO_ENABLED=0 go build $(GOFLAGS_BUILD) -o bin/dockward ./cmd/dockward

release: ## linux amd64 and arm64 binaries with SHA256SUMS in dist/
	rm -rf dist && mkdir -p dist
	for arch in amd64 arm64; do \
	  CGO_ENABLED=0 GOOS=linux GOARCH=$$arch go build $(GOFLAGS_BUILD) -o dist/dockward-linux-$$arch ./cmd/dockward || exit 1; \
	done
	cd dist && sha256sum dockward-linux-* > SHA256SUMS && cat SHA256SUMS

# `make build && sudo make install`: install uses the binary that build made
# (root's PATH may have no go) and builds only when there is none.
bin/dockward:
	$(MAKE) build

install: bin/dockward ## install bin/dockward, the systemd unit and a sample config (as root; DESTDIR=, PREFIX=)
	install -D -m 0755 bin/dockward $(DESTDIR)$(PREFIX)/bin/dockward
	install -d -m 0755 $(DESTDIR)/etc/systemd/system
	sed 's|/usr/local/bin/dockward|$(PREFIX)/bin/dockward|g' deploy/systemd/dockward.service >$(DESTDIR)/etc/systemd/system/dockward.service
	chmod 0644 $(DESTDIR)/etc/systemd/system/dockward.service
	@test -e $(DESTDIR)/etc/dockward/config.json || install -D -m 0600 config.sample.json $(DESTDIR)/etc/dockward/config.json
	@echo "edit /etc/dockward/config.json, then: systemctl daemon-reload && systemctl enable --now dockward"

deps: ## install and start what the tests need (Docker engine, registry, promtool, ansible, …)
	.ci/setup

check: ## gofmt, go vet, unit tests with -race
	@out=$$(gofmt -l cmd internal deploy); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	go vet ./...
	go test -race -count=1 $$(go list ./... | grep -v /internal/e2e)

test: deps ## everything: gofmt, vet, staticcheck, unit and end-to-end tests against the real engine and registry
	@out=$$(gofmt -l cmd internal deploy); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	go vet ./...
	$(STATICCHECK) ./...
	.ci/vulncheck
	go test -race -count=1 -timeout 30m -parallel $(E2E_PARALLEL) ./...
	.ci/fuzz

unit: ## unit tests only (no Docker needed)
	go test -race -count=1 $$(go list ./... | grep -v -e /internal/e2e -e /deploy)

e2e: deps ## end-to-end tests only
	go test -count=1 -timeout 30m -parallel $(E2E_PARALLEL) -v ./internal/e2e

fuzz: ## every fuzz target for FUZZTIME (default 20000x: inputs) each
	.ci/fuzz

BENCH_OUT ?= bench.json
bench: ## the end-to-end benchmark (table for BENCHMARKS.md, JSON in $(BENCH_OUT)), then the Go micro-benchmarks
	go test -count=1 -timeout 60m -run TestBench -v ./internal/bench -args -dockward.full -dockward.out=$(abspath $(BENCH_OUT))
	go test -run '^$$' -bench . -benchmem -count 6 ./...

demo: build deps ## a local registry, a sample app, a good push and a bad one
	./deploy/demo/demo.sh

clean:
	rm -rf bin dist
