#!/usr/bin/env bash
# bench-peers.sh — run the same load against fleetgate, mosquitto and nats-server (MQTT on
# JetStream), one after another, on loopback, and write loadtest/RESULTS.md and
# loadtest/results.png from the measurements (raw data: loadtest/results.jsonl).
#
# Every server is started fresh for every case, with its data in a temporary directory,
# and stopped afterwards. Every load run is bounded: the generator stops publishing after
# --duration and is killed by `timeout` after 60 s whatever happens.
#
# Environment knobs (defaults in brackets):
#   BENCH_SCALE   multiply message counts by this factor [1]
#   BENCH_PEERS   which peers to run [fleetgate mosquitto nats]; with fleetgate come the bare
#                 fasthttp handler (HTTP cases) and the bare MQTT answerers (MQTT cases)
#   BENCH_REPEAT  runs per case, each on a fresh server; the report shows the median [3]
#   BENCH_CASES   a regular expression: run only the cases it matches [.]
#   BENCH_SKIP_BUILD=1  use the binaries in bin/ as they are
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
CACHE="$REPO/.cache"
BIN="$REPO/bin"
SCALE=${BENCH_SCALE:-1}
PEERS=${BENCH_PEERS:-"fleetgate mosquitto nats"}
REPEAT=${BENCH_REPEAT:-3}
CASES=${BENCH_CASES:-.}
NATS_VERSION=v2.15.2
SECRET=$(od -An -tx1 -N24 /dev/urandom | tr -d " \n") # 48 hex characters: HS256 wants at least 32 bytes
CLK_TCK=$(getconf CLK_TCK)

