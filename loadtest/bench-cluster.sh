#!/usr/bin/env bash
# bench-cluster.sh — the cost of replication: the same MQTT QoS 1 load against
#   badger-1  one node, the embedded default (Badger)
#   js-1      one node in cluster mode (embedded NATS JetStream, replicas 1)
#   js-3      three nodes in cluster mode on this machine (JetStream R3), the load on node 1
#   js-1-interval, js-3-interval   the same with cluster.sync: interval (fsync every second)
# each started fresh, one after another, on loopback; prints a table and writes
# loadtest/CLUSTER.md (raw lines: loadtest/cluster.jsonl). CPU is the sum over every node's
# process. Every load run is bounded (--duration, and `timeout 90`).
#
# Knobs: BENCH_SETUPS [all five], BENCH_SCALE [1] multiplies the message count; BENCH_REPEAT [3] runs per setup (the
# table shows the median by throughput); BENCH_SKIP_BUILD=1 uses bin/ as it is.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
BIN="$REPO/bin"
SCALE=${BENCH_SCALE:-1}
REPEAT=${BENCH_REPEAT:-3}
SECRET=$(od -An -tx1 -N24 /dev/urandom | tr -d " \n")
CLK_TCK=$(getconf CLK_TCK)
log() { printf '[bench-cluster] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
	log "building bin/fleetgate and bin/fleetgate-loadtest"
	go build -o "$BIN/fleetgate" ./cmd/fleetgate
	go build -o "$BIN/fleetgate-loadtest" ./cmd/fleetgate-loadtest
fi
LT="$BIN/fleetgate-loadtest"
WORK=$(mktemp -d -t fleetgate-bench-cluster.XXXXXX)
OUT="$WORK/cluster.jsonl"
: >"$OUT"
PIDS=()
stop_all() {
	for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do
		for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$p" 2>/dev/null || true
		wait "$p" 2>/dev/null || true
	done
	PIDS=()
}
trap 'stop_all; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

free_port() {
	local p
	for _ in $(seq 1 200); do
		p=$((10000 + RANDOM % 20000))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
	done
	die "no free port"
}
ticks() { # utime+stime of a pid
	local stat
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
	stat=${stat##*) }
	set -- $stat
	echo $((${12} + ${13}))
}
all_ticks() { local s=0 p; for p in "${PIDS[@]}"; do s=$((s + $(ticks "$p"))); done; echo $s; }

# start SETUP: starts the node(s) of SETUP and sets MQTT_PORT to node 1's.
start() {
	local setup=$1 n=1 replicas=0 i sync=always
	case $setup in
	badger-1) n=1 ;;
	js-1) n=1 replicas=1 ;;
	js-3) n=3 replicas=3 ;;
	js-1-interval) n=1 replicas=1 sync=interval ;;
	js-3-interval) n=3 replicas=3 sync=interval ;;
	*) die "unknown setup $setup" ;;
	esac
	local mqtt=() http=() route=()
	for i in $(seq 1 $n); do mqtt+=("$(free_port)"); http+=("$(free_port)"); route+=("$(free_port)"); done
	for i in $(seq 0 $((n - 1))); do
		local dir="$WORK/$setup/n$i"
		rm -rf "$dir" && mkdir -p "$dir"
		{
			echo "auth:"
			echo "  keys: [{id: bench, alg: HS256, secret: \"$SECRET\"}]"
			echo "rules:"
			echo "  - {id: none, topic: \"loadtest/never\", functions: [log]}"
			if [ "$replicas" -gt 0 ]; then
				local routes="" j
				for j in $(seq 0 $((n - 1))); do
					[ "$j" = "$i" ] && continue
					routes="$routes${routes:+, }nats://127.0.0.1:${route[$j]}"
				done
				echo "cluster:"
				echo "  node: gw-$i"
				echo "  replicas: $replicas"
				echo "  sync: $sync"
				echo "  nats:"
				echo "    embedded:"
				if [ "$n" -gt 1 ]; then
					echo "      cluster_listen: 127.0.0.1:${route[$i]}"
					echo "      routes: [$routes]"
				fi
			fi
		} >"$dir/config.yaml"
		"$BIN/fleetgate" serve --config "$dir/config.yaml" --data-dir "$dir/data" \
			--mqtt-addr "127.0.0.1:${mqtt[$i]}" --http-addr "127.0.0.1:${http[$i]}" >"$dir/log" 2>&1 &
		PIDS+=($!)
	done
	for i in $(seq 0 $((n - 1))); do
		local deadline=$((SECONDS + 90))
		until grep -q "fleetgate ready" "$WORK/$setup/n$i/log"; do
			[ $SECONDS -ge $deadline ] && { tail -n 20 "$WORK/$setup/n$i/log" >&2; die "$setup node $i not ready"; }
			sleep 0.1
		done
	done
	MQTT_PORT=${mqtt[0]}
}

