#!/usr/bin/env bash
# bench.sh measures snigate against plain forwarding and against Squid, side
# by side in the network-namespace lab, and prints one table.
#
# It brings up its own lab (prefix sgbench, state in /run/sgbench, so it never
# meets the end-to-end tests' lab), then for every repetition and every
# measurement runs the three systems in turn, rotating which goes first:
#
#   direct   the gateway namespace only forwards;
#   snigate  bin/snigate in the gateway namespace with the default policy
#            (splice tunnel.cloudproxy.app, bump the rest), log level warn;
#   squid    Debian's squid-openssl in intercept mode (peek at step 1, splice
#            tunnel.cloudproxy.app, bump the rest), reached through an
#            iptables REDIRECT rule in the gateway namespace only.
#
# The load generator (scripts/benchload) runs in the client namespace and
# dials the servers' addresses; the gateway intercepts transparently. Each
# run appends one JSON line; the medians, the ratios to direct and the
# targets go to stdout and to out/bench-DATE.txt, the raw lines beside it.
# Everything is removed afterwards, also on failure or interruption.
#
# Run as root ("make bench" installs squid-openssl, iptables and conntrack
# first).
#
# Environment:
#   BENCH_QUICK=1      small sizes for a quick check: 64 MiB, 3 s runs,
#                      50 names, 500 tunnels, 2 repetitions
#   BENCH_REPS         repetitions (3)
#   BENCH_BYTES        bytes per spliced download (1073741824)
#   BENCH_STREAMS      streams of the parallel download (8)
#   BENCH_DURATION     seconds per connection-rate run (10)
#   BENCH_CONCURRENCY  connection-rate concurrencies ("8 32")
#   BENCH_NAMES        never-seen names per run (200)
#   BENCH_TUNNELS      idle spliced tunnels held (2000; 10000 is the big case)
#   BENCH_SYSTEMS      systems to run, a subset of "direct snigate squid"
#   BENCH_TESTS        measurements, a subset of "splice1 splice8 bump newname tunnels"
#   BENCH_OUT          table file (default out/bench-YYYYmmdd-HHMMSS.txt)
#   BENCH_KEY_EXCHANGE snigate's upstream.key_exchange: hybrid (default) or classic,
#                      the groups Squid's OpenSSL 3.0 is limited to
#   BENCH_PROFILE      a directory: snigate serves pprof and a CPU profile of
#                      each bumped-connection run is saved there
#   SNIGATE, LABSERVER, BENCHLOAD   prebuilt binaries (built with go otherwise)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# The lab of the benchmark, apart from the one the tests use.
export LAB_PREFIX=sgbench
export LAB_DIR=/run/sgbench
CLIENT_NS=$LAB_PREFIX-client
GW_NS=$LAB_PREFIX-gw

TUNNEL_HOST=tunnel.cloudproxy.app
TUNNEL_ADDR=198.19.1.2:443
WWW_HOST=www.example.test
WWW_ADDR=198.19.1.3:443
PRIME_ADDR=198.19.1.3:8443 # the same server on a port nothing intercepts
METRICS_ADDR=198.18.1.1:9465 # snigate's metrics, on the gateway's LAN address
SQUID_PORT=3129
SQUID_CERTGEN=/usr/lib/squid/security_file_certgen

if [[ ${BENCH_QUICK:-0} == 1 ]]; then
	: "${BENCH_REPS:=2}" "${BENCH_BYTES:=$((64 << 20))}" "${BENCH_DURATION:=3}"
	: "${BENCH_NAMES:=50}" "${BENCH_TUNNELS:=500}"
fi
REPS=${BENCH_REPS:-3}
BYTES=${BENCH_BYTES:-$((1 << 30))}
STREAMS=${BENCH_STREAMS:-8}
DURATION=${BENCH_DURATION:-10}
CONCURRENCY=${BENCH_CONCURRENCY:-8 32}
NAMES=${BENCH_NAMES:-200}
TUNNELS=${BENCH_TUNNELS:-2000}
SYSTEMS=${BENCH_SYSTEMS:-direct snigate squid}
TESTS=${BENCH_TESTS:-splice1 splice8 bump newname tunnels}
KEY_EXCHANGE=${BENCH_KEY_EXCHANGE:-hybrid}
STAMP=$(date +%Y%m%d-%H%M%S)
OUT=${BENCH_OUT:-$REPO/out/bench-$STAMP.txt}

