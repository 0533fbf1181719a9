#!/usr/bin/env bash
# demo.sh: snigate doing its job in the network-namespace lab. It brings the
# lab up, runs snigate in the gateway namespace with the default policy
# (splice tunnel.cloudproxy.app and the mutual-TLS Google endpoints, bump the
# rest) plus a header rule for the bumped host, runs real clients from the
# client namespace, prints what each saw, and tears everything down, also on
# failure. Run as root.
#
# Environment: SNIGATE, LABSERVER, LABCLIENT (prebuilt binaries; built with
# go otherwise), LAB_DIR (default /run/snigate-demo).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export LAB_DIR=${LAB_DIR:-/run/snigate-demo}
# Its own prefix: a demo never tears down the test suite's lab or one
# brought up by hand.
export LAB_PREFIX=sgdemo
GW_NS=$LAB_PREFIX-gw
CLIENT_NS=$LAB_PREFIX-client
BIN=$(mktemp -d /tmp/snigate-demo-bin.XXXXXX)

build() { # build VAR PKG: use $VAR if set, else go build PKG
	local var=$1 pkg=$2 out
	if [[ -n ${!var:-} ]]; then
		out=$(realpath "${!var}")
	else
		out=$BIN/$(basename "$pkg")
		(cd "$REPO" && go build -o "$out" "$pkg")
	fi
	printf '%s' "$out"
}
SNIGATE=$(build SNIGATE ./cmd/snigate)
export LABSERVER
LABSERVER=$(build LABSERVER ./scripts/labserver)
LABCLIENT=$(build LABCLIENT ./scripts/labclient)

SNIGATE_PID=""
cleanup() {
	local rc=$?
	if [[ -n $SNIGATE_PID ]] && kill -0 "$SNIGATE_PID" 2>/dev/null; then
		kill -TERM "$SNIGATE_PID" 2>/dev/null || true
		for _ in $(seq 50); do kill -0 "$SNIGATE_PID" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$SNIGATE_PID" 2>/dev/null || true
	fi
	"$REPO/scripts/lab.sh" down >/dev/null 2>&1 || true
	rm -rf "$BIN"
	exit "$rc"
}
trap cleanup EXIT INT TERM

"$REPO/scripts/lab.sh" up
"$SNIGATE" ca init --out "$LAB_DIR/ca" >/dev/null
ROOT=$LAB_DIR/root.crt
GWCA=$LAB_DIR/ca/ca.crt
LOG=$LAB_DIR/snigate.log

cat >"$LAB_DIR/snigate.yaml" <<YAML
intercept:
  interfaces: [lan0]
  ports: [443]
ca:
  cert: $LAB_DIR/ca/ca.crt
  key: $LAB_DIR/ca/ca.key
upstream:
  roots: [$ROOT]
policy:
  rules:
    - sni: [tunnel.cloudproxy.app, "*.tunnel.cloudproxy.app", "*.mtls.googleapis.com"]
      action: splice
    - sni: [www.example.test]
      action: bump
      add_request_headers:
        X-GoogApps-Allowed-Domains: example.com
  default: bump
log:
  format: json
YAML
ip netns exec "$GW_NS" "$SNIGATE" check --config "$LAB_DIR/snigate.yaml"

ip netns exec "$GW_NS" "$SNIGATE" run --config "$LAB_DIR/snigate.yaml" 2>"$LOG" &
SNIGATE_PID=$!
for _ in $(seq 150); do
	grep -q '"msg":"started"' "$LOG" 2>/dev/null && break
	kill -0 "$SNIGATE_PID" 2>/dev/null || { cat "$LOG"; echo "demo: snigate exited" >&2; exit 1; }
	sleep 0.1
done
grep -q '"msg":"started"' "$LOG" || { cat "$LOG"; echo "demo: snigate did not start" >&2; exit 1; }

in_client() { timeout 20 ip netns exec "$CLIENT_NS" "$@"; }

# The action snigate logged for the newest connection after line $1 of its
# log, or "not steered" when it logged none.
action_since() {
	local line
	line=$(tail -n +"$(($1 + 1))" "$LOG" | grep '"msg":"connection"' | tail -n 1 || true)
	if [[ -z $line ]]; then echo "not steered"; return; fi
	sed -E 's/.*"action":"([a-z]+)".*/\1/' <<<"$line"
}

issuer_from_curl() { sed -nE 's/^\*  issuer: .*CN ?= ?([^;,]+).*/\1/p' | head -n 1; }

