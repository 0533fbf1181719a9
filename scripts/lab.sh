#!/usr/bin/env bash
# lab.sh builds and tears down the snigate network-namespace lab:
#
#   PREFIX-client  eth0 198.18.1.2/24 2001:2:0:1::2/64, default via the gateway
#        | veth
#   PREFIX-gw      lan0 198.18.1.1/24 2001:2:0:1::1/64  (forwarding on)
#                  wan0 198.19.1.1/24 2001:2:0:2::1/64
#        | veth
#   PREFIX-srv     eth0 198.19.1.2-.5/24 2001:2:0:2::2-::5/64, labserver
#
# Usage: lab.sh up|down|status   (as root)
#
# Environment:
#   LAB_PREFIX  namespace name prefix (default snigate)
#   LAB_DIR     state directory: certificates, labserver binary, pid, log
#               (default /run/snigate-lab)
#   LABSERVER   prebuilt labserver binary (default: go build into LAB_DIR)
#
# Everything happens inside the three namespaces: interfaces are created
# directly in them and sysctls are set there, never in the host namespace.
set -euo pipefail

PREFIX=${LAB_PREFIX:-snigate}
LAB_DIR=${LAB_DIR:-/run/snigate-lab}
CLIENT_NS=$PREFIX-client
GW_NS=$PREFIX-gw
SRV_NS=$PREFIX-srv
ALL_NS=("$CLIENT_NS" "$GW_NS" "$SRV_NS")

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PID_FILE=$LAB_DIR/labserver.pid
LOG_FILE=$LAB_DIR/labserver.log
# Written by up; down deletes LAB_DIR recursively only if it finds it.
MARKER=$LAB_DIR/.snigate-lab

# What labserver serves. 198.19.1.3:8443 is the "non-steered port" host.
HTTPS_ADDRS=198.19.1.2:443,198.19.1.3:443,198.19.1.4:443
HTTPS_ADDRS+=,[2001:2:0:2::2]:443,[2001:2:0:2::3]:443,[2001:2:0:2::4]:443
HTTPS_ADDRS+=,198.19.1.3:8443,[2001:2:0:2::3]:8443
ECHO_ADDRS=198.19.1.5:443,[2001:2:0:2::5]:443