log() { printf 'bench: %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

check_settings() {
	[[ $EUID -eq 0 ]] || die "must run as root (network namespaces, iptables, squid)"
	local v
	for v in REPS BYTES STREAMS DURATION NAMES TUNNELS; do
		[[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "BENCH_$v=\"${!v}\" is not a positive number"
	done
	((REPS <= 20 && DURATION <= 120 && NAMES <= 9999 && TUNNELS <= 50000)) ||
		die "BENCH_REPS <= 20, BENCH_DURATION <= 120, BENCH_NAMES <= 9999, BENCH_TUNNELS <= 50000"
	for v in $CONCURRENCY; do
		[[ $v =~ ^[1-9][0-9]*$ ]] && ((v <= 1024)) ||
			die "BENCH_CONCURRENCY: \"$v\" is not a number in 1-1024"
	done
	for v in $SYSTEMS; do
		[[ $v =~ ^(direct|snigate|squid)$ ]] || die "BENCH_SYSTEMS: unknown system \"$v\""
	done
	for v in $TESTS; do
		[[ $v =~ ^(splice1|splice8|bump|newname|tunnels)$ ]] ||
			die "BENCH_TESTS: unknown measurement \"$v\""
	done
	[[ $KEY_EXCHANGE =~ ^(hybrid|classic)$ ]] ||
		die "BENCH_KEY_EXCHANGE: \"$KEY_EXCHANGE\" is not hybrid or classic"
	local cmd
	for cmd in ip iptables conntrack timeout; do
		command -v "$cmd" >/dev/null || die "$cmd not found (make bench installs it)"
	done
	if [[ " $SYSTEMS " == *" squid "* ]]; then
		command -v squid >/dev/null && [[ -x $SQUID_CERTGEN ]] ||
			die "squid or $SQUID_CERTGEN not found: apt-get install squid-openssl"
		id proxy >/dev/null 2>&1 || die "user proxy (Debian's squid user) does not exist"
	fi
}

# Binaries: prebuilt through the environment, else built into BIN, a
# temporary directory main makes.
BIN=""
build() { # build VAR PKG
	local var=$1 pkg=$2 out
	if [[ -n ${!var:-} ]]; then
		out=$(realpath "${!var}")
		[[ -x $out ]] || die "$var=${!var} is not an executable file"
	else
		out=$BIN/$(basename "$pkg")
		(cd "$REPO" && go build -o "$out" "$pkg")
	fi
	printf '%s' "$out"
}

# ns_sysctl NS KEY=VALUE sets a sysctl inside the lab namespace NS only.
ns_sysctl() {
	local key=${2%%=*}
	ip netns exec "$1" sh -c 'echo "$2" >"/proc/sys/$1"' _ "${key//.//}" "${2#*=}"
}

# Processes this script started, so cleanup ends exactly these.
SNIGATE_PID=""
SQUID_PID=""
LOAD_PID=""
REDIRECT=0

# tree_of PID prints "pid:starttime" for PID and its descendants, so a later
# kill can check that a pid still names the same process.
tree_of() {
	local root=$1 p k line rest ppid start
	declare -A kids=() starts=()
	for p in /proc/[0-9]*; do
		p=${p#/proc/}
		line=$(cat "/proc/$p/stat" 2>/dev/null) || continue
		rest=${line##*) }
		read -r _ ppid _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ start _ <<<"$rest"
		kids[$ppid]+=" $p"
		starts[$p]=$start
	done
	local queue=("$root") i=0
	while ((i < ${#queue[@]})); do
		p=${queue[i]}
		((i += 1))
		[[ -n ${starts[$p]:-} ]] || continue
		printf '%s:%s\n' "$p" "${starts[$p]}"
		for k in ${kids[$p]:-}; do queue+=("$k"); done
	done
}

# same_process PID:START succeeds if PID is still the process started then.
same_process() {
	local pid=${1%%:*} start=${1#*:} line rest s
	line=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
	rest=${line##*) }
	read -r _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ s _ <<<"$rest"
	[[ $s == "$start" ]]
}

# stop_tree PID LABEL SECONDS: SIGTERM to PID, up to SECONDS for it to exit,
# then SIGKILL to whatever of its process tree (as it was) is left.
stop_tree() {
	local pid=$1 label=$2 secs=$3 members m i
	kill -0 "$pid" 2>/dev/null || return 0
	members=$(tree_of "$pid")
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < secs * 10; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -0 "$pid" 2>/dev/null && log "$label (pid $pid) still running after ${secs}s; killing"
	for m in $members; do
		same_process "$m" && kill -KILL "${m%%:*}" 2>/dev/null || true
	done
	wait "$pid" 2>/dev/null || true
}

# save_logs copies the gateways' logs next to the table, since the lab
# directory goes away with the lab.
save_logs() {
	local dir=${OUT%.txt}.logs
	mkdir -p "$dir"
	cp "$LAB_DIR/snigate/snigate.log" "$dir/snigate.log" 2>/dev/null || true
	cp "$LAB_DIR/squid/cache.log" "$dir/squid-cache.log" 2>/dev/null || true
	tail -n 500 "$LAB_DIR/labserver.log" >"$dir/labserver-tail.log" 2>/dev/null || true
}

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	if ((rc != 0)) && [[ -d $LAB_DIR/snigate ]]; then
		save_logs
		log "logs of the failed run in ${OUT%.txt}.logs"
	fi
	if [[ -n $LOAD_PID ]]; then stop_tree "$LOAD_PID" benchload 3; fi
	if [[ -n $SNIGATE_PID ]]; then stop_tree "$SNIGATE_PID" snigate 10; fi
	if [[ -n $SQUID_PID ]]; then stop_tree "$SQUID_PID" squid 15; fi
	# The namespace goes below anyway; this only keeps the order tidy.
	if ((REDIRECT)); then redirect_rule -D 2>/dev/null || true; fi
	"$REPO/scripts/lab.sh" down >/dev/null 2>&1 || log "lab.sh down failed; run it again"
	if [[ -n $BIN ]]; then rm -rf "$BIN"; fi
	exit "$rc"
}

in_gw() { ip netns exec "$GW_NS" "$@"; }

redirect_rule() { # redirect_rule -A|-D
	in_gw iptables -w 5 -t nat "$1" PREROUTING -i lan0 -p tcp --dport 443 \
		-j REDIRECT --to-ports "$SQUID_PORT"
}

# load ARGS... runs benchload in the client namespace, bounded in time, in
# the background so that a signal reaches cleanup at once.
load() {
	local limit=$1 rc=0
	shift
	timeout -k 5 "$limit" ip netns exec "$CLIENT_NS" "$BENCHLOAD" "$@" &
	LOAD_PID=$!
	wait "$LOAD_PID" || rc=$?
	LOAD_PID=""
	return "$rc"
}

# --- the systems -------------------------------------------------------------

GW_PID=0   # the gateway process benchload watches (0: plain forwarding)
CURRENT="" # the system in the path now

write_configs() {
	mkdir -p "$LAB_DIR/snigate"
	cat >"$LAB_DIR/snigate/snigate.yaml" <<-YAML
		# The benchmark's snigate: the default policy (splice
		# tunnel.cloudproxy.app, bump the rest), quiet logging.
		intercept:
		  interfaces: [lan0]
		  ports: [443]
		listen: ["127.0.0.1:15443", "[::1]:15443"]
		ca:
		  cert: $GW_CA
		  key: $LAB_DIR/ca/ca.key
		upstream:
		  roots: [$ROOT]
		  key_exchange: $KEY_EXCHANGE
		log:
		  level: warn
		  format: json
		shutdown:
		  drain: 1s
		control: $LAB_DIR/snigate/control.sock
		metrics:
		  listen: $METRICS_ADDR
		  pprof: true # CPU profiles (BENCH_PROFILE) and a GC before memory readings
	YAML
	in_gw "$SNIGATE" check --config "$LAB_DIR/snigate/snigate.yaml" >/dev/null

	[[ " $SYSTEMS " == *" squid "* ]] || return 0
	local sq=$LAB_DIR/squid rep sys i
	mkdir -p "$sq"
	# Squid signs with the same CA as snigate, so clients trust one file.
	cp "$GW_CA" "$sq/ca.crt"
	cp "$LAB_DIR/ca/ca.key" "$sq/ca.key"
	"$SQUID_CERTGEN" -c -s "$sq/ssl_db" -M 4MB >/dev/null
	# Squid checks the Host of a bumped request against DNS. The lab has no
	# DNS server, so every name the benchmark uses is in a hosts file.
	{
		echo "198.19.1.2 $TUNNEL_HOST"
		echo "198.19.1.3 $WWW_HOST warm.bench.example.test"
		for ((rep = 1; rep <= REPS; rep++)); do
			for ((i = 1; i <= NAMES; i++)); do
				printf '198.19.1.3 r%dsquid-n%04d.bench.example.test\n' "$rep" "$i"
			done
		done
	} >"$sq/hosts"
	cat >"$sq/squid.conf" <<-CONF
		# The benchmark's Squid: intercept, peek at step 1, splice the IAP
		# tunnel host, bump the rest. Written by scripts/bench.sh.
		visible_hostname sgbench-gw
		http_port 127.0.0.1:3128
		https_port $SQUID_PORT intercept ssl-bump generate-host-certificates=on \
		  tls-cert=$sq/ca.crt tls-key=$sq/ca.key
		sslcrtd_program $SQUID_CERTGEN -s $sq/ssl_db -M 4MB
		tls_outgoing_options cafile=$ROOT
		acl lab src 198.18.0.0/15 2001:2::/48
		acl step1 at_step SslBump1
		acl spliced ssl::server_name .tunnel.cloudproxy.app .mtls.googleapis.com
		ssl_bump peek step1
		ssl_bump splice spliced
		ssl_bump bump all
		http_upgrade_request_protocols websocket allow all
		http_access allow lab
		http_access deny all
		cache deny all
		access_log none
		cache_log $sq/cache.log
		pid_filename $sq/squid.pid
		coredump_dir $sq
		hosts_file $sq/hosts
		dns_nameservers 127.0.0.1
		pinger_enable off
		cache_effective_user proxy
		cache_effective_group proxy
		shutdown_lifetime 1 seconds
		max_filedescriptors $(ulimit -n)
	CONF
	chown -R proxy:proxy "$sq"
	chmod 600 "$sq/ca.key"
	in_gw squid -k parse -f "$sq/squid.conf" >"$sq/parse.log" 2>&1 ||
		{ cat "$sq/parse.log" >&2; die "squid rejected $sq/squid.conf"; }
}

start_snigate() {
	# Not through in_gw: $! must be snigate itself ("ip netns exec" execs).
	ip netns exec "$GW_NS" "$SNIGATE" run --config "$LAB_DIR/snigate/snigate.yaml" \
		</dev/null >>"$LAB_DIR/snigate/snigate.log" 2>&1 &
	SNIGATE_PID=$!
	GW_PID=$SNIGATE_PID
}

# stop_snigate stops snigate and removes the sockets it left in TIME_WAIT.
# Those carry the servers' addresses as their local ones, so the gateway's
# early demultiplexing would hand them a new client connection that reuses a
# port, and forwarding drops a packet that has a local socket: for up to a
# minute, such connections of the next system would stall.
stop_snigate() {
	stop_tree "$SNIGATE_PID" snigate 10
	SNIGATE_PID=""
	in_gw ss -K -tan state time-wait '( sport = :443 )' >/dev/null 2>&1 || true
	local left
	left=$(in_gw ss -Htan state time-wait '( sport = :443 )' | wc -l)
	if ((left > 0)); then
		log "warning: $left sockets of snigate stay in TIME_WAIT (no SOCK_DESTROY in" \
			"this kernel?); the next system may see stalled connections"
	fi
}

# start_squid runs Squid as Debian's unit does (--foreground: a master and
# a worker) and waits for its intercepting port.
start_squid() {
	local sq=$LAB_DIR/squid i
	ip netns exec "$GW_NS" squid --foreground -f "$sq/squid.conf" \
		</dev/null >>"$sq/stderr.log" 2>&1 &
	SQUID_PID=$!
	for ((i = 0; i < 300; i++)); do
		grep -q "Accepting .*SSL bumped HTTPS* Socket connections" "$sq/cache.log" 2>/dev/null &&
			return 0
		kill -0 "$SQUID_PID" 2>/dev/null || break
		sleep 0.1
	done
	tail -n 30 "$sq/cache.log" "$sq/stderr.log" >&2 || true
	die "squid did not start"
}

# use_system SYSTEM puts SYSTEM in the path and checks that it is: a bumped
# name must verify against the gateway's CA (the lab root for direct), a
# spliced one against the lab root.
use_system() {
	local want=$1 bump_ca
	if [[ $CURRENT != "$want" ]]; then
		if [[ $CURRENT == snigate ]]; then stop_snigate; fi
		if [[ $CURRENT == squid ]]; then
			redirect_rule -D
			REDIRECT=0
		fi
		# The client reuses source ports quickly; a tracked connection of the
		# previous system (Squid's NAT above all) would capture a new one.
		in_gw conntrack -F >/dev/null 2>&1 || die "conntrack -F in $GW_NS failed"
		case $want in
		direct) GW_PID=0 ;;
		snigate) start_snigate ;;
		squid)
			if [[ -z $SQUID_PID ]]; then start_squid; fi
			redirect_rule -A
			REDIRECT=1
			GW_PID=$SQUID_PID
			;;
		esac
		CURRENT=$want
	fi
	bump_ca=$(bump_ca "$want")
	if ! load 30 probe --addr "$WWW_ADDR" --sni "$WWW_HOST" --ca "$bump_ca" --wait 20s ||
		! load 30 probe --addr "$TUNNEL_ADDR" --sni "$TUNNEL_HOST" --ca "$ROOT" --wait 10s; then
		[[ $want == snigate ]] && tail -n 30 "$LAB_DIR/snigate/snigate.log" >&2
		[[ $want == squid ]] && tail -n 30 "$LAB_DIR/squid/cache.log" >&2
		die "$want is not in the path as expected"
	fi
}

bump_ca() { if [[ $1 == direct ]]; then echo "$ROOT"; else echo "$GW_CA"; fi; }

# --- the measurements -------------------------------------------------------

FAILED_RUNS=0

# measure TEST SYSTEM REP runs one measurement and appends its results.
measure() {
	local test=$1 sys=$2 rep=$3 c out
	local common=(--system "$sys" --rep "$rep" --gw-pid "$GW_PID")
	local ca
	ca=$(bump_ca "$sys")
	out=$LAB_DIR/run.json
	: >"$out"
	case $test in
	splice1 | splice8)
		local streams=1
		[[ $test == splice8 ]] && streams=$STREAMS
		run_load 600 "$out" download --test "$test" "${common[@]}" --addr "$TUNNEL_ADDR" \
			--sni "$TUNNEL_HOST" --ca "$ROOT" --bytes "$BYTES" --streams "$streams"
		;;
	bump)
		for c in $CONCURRENCY; do
			local prof=
			if [[ -n ${BENCH_PROFILE:-} && $sys == snigate ]]; then
				# Starts after the workers' warm-up, ends before the run does.
				mkdir -p "$BENCH_PROFILE"
				in_gw curl -sS --max-time $((DURATION + 10)) -o "$BENCH_PROFILE/bump$c-r$rep.pprof" \
					"http://$METRICS_ADDR/debug/pprof/profile?seconds=$((DURATION > 3 ? DURATION - 2 : 1))" &
				prof=$!
			fi
			run_load $((DURATION + 90)) "$out" conns --test "bump$c" "${common[@]}" \
				--addr "$WWW_ADDR" --sni "$WWW_HOST" --ca "$ca" \
				--concurrency "$c" --duration "${DURATION}s"
			if [[ -n $prof ]]; then wait "$prof" || log "  profile of bump$c failed"; fi
			# The same load to the spliced host, for comparison in one run.
			run_load $((DURATION + 90)) "$out" conns --test "spliceconn$c" "${common[@]}" \
				--addr "$TUNNEL_ADDR" --sni "$TUNNEL_HOST" --ca "$ROOT" \
				--concurrency "$c" --duration "${DURATION}s"
		done
		;;
	newname)
		local metrics=()
		[[ $sys == snigate ]] && metrics=(--metrics "http://$METRICS_ADDR/metrics")
		# The lab server gives each new name a leaf of its own; priming it
		# on the port no gateway intercepts keeps its signing out of the
		# timed connections.
		run_load 600 "$out" newnames --test newname "${common[@]}" --addr "$WWW_ADDR" \
			--ca "$ca" --prefix "r${rep}${sys}-" --count "$NAMES" --prime "$PRIME_ADDR" \
			"${metrics[@]}"
		;;
	tunnels)
		local metrics=()
		[[ $sys == snigate ]] && metrics=(--metrics "http://$METRICS_ADDR/metrics"
			--gc-url "http://$METRICS_ADDR/debug/pprof/heap?gc=1")
		run_load 600 "$out" tunnels --test tunnels "${common[@]}" --addr "$TUNNEL_ADDR" \
			--sni "$TUNNEL_HOST" --ca "$ROOT" --count "$TUNNELS" "${metrics[@]}"
		;;
	esac
	cat "$out" >>"$RESULTS"
	local line
	while read -r line; do log "  $(summary "$line")"; done <"$out"
}

run_load() { # run_load LIMIT OUTFILE ARGS...
	local limit=$1 out=$2
	shift 2
	if ! load "$limit" "$@" >>"$out"; then
		FAILED_RUNS=$((FAILED_RUNS + 1))
		log "  run failed: benchload $1 ($*)"
	fi
}

# summary LINE picks the headline numbers out of one JSON result.
summary() {
	local line=$1 k v s=""
	s=$(sed -nE 's/.*"test":"([^"]*)","system":"([^"]*)".*/\2 \1/p' <<<"$line")
	for k in gibps rate gw_cpu_s cold_p50_ms warm_p50_ms tunnels errors; do
		v=$(sed -nE "s/.*\"$k\":([0-9.e+-]+).*/\\1/p" <<<"$line")
		if [[ -n $v ]]; then s+=" $k=$v"; fi
	done
	printf '%s' "$s"
}

# rotated REP prints the systems starting at a different one each repetition,
# so no system always runs right after the same other one.
rotated() {
	local -a s=($SYSTEMS)
	local n=${#s[@]} i out=()
	for ((i = 0; i < n; i++)); do out+=("${s[(i + $1 - 1) % n]}"); done
	echo "${out[@]}"
}

header() {
	local squid_v="not run" sg mem size
	if [[ " $SYSTEMS " == *" squid "* ]]; then
		squid_v=$(squid -v | sed -n '1s/.*Version //p')
	fi
	sg=$("$SNIGATE" version 2>/dev/null || echo snigate)
	mem=$(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)
	size=$(awk -v b="$BYTES" 'BEGIN {printf "%.3g GiB", b / 1073741824}')
	cat <<-EOF
		snigate benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')
		host: $(nproc) cores, $mem, kernel $(uname -r); client, gateway and servers share the cores
		systems: direct = the gateway only forwards; $sg = default policy, log level warn,
		  key_exchange $KEY_EXCHANGE;
		  squid $squid_v = intercept, peek at step 1, splice tunnel.cloudproxy.app, bump the rest
		runs: $REPS per system and measurement, order rotated; medians; (x) = ratio to direct
		sizes: download $size (1 stream, then $STREAMS sharing it); bumped conns ${DURATION}s at
		  c=${CONCURRENCY// /,}; $NAMES new names; $TUNNELS idle WebSocket tunnels
		gateway CPU: utime+stime of the gateway's process tree (snigate; Squid with its worker
		  and helpers); n/a for direct, whose forwarding is kernel time billed to no process
	EOF
}

# notes says what the numbers do and do not include.
notes() {
	cat <<-EOF
		notes:
		- spliced: the download above over TLS from tunnel.cloudproxy.app, on one connection,
		  then split over $STREAMS parallel ones; the client times it from dial to last byte.
		- bumped conns: new TCP connection, full TLS 1.3 handshake (no resumption), GET /,
		  Connection: close, read to the server's close; the first connections of every
		  worker warm the caches and are not counted. Go's client offers X25519MLKEM768,
		  which snigate and the lab server take and Squid's OpenSSL 3.0 does not (X25519).
		- forging: new names alternate with a warm one, one connection at a time; the first
		  row is the difference of their p50s, so it also holds the new name's full upstream
		  handshake (no session to resume yet); the second is snigate's own mean time per
		  forged certificate, from its metrics. Each new name has its own upstream
		  certificate. Squid does not use its in-memory certificate cache when it peeks at
		  step 1, so every bumped connection asks its certgen helper, whose disk database
		  is the warm cache.
		- tunnels: per-tunnel numbers are the gateway's growth (RSS from /proc, descriptors,
		  goroutines from snigate's metrics) divided by the tunnels, measured after a short
		  settle; kernel socket and pipe buffers are not in RSS. RSS also holds garbage not
		  yet collected and freed pages not yet returned, so it swings with the collector's
		  timing (snigate runs at GOGC=400); the live row is snigate's Go heap and stacks in
		  use right after a collection it is asked to run, the memory a tunnel keeps.
		  Idle splice pipes go back to Go's pool and close at its next collections, so
		  the fds row counts some that are about to go.
		- Squid runs one worker (Debian's default) with access_log none; snigate logs at
		  warn, so neither writes a line per connection. IPv4 only.
		- between systems the gateway namespace's conntrack table is flushed and sockets
		  that snigate left in TIME_WAIT are destroyed, so no system inherits another's state.
	EOF
}

main() {
	check_settings
	trap cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM

	# Client, servers, Squid and snigate each hold one descriptor per idle
	# tunnel or more; Go raises its own soft limit, Squid and bash do not.
	ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
	# snigate holds six per spliced tunnel (two sockets, two pipes).
	if (($(ulimit -n) < 6 * TUNNELS + 1000)); then
		log "warning: open-file limit $(ulimit -n) may be too low for $TUNNELS tunnels"
	fi

	BIN=$(mktemp -d /tmp/sgbench-bin.XXXXXX)
	SNIGATE=$(build SNIGATE ./cmd/snigate)
	export LABSERVER
	LABSERVER=$(build LABSERVER ./scripts/labserver)
	BENCHLOAD=$(build BENCHLOAD ./scripts/benchload)

	"$REPO/scripts/lab.sh" up >/dev/null
	ROOT=$LAB_DIR/root.crt
	GW_CA=$LAB_DIR/ca/ca.crt
	RESULTS=$LAB_DIR/results.jsonl
	: >"$RESULTS"

	# Thousands of short connections a second: let the client and the
	# gateway reuse ports in TIME_WAIT. Set in the lab namespaces only.
	local ns
	for ns in "$CLIENT_NS" "$GW_NS"; do
		ns_sysctl "$ns" net.ipv4.tcp_tw_reuse=1
		ns_sysctl "$ns" "net.ipv4.ip_local_port_range=10000 60999"
	done
	# A nat table in the gateway namespace turns connection tracking on
	# there, as on a router doing NAT. It exists for every system alike;
	# Squid's REDIRECT rule is added and removed around its runs.
	in_gw iptables -w 5 -t nat -A POSTROUTING -o wan0 -j RETURN

	"$SNIGATE" ca init --out "$LAB_DIR/ca" >/dev/null
	write_configs

	local rep test sys start=$SECONDS
	for ((rep = 1; rep <= REPS; rep++)); do
		for test in $TESTS; do
			for sys in $(rotated "$rep"); do
				log "rep $rep/$REPS: $test, $sys ($((SECONDS - start))s)"
				use_system "$sys"
				measure "$test" "$sys" "$rep"
			done
		done
	done
	use_system direct
	log "measured in $((SECONDS - start))s"

	mkdir -p "$(dirname "$OUT")"
	cp "$RESULTS" "${OUT%.txt}.jsonl"
	save_logs
	{
		header
		echo
		"$BENCHLOAD" report --results "$RESULTS" --concurrency "${CONCURRENCY// /,}"
		echo
		notes
	} | tee "$OUT"
	log "table in $OUT, raw results in ${OUT%.txt}.jsonl"
	if ((FAILED_RUNS > 0)); then
		die "$FAILED_RUNS benchload runs failed; their rows are incomplete"
	fi
}

# Sourcing the file (to try one function by hand) defines without running.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
	main "$@"
fi