FAILED=0
ROWS=()
# probe TARGET CLIENT WANT_ACTION WANT_RESULT COMMAND...
probe() {
	local target=$1 client=$2 want_action=$3 want_result=$4
	shift 4
	local before out rc=0 action issuer result
	before=$(wc -l <"$LOG")
	out=$("$@" 2>&1) || rc=$?
	sleep 0.3 # the connection's log line is written when it ends
	action=$(action_since "$before")
	issuer=$(issuer_from_curl <<<"$out")
	[[ -z $issuer ]] && issuer=$(sed -nE 's/.*issuer="([^"]*)".*/\1/p; s/^issuer=.*CN ?= ?([^,]+).*/\1/p' <<<"$out" | head -n 1)
	[[ -z $issuer ]] && issuer="-"
	if ((rc == 0)); then result=ok; else result="refused (exit $rc)"; fi
	local verdict=pass
	if [[ $action != "$want_action" || ${result%% *} != "$want_result" ]]; then
		verdict=FAIL
		FAILED=1
		printf 'demo: %s: got %s/%s, want %s/%s\n%s\n' "$target" "$action" "$result" \
			"$want_action" "$want_result" "$out" >&2
	fi
	ROWS+=("$(printf '%-44s %-9s %-12s %-24s %-18s %s' "$target" "$client" "$action" "$issuer" "$result" "$verdict")")
}

curl_get() { # curl_get CA HOST IP PORT [PATH]
	local ip=$3
	[[ $ip == *:* ]] && ip="[$ip]"
	in_client curl -sS -v -o /dev/null --cacert "$1" --resolve "$2:$4:$ip" "https://$2:$4${5:-/}"
}
openssl_nosni() {
	in_client openssl s_client -connect "$1:443" -noservername -CAfile "$ROOT" \
		-verify_ip "$1" -verify_return_error </dev/null 2>/dev/null |
		openssl x509 -noout -issuer
}

probe "https://tunnel.cloudproxy.app/" curl splice ok curl_get "$ROOT" tunnel.cloudproxy.app 198.19.1.2 443
probe "wss://tunnel.cloudproxy.app/ws" go-ws splice ok \
	in_client "$LABCLIENT" --url wss://tunnel.cloudproxy.app/ws --addr 198.19.1.2:443 --ca "$ROOT"
probe "https://www.example.test/" curl bump ok curl_get "$GWCA" www.example.test 198.19.1.3 443
probe "wss://www.example.test/ws" go-ws bump ok \
	in_client "$LABCLIENT" --url wss://www.example.test/ws --addr 198.19.1.3:443 --ca "$GWCA"
probe "https://tunnel.cloudproxy.app/ (IPv6)" curl splice ok curl_get "$ROOT" tunnel.cloudproxy.app 2001:2:0:2::2 443
probe "https://www.example.test/ (IPv6)" curl bump ok curl_get "$GWCA" www.example.test 2001:2:0:2::3 443
probe "198.19.1.2:443 without SNI" openssl splice ok openssl_nosni 198.19.1.2
probe "https://bad.example.test/ (untrusted cert)" curl bump refused curl_get "$GWCA" bad.example.test 198.19.1.4 443
probe "https://www.example.test:8443/ (not 443)" curl "not steered" ok curl_get "$ROOT" www.example.test 198.19.1.3 8443

echo
printf '%-44s %-9s %-12s %-24s %-18s %s\n' TARGET CLIENT ACTION ISSUER RESULT CHECK
printf '%s\n' "${ROWS[@]}"
echo
echo "the header policy, as the lab server behind the bump saw it:"
seen=$(in_client curl -sS --cacert "$GWCA" --resolve www.example.test:443:198.19.1.3 \
	https://www.example.test/headers | grep -o '"X-Googapps-Allowed-Domains":\[[^]]*\]' || true)
echo "  ${seen:-none}"
[[ $seen == *example.com* ]] || { echo "demo: the injected header did not arrive" >&2; FAILED=1; }
sleep 0.3
echo
echo "snigate's connection log (one line per connection):"
grep '"msg":"connection"' "$LOG" | sed -E 's/^\{"level":"info","ts":"[^"]*","logger":"dataplane",//; s/\}$//'
echo
echo "snigate's access log (one line per HTTP request inside a bumped connection):"
grep '"msg":"request"' "$LOG" | sed -E 's/^\{"level":"info","ts":"[^"]*","logger":"http",//; s/\}$//'
exit "$FAILED"
