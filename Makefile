# fleetgate — see README.md. Every target installs what it needs (Go modules come from the
# module proxy on first use).
GO        ?= go
GOFLAGS   ?=
BIN       := bin
FUZZTIME  ?= 30s
# Packages with goroutines of their own run under the race detector in `make test`.
RACE_PKGS := ./storage/... ./ingest/... ./broker/... ./functions/... ./rules/... ./event/... ./cluster/... ./shadow/... ./internal/procs/... ./internal/gctune/...
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)

.PHONY: all build run test test-unit test-race fuzz bench examples bench-peers bench-cluster vet clean browser

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/fleetgate ./cmd/fleetgate
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/fleetgate-loadtest ./cmd/fleetgate-loadtest

## run: the gateway on its embedded defaults (MQTT :1883, HTTP :8080, data in ./fleetgate-data)
run: build examples
	$(BIN)/fleetgate serve

examples:
	GOOS=wasip1 GOARCH=wasm $(GO) build -buildmode=c-shared -o $(BIN)/functions/threshold.wasm ./examples/functions/threshold

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt would change:"; gofmt -l $$(git ls-files '*.go'); exit 1; }

## test: everything CI runs — vet, build, the suite (race detector on concurrent packages). Every
## fuzz target's seed corpus runs as a plain test there; random fuzzing is `make fuzz` only, so
## that `make test` is deterministic.
test: vet build examples browser test-unit test-race

## browser: Debian's chromium for the console's browser test (installed with apt-get when
## missing). Under CI=true a failed install stops make test; elsewhere the test then skips.
browser:
	@bash scripts/install-chromium.sh || { if [ "$$CI" = true ]; then exit 1; fi; \
		echo "warning: no chromium: the console's browser test (TestConsoleInBrowser) will be skipped" >&2; }

test-unit:
	$(GO) test -count=1 -timeout 10m $$($(GO) list ./... | grep -v -E '/(storage|ingest|broker|functions|rules|event|cluster|shadow|internal/procs|internal/gctune)(/|$$)')
	# The wasm tests that build the Go example skip themselves under -race (wazero compiles a
	# Go-built module far too slowly with the race detector): run them here without it.
	$(GO) test -count=1 -timeout 5m -run 'Threshold|WASM' ./functions/
	# Allocation counts are checked without the race detector too (it allocates on its own).
	$(GO) test -count=1 -timeout 5m -run 'AllocatesOnce' ./functions/
	$(GO) test -count=1 -timeout 5m -run 'AllocatesNothing' ./storage/

test-race:
	$(GO) test -race -count=1 -timeout 12m $(RACE_PKGS)

## fuzz: every Fuzz target for FUZZTIME (default 30s; make fuzz FUZZTIME=5m for a longer run)
fuzz:
	FUZZTIME=$(FUZZTIME) bash scripts/fuzz.sh

## bench: the hot-path benchmarks (figures in BENCHMARKS.md)
bench:
	$(GO) test -run '^$$' -bench . -benchmem -benchtime 2s ./event/ ./storage/ ./ingest/... ./rules/ ./functions/ ./broker/ ./sdk/

bench-peers: build
	BENCH_SKIP_BUILD=1 bash loadtest/bench-peers.sh

## bench-cluster: MQTT QoS 1 on one Badger node, one JetStream node and three JetStream R3 nodes (loadtest/CLUSTER.md)
bench-cluster: build
	BENCH_SKIP_BUILD=1 bash loadtest/bench-cluster.sh

clean:
	rm -rf $(BIN)