log() { printf 'lab: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

check_env() {
	[[ $PREFIX =~ ^[A-Za-z0-9_-]{1,20}$ ]] ||
		die "LAB_PREFIX \"$PREFIX\" must be 1-20 letters, digits, _ or -"
	# down deletes LAB_DIR recursively, so keep it well away from /.
	[[ $LAB_DIR =~ ^(/[A-Za-z0-9._-]+){2,}/?$ && $LAB_DIR != *..* ]] ||
		die "LAB_DIR \"$LAB_DIR\" must be an absolute path at least two levels deep, without .."
	[[ $EUID -eq 0 ]] || die "must run as root (needs ip netns)"
	command -v ip >/dev/null || die "ip (iproute2) not found"
}

ns_exists() { ip netns list | awk '{print $1}' | grep -qxF -- "$1"; }

# ns_sysctl NS KEY=VALUE sets a sysctl inside NS only.
ns_sysctl() {
	if command -v sysctl >/dev/null; then
		ip netns exec "$1" sysctl -qw "$2"
	else
		local key=${2%%=*}
		ip netns exec "$1" sh -c 'echo "$2" >"/proc/sys/$1"' _ "${key//.//}" "${2#*=}"
	fi
}

# stop_pid PID LABEL sends SIGTERM, waits up to 5 s, then SIGKILL.
stop_pid() {
	local pid=$1 label=$2 i
	kill -0 "$pid" 2>/dev/null || return 0
	log "stopping $label (pid $pid)"
	kill -TERM "$pid" 2>/dev/null || return 0
	for ((i = 0; i < 50; i++)); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	log "$label (pid $pid) ignored SIGTERM; killing"
	kill -KILL "$pid" 2>/dev/null || true
}

cmd_down() {
	local ns pid
	if [[ -f $PID_FILE ]]; then
		pid=$(<"$PID_FILE")
		# Only a process still inside the lab's server namespace is ours; a
		# stale file could name a recycled pid.
		if [[ $pid =~ ^[0-9]+$ ]] && ns_exists "$SRV_NS" &&
			[[ $(ip netns identify "$pid" 2>/dev/null) == "$SRV_NS" ]]; then
			stop_pid "$pid" labserver
		fi
	fi

	for ns in "${ALL_NS[@]}"; do
		ns_exists "$ns" || continue
		# Whatever still runs in a lab namespace was started for the lab (an
		# interrupted up, a snigate under test); deleting the namespace
		# would strand it on an unreachable network.
		for pid in $(ip netns pids "$ns" 2>/dev/null); do
			stop_pid "$pid" "process $(cat "/proc/$pid/comm" 2>/dev/null || echo '?') in $ns"
		done
		ip netns del "$ns" 2>/dev/null || log "could not delete namespace $ns"
	done

	if [[ -f $MARKER ]]; then
		rm -rf -- "$LAB_DIR"
	elif [[ -d $LAB_DIR ]]; then
		log "left $LAB_DIR alone: no $MARKER, so up did not make it"
	fi
}

build_labserver() {
	if [[ -n ${LABSERVER:-} ]]; then
		[[ -x $LABSERVER ]] || die "LABSERVER=$LABSERVER is not an executable file"
		printf '%s\n' "$LABSERVER"
		return
	fi
	command -v go >/dev/null || die "go not found; build labserver elsewhere and set LABSERVER"
	log "building labserver"
	(cd "$REPO_ROOT" && go build -o "$LAB_DIR/labserver" ./scripts/labserver)
	printf '%s\n' "$LAB_DIR/labserver"
}

# make_ns NS creates NS with loopback up and IPv6 DAD off, so addresses are
# usable the moment they are added.
make_ns() {
	ip netns add "$1"
	ip -n "$1" link set lo up
	ns_sysctl "$1" net.ipv6.conf.all.accept_dad=0
	ns_sysctl "$1" net.ipv6.conf.default.accept_dad=0
}

# addr NS DEV CIDR... adds addresses without DAD.
addr() {
	local ns=$1 dev=$2 a
	shift 2
	for a in "$@"; do
		if [[ $a == *:* ]]; then
			ip -n "$ns" -6 addr add "$a" dev "$dev" nodad
		else
			ip -n "$ns" addr add "$a" dev "$dev"
		fi
	done
}

build_topology() {
	local ns
	for ns in "${ALL_NS[@]}"; do
		make_ns "$ns"
	done
	ns_sysctl "$GW_NS" net.ipv4.ip_forward=1
	ns_sysctl "$GW_NS" net.ipv6.conf.all.forwarding=1

	# Both ends of each veth are born inside lab namespaces.
	ip -n "$CLIENT_NS" link add eth0 type veth peer name lan0 netns "$GW_NS"
	ip -n "$GW_NS" link add wan0 type veth peer name eth0 netns "$SRV_NS"

	addr "$CLIENT_NS" eth0 198.18.1.2/24 2001:2:0:1::2/64
	addr "$GW_NS" lan0 198.18.1.1/24 2001:2:0:1::1/64
	addr "$GW_NS" wan0 198.19.1.1/24 2001:2:0:2::1/64
	addr "$SRV_NS" eth0 198.19.1.2/24 198.19.1.3/24 198.19.1.4/24 198.19.1.5/24 \
		2001:2:0:2::2/64 2001:2:0:2::3/64 2001:2:0:2::4/64 2001:2:0:2::5/64

	ip -n "$CLIENT_NS" link set eth0 up
	ip -n "$GW_NS" link set lan0 up
	ip -n "$GW_NS" link set wan0 up
	ip -n "$SRV_NS" link set eth0 up

	ip -n "$CLIENT_NS" route add default via 198.18.1.1
	ip -n "$CLIENT_NS" -6 route add default via 2001:2:0:1::1
	ip -n "$SRV_NS" route add default via 198.19.1.1
	ip -n "$SRV_NS" -6 route add default via 2001:2:0:2::1
}

# probe succeeds when tunnel.cloudproxy.app answers on 198.19.1.2:443 from
# the client namespace, through the gateway.
probe() {
	if command -v curl >/dev/null; then
		ip netns exec "$CLIENT_NS" curl -fsS -o /dev/null --max-time 1 \
			--cacert "$LAB_DIR/root.crt" \
			--resolve tunnel.cloudproxy.app:443:198.19.1.2 https://tunnel.cloudproxy.app/
	else
		ip netns exec "$CLIENT_NS" timeout 1 bash -c 'exec 3<>/dev/tcp/198.19.1.2/443'
	fi
}

wait_ready() {
	local pid=$1 i
	for ((i = 0; i < 100; i++)); do
		if ! kill -0 "$pid" 2>/dev/null; then
			tail -n 20 "$LOG_FILE" >&2 || true
			die "labserver exited during start; log above"
		fi
		probe 2>/dev/null && return 0
		sleep 0.1
	done
	tail -n 20 "$LOG_FILE" >&2 || true
	die "198.19.1.2:443 did not answer from $CLIENT_NS within 10 s"
}

# UP_DONE stays 0 until up has succeeded; the EXIT trap below reads it.
UP_DONE=0

on_up_exit() {
	((UP_DONE)) && return
	log "up failed; tearing the lab down"
	cmd_down || true
}

cmd_up() {
	cmd_down
	trap on_up_exit EXIT
	mkdir -p "$LAB_DIR"
	touch "$MARKER"

	local bin pid
	bin=$(build_labserver)
	"$bin" certs --dir "$LAB_DIR"
	build_topology

	ip netns exec "$SRV_NS" "$bin" serve --dir "$LAB_DIR" \
		--listen "$HTTPS_ADDRS" --tcp-echo "$ECHO_ADDRS" \
		</dev/null >>"$LOG_FILE" 2>&1 &
	pid=$!
	disown "$pid"
	echo "$pid" >"$PID_FILE"
	wait_ready "$pid"
	UP_DONE=1

	cat <<-EOF
		lab up (state in $LAB_DIR, labserver pid $pid)
		  $CLIENT_NS eth0  198.18.1.2/24 2001:2:0:1::2/64 via 198.18.1.1 / 2001:2:0:1::1
		  $GW_NS     lan0  198.18.1.1/24 2001:2:0:1::1/64
		  $GW_NS     wan0  198.19.1.1/24 2001:2:0:2::1/64 (forwarding on)
		  $SRV_NS    eth0  https (h2, http/1.1; / /ws /whoami /headers):
		    198.19.1.2, 2001:2:0:2::2 :443  tunnel.cloudproxy.app, *.tunnel.cloudproxy.app
		    198.19.1.3, 2001:2:0:2::3 :443 and :8443  www.example.test, example.test
		    198.19.1.4, 2001:2:0:2::4 :443  bad.example.test (untrusted root);
		                                     expired.example.test by SNI (expired)
		    198.19.1.5, 2001:2:0:2::5 :443  plain TCP echo
		  clients trust $LAB_DIR/root.crt
	EOF
}

cmd_status() {
	local ns pid
	for ns in "${ALL_NS[@]}"; do
		if ns_exists "$ns"; then
			echo "namespace $ns:"
			ip -n "$ns" -br addr show | sed 's/^/  /'
		else
			echo "namespace $ns: absent"
		fi
	done
	if [[ -f $PID_FILE ]]; then
		pid=$(<"$PID_FILE")
		if kill -0 "$pid" 2>/dev/null; then
			echo "labserver: running, pid $pid, log $LOG_FILE"
		else
			echo "labserver: not running (stale pid $pid in $PID_FILE)"
		fi
	else
		echo "labserver: not running"
	fi
}

main() {
	check_env
	case ${1:-} in
	up) cmd_up ;;
	down) cmd_down ;;
	status) cmd_status ;;
	*)
		echo "usage: $0 up|down|status" >&2
		exit 2
		;;
	esac
}

main "$@"