N=$((10000 * SCALE))
log "work dir $WORK; $REPEAT runs per setup; 10 connections × $N messages, QoS 1, 128 B, inflight 64"
SETUPS=${BENCH_SETUPS:-"badger-1 js-1 js-3 js-1-interval js-3-interval"}
for setup in $SETUPS; do
	for rep in $(seq 1 "$REPEAT"); do
		start "$setup"
		before=$(all_ticks)
		res=$(timeout 90 "$LT" mqtt --broker "tcp://127.0.0.1:$MQTT_PORT" --clients 10 --messages "$N" --qos 1 --inflight 64 \
			--size 128 --duration 30s --drain-timeout 10s --client-prefix bench- --jwt-secret "$SECRET" --jwt-kid bench \
			--json --progress 0 2>"$WORK/lt.err") || true
		after=$(all_ticks)
		stop_all
		[ -n "$res" ] || { log "  $setup: no result: $(tail -n 3 "$WORK/lt.err" | tr '\n' ' ')"; continue; }
		cpu=$(awk -v a="$before" -v b="$after" -v t="$CLK_TCK" 'BEGIN {printf "%.3f", (b - a) / t}')
		printf '{"setup":"%s","cpu_seconds":%s,"result":%s}\n' "$setup" "$cpu" "$res" >>"$OUT"
		log "  $setup: $(echo "$res" | grep -o '"msgs_per_sec":[0-9.]*') cpu=${cpu}s"
	done
done
cp "$OUT" loadtest/cluster.jsonl
python3 - "$OUT" <<'EOF' | tee loadtest/CLUSTER.md
import json, sys, statistics
rows = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    rows.setdefault(r["setup"], []).append(r)
print("# Cluster mode: the cost of replication (`make bench-cluster`)\n")
print("Same machine, same run, same client: 10 MQTT connections, QoS 1, 128-byte payloads, 64 in flight each.")
print("Median run of each setup by throughput; CPU is every node's process together.\n")
print("| setup | msgs/s | p50 ack ms | p99 ack ms | CPU s per 100k msgs | vs badger-1 |")
print("|---|---:|---:|---:|---:|---:|")
base = None
for setup in ["badger-1", "js-1", "js-3", "js-1-interval", "js-3-interval"]:
    rs = rows.get(setup)
    if not rs:
        continue
    rs.sort(key=lambda r: r["result"]["msgs_per_sec"])
    r = rs[len(rs) // 2]
    res = r["result"]
    rate = res["msgs_per_sec"]
    if setup == "badger-1":
        base = rate
    acked = max(res["acked"], 1)
    cpu100k = r["cpu_seconds"] / acked * 100000
    ratio = f"{rate / base:.2f}×" if base else "—"
    print(f"| {setup} | {rate:,.0f} | {res['ack_latency_ms']['p50']:.2f} | {res['ack_latency_ms']['p99']:.2f} | {cpu100k:.2f} | {ratio} |")
EOF
log "wrote loadtest/CLUSTER.md"