log() { printf '[bench-peers] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- prerequisites -------------------------------------------------------------------------
MOSQUITTO=$(command -v mosquitto || true)
[ -z "$MOSQUITTO" ] && [ -x /usr/sbin/mosquitto ] && MOSQUITTO=/usr/sbin/mosquitto
if [ -z "$MOSQUITTO" ]; then
	log "installing mosquitto (Debian package)"
	SUDO=""
	[ "$(id -u)" -ne 0 ] && SUDO="sudo"
	$SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
	MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
	[ -x "$MOSQUITTO" ] || die "mosquitto could not be installed"
fi
NATS="$CACHE/bin/nats-server"
if [ ! -x "$NATS" ]; then
	log "installing nats-server $NATS_VERSION into .cache/bin"
	mkdir -p "$CACHE/bin"
	GOBIN="$CACHE/bin" go install "github.com/nats-io/nats-server/v2@$NATS_VERSION"
fi
if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
	log "building bin/fleetgate and bin/fleetgate-loadtest"
	go build -o "$BIN/fleetgate" ./cmd/fleetgate
	go build -o "$BIN/fleetgate-loadtest" ./cmd/fleetgate-loadtest
fi
LT="$BIN/fleetgate-loadtest"
[ -x "$LT" ] || die "no $LT"

WORK=$(mktemp -d -t fleetgate-bench.XXXXXX)
OUT="$WORK/results.jsonl"
: >"$OUT"
SERVER_PID=""
SERVER_LOG=/dev/null
cleanup() {
	stop_server
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- helpers -------------------------------------------------------------------------------
# free_port prints a loopback TCP port nothing listens on.
free_port() {
	local p
	for _ in $(seq 1 200); do
		p=$((10000 + RANDOM % 20000)) # below the ephemeral range, where client sockets live
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"
			return
		fi
	done
	die "no free port"
}

wait_port() { # port seconds
	local deadline=$((SECONDS + $2))
	while ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
		[ $SECONDS -ge $deadline ] && return 1
		kill -0 "$SERVER_PID" 2>/dev/null || return 1
		sleep 0.05
	done
}

wait_log() { # file pattern seconds
	local deadline=$((SECONDS + $3))
	while ! grep -q "$2" "$1" 2>/dev/null; do
		[ $SECONDS -ge $deadline ] && return 1
		kill -0 "$SERVER_PID" 2>/dev/null || return 1
		sleep 0.05
	done
}

# start_server LOG CMD... starts a server in the background and remembers its pid.
start_server() {
	local logf=$1
	shift
	SERVER_LOG=$logf
	"$@" >"$logf" 2>&1 &
	SERVER_PID=$!
}

stop_server() {
	[ -n "$SERVER_PID" ] || return 0
	kill -TERM "$SERVER_PID" 2>/dev/null || true
	for _ in $(seq 1 100); do
		kill -0 "$SERVER_PID" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$SERVER_PID" 2>/dev/null || true
	wait "$SERVER_PID" 2>/dev/null || true
	SERVER_PID=""
}

cpu_ticks() { # utime+stime of SERVER_PID in clock ticks (fields 14 and 15 of /proc/PID/stat)
	local stat
	stat=$(cat "/proc/$SERVER_PID/stat" 2>/dev/null) || return 1
	stat=${stat##*) } # drop "pid (comm) ": comm may hold spaces
	set -- $stat
	echo $((${12} + ${13}))
}

peak_rss_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$SERVER_PID/status"; }

# measure PEER CASE VERSION -- LOADTEST-ARGS... runs one bounded load against the running
# server and appends a JSON line with the generator's result and the server's CPU and RSS.
measure() {
	local peer=$1 case=$2 version=$3
	shift 4
	local before res rc=0
	before=$(cpu_ticks) || { log "  $peer/$case: the server is gone before the run"; return 0; }
	res=$(timeout 60 "$LT" "$@" --json --progress 0 2>"$WORK/lt.err") || rc=$?
	if [ -z "$res" ]; then
		log "  $peer/$case: no result (exit $rc): $(tail -n 3 "$WORK/lt.err" | tr '\n' ' ')"
		return 0
	fi
	local after="" rss=""
	after=$(cpu_ticks) && rss=$(peak_rss_kb 2>/dev/null) || true
	if [ -z "$after" ] || [ -z "$rss" ]; then
		# The server died during the run: say so, keep its log, and record no CPU/RSS.
		log "  $peer/$case: the server exited during the run; its log: .cache/bench-logs/$peer-$case.log"
		mkdir -p "$CACHE/bench-logs"
		cp "$SERVER_LOG" "$CACHE/bench-logs/$peer-$case.log" 2>/dev/null || true
		printf '{"peer":"%s","case":"%s","version":"%s","exit":%d,"server_died":true,"cpu_seconds":0,"peak_rss_kb":0,"result":%s}\n' \
			"$peer" "$case" "$version" "$rc" "$res" >>"$OUT"
		return 0
	fi
	local cpu
	cpu=$(awk -v a="$before" -v b="$after" -v t="$CLK_TCK" 'BEGIN {printf "%.3f", (b - a) / t}')
	printf '{"peer":"%s","case":"%s","version":"%s","exit":%d,"cpu_seconds":%s,"peak_rss_kb":%s,"result":%s}\n' \
		"$peer" "$case" "$version" "$rc" "$cpu" "$rss" "$res" >>"$OUT"
	log "  $peer/$case: $(echo "$res" | grep -o '"\(msgs\|events\)_per_sec":[0-9.]*') cpu=${cpu}s rss=${rss}kB exit=$rc"
}

# --- servers -------------------------------------------------------------------------------
# Each start_* sets MQTT_PORT / HTTP_PORT and VERSION and returns once the server accepts.
MQTT_PORT=0
HTTP_PORT=0
FLEETGATE_VERSION="fleetgate $(git rev-parse --short HEAD 2>/dev/null || echo dev)"

start_fleetgate() { # [sink-port]
	local dir="$WORK/fleetgate" sink=${1:-}
	rm -rf "$dir" && mkdir -p "$dir"
	MQTT_PORT=$(free_port)
	HTTP_PORT=$(free_port)
	{
		echo "auth:"
		echo "  keys: [{id: bench, alg: HS256, secret: \"$SECRET\"}]"
		if [ -n "$sink" ]; then
			echo "functions:"
			echo "  - {name: sink, type: http, url: \"http://127.0.0.1:$sink/\", batch: {max_events: 500, max_wait: 5ms}}"
			echo "rules:"
			echo "  - {id: all, topic: \"#\", functions: [sink]}"
		else
			# Store only: a rule no topic matches keeps the embedded default (every event to
			# the log function) out, so the load measures ingest + durable storage, as the
			# brokers' runs measure their ingest with no subscriber.
			echo "rules:"
			echo "  - {id: none, topic: \"loadtest/never\", functions: [log]}"
		fi
	} >"$dir/config.yaml"
	start_server "$dir/log" "$BIN/fleetgate" serve --config "$dir/config.yaml" --data-dir "$dir/data" \
		--mqtt-addr "127.0.0.1:$MQTT_PORT" --http-addr "127.0.0.1:$HTTP_PORT"
	wait_log "$dir/log" ready 30 || { tail -n 5 "$dir/log" >&2; log "fleetgate did not print ready"; return 1; }
	VERSION=$FLEETGATE_VERSION
}

start_mosquitto() {
	local dir="$WORK/mosquitto"
	rm -rf "$dir" && mkdir -p "$dir"
	MQTT_PORT=$(free_port)
	printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$MQTT_PORT" >"$dir/mosquitto.conf"
	start_server "$dir/log" "$MOSQUITTO" -c "$dir/mosquitto.conf"
	wait_port "$MQTT_PORT" 15 || { tail -n 5 "$dir/log" >&2; log "mosquitto did not start"; return 1; }
	VERSION=$({ "$MOSQUITTO" -h 2>/dev/null || true; } | head -n 1 | sed 's/ is an.*//')
}

start_nats() {
	local dir="$WORK/nats"
	rm -rf "$dir" && mkdir -p "$dir/js"
	MQTT_PORT=$(free_port)
	local client_port
	client_port=$(free_port)
	cat >"$dir/nats.conf" <<EOF
server_name: bench
listen: 127.0.0.1:$client_port
jetstream { store_dir: "$dir/js" }
mqtt { listen: 127.0.0.1:$MQTT_PORT }
EOF
	start_server "$dir/log" "$NATS" -c "$dir/nats.conf"
	wait_port "$MQTT_PORT" 30 || { tail -n 5 "$dir/log" >&2; log "nats-server did not start"; return 1; }
	VERSION="nats-server $({ "$NATS" --version 2>/dev/null || true; } | sed 's/.*v/v/')"
}

start_bare_mqtt() { # goroutine | epoll
	MQTT_PORT=$(free_port)
	start_server "$WORK/bare-mqtt.log" "$LT" bare-mqtt --addr "127.0.0.1:$MQTT_PORT" --mode "$1"
	wait_port "$MQTT_PORT" 15 || { log "bare-mqtt did not start"; return 1; }
	case $1 in
	goroutine) VERSION="MQTT answerer, no storage, a goroutine per connection" ;;
	*) VERSION="MQTT answerer, no storage, one epoll loop" ;;
	esac
}
start_bare-goroutine() { start_bare_mqtt goroutine; }
start_bare-epoll() { start_bare_mqtt epoll; }

start_bare() {
	HTTP_PORT=$(free_port)
	start_server "$WORK/bare.log" "$LT" bare-http --addr "127.0.0.1:$HTTP_PORT"
	wait_port "$HTTP_PORT" 15 || { log "bare-http did not start"; return 1; }
	VERSION="fasthttp handler, no storage"
}

# --- the load ------------------------------------------------------------------------------
N10=$((10000 * SCALE))  # per client, 10 clients
N1=$((100000 * SCALE))  # 1 client
HTTP1=$((30000 * SCALE))
HTTP100=$((300000 * SCALE))
E2E=$((5000 * SCALE))   # per client, 10 clients, open loop at 10000/s
COMMON=(--size 128 --duration 30s --drain-timeout 10s --client-prefix bench-)

# run_case PEER CASE -- LOADTEST-ARGS... starts a fresh PEER, runs the load and stops it,
# REPEAT times. In the arguments @MQTT@ and @HTTP@ become the server's ports, @SINK@ the
# port of the generator's function endpoint.
run_case() {
	local peer=$1 case=$2 rep sink a
	shift 3
	[[ "$case" =~ $CASES ]] || return 0
	for rep in $(seq 1 "$REPEAT"); do
		sink=$(free_port)
		local try ok=""
		for try in 1 2 3; do # a port taken between choosing and binding: choose again
			if [[ "$case" == e2e-* ]]; then "start_$peer" "$sink" && ok=1; else "start_$peer" && ok=1; fi
			[ -n "$ok" ] && break
			stop_server
		done
		[ -n "$ok" ] || die "$peer would not start"
		local args=()
		for a in "$@"; do
			a=${a//@MQTT@/$MQTT_PORT}
			a=${a//@HTTP@/${HTTP_PORT:-0}}
			args+=("${a//@SINK@/$sink}")
		done
		measure "$peer" "$case" "$VERSION" -- "${args[@]}"
		stop_server
	done
}

mqtt_cases() { # peer
	local peer=$1 auth=()
	[ "$peer" = fleetgate ] && auth=(--jwt-secret "$SECRET" --jwt-kid bench)
	run_case "$peer" mqtt-qos1-10conn -- mqtt --broker tcp://127.0.0.1:@MQTT@ \
		--clients 10 --messages "$N10" --qos 1 --inflight 64 "${COMMON[@]}" "${auth[@]}"
	run_case "$peer" mqtt-qos1-1conn-256 -- mqtt --broker tcp://127.0.0.1:@MQTT@ \
		--clients 1 --messages "$N1" --qos 1 --inflight 256 "${COMMON[@]}" "${auth[@]}"
	run_case "$peer" mqtt-qos0-10conn -- mqtt --broker tcp://127.0.0.1:@MQTT@ \
		--clients 10 --messages "$N10" --qos 0 "${COMMON[@]}" "${auth[@]}"
	# The end-to-end case's load without the function: what taking in and acknowledging costs
	# when each message arrives on its own (fleetgate: stored, routed nowhere).
	run_case "$peer" mqtt-qos1-10conn-10k -- mqtt --broker tcp://127.0.0.1:@MQTT@ \
		--clients 10 --messages "$E2E" --qos 1 --inflight 64 --rate 10000 "${COMMON[@]}" "${auth[@]}"
}

http_cases() { # peer
	local peer=$1 auth=()
	[ "$peer" = fleetgate ] && auth=(--jwt-secret "$SECRET" --jwt-kid bench)
	run_case "$peer" http-batch1 -- http --url http://127.0.0.1:@HTTP@/v1/events/apps/bench \
		--concurrency 16 --events "$HTTP1" --batch 1 --size 128 --duration 30s "${auth[@]}"
	run_case "$peer" http-batch100 -- http --url http://127.0.0.1:@HTTP@/v1/events/apps/bench \
		--concurrency 16 --events "$HTTP100" --batch 100 --size 128 --duration 30s "${auth[@]}"
}

e2e_case() {
	run_case fleetgate e2e-qos1-10conn -- mqtt --broker tcp://127.0.0.1:@MQTT@ \
		--clients 10 --messages "$E2E" --qos 1 --inflight 64 --rate 10000 "${COMMON[@]}" \
		--jwt-secret "$SECRET" --jwt-kid bench --sink-addr 127.0.0.1:@SINK@ --e2e-wait 15s
}

log "work dir $WORK, scale $SCALE, $REPEAT runs per case, peers: $PEERS"
# The physical floor of a durable ack on this disk, in the directory the servers' data goes to.
# Once idle, once with a core kept busy (servers and load generator share this machine's cores).
"$LT" fsync --dir "$WORK" --count 500 --busy 1 --json >"$WORK/disk.json" || die "measuring the disk's fdatasync"
log "disk: $("$LT" fsync --dir "$WORK" --count 200 --busy 1 | tail -n 2 | tr '\n' ';')"
MQTT_PEERS=$PEERS
# The bare MQTT answerers (fleetgate-loadtest bare-mqtt) are the floor of the MQTT cases in Go,
# as the bare fasthttp handler is of the HTTP ones: they run whenever fleetgate does.
[[ " $PEERS " == *" fleetgate "* ]] && MQTT_PEERS="$PEERS bare-goroutine bare-epoll"
for peer in $MQTT_PEERS; do
	log "$peer: MQTT cases"
	mqtt_cases "$peer"
done
if [[ " $PEERS " == *" fleetgate "* ]]; then
	log "fleetgate: HTTP cases"
	http_cases fleetgate
	log "bare fasthttp handler: HTTP cases"
	http_cases bare
	log "fleetgate: end-to-end case"
	e2e_case
fi

cp "$OUT" "$REPO/loadtest/results.jsonl"
cp "$WORK/disk.json" "$REPO/loadtest/disk.json"
go run ./loadtest/cmd/chart -in loadtest/results.jsonl -md loadtest/RESULTS.md -png loadtest/results.png \
	-notes loadtest/NOTES.md -disk loadtest/disk.json
log "wrote loadtest/RESULTS.md and loadtest/results.png"
