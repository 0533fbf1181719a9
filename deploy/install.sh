#!/usr/bin/env bash
# install.sh: install snigate on a Debian or Ubuntu gateway, as root.
#
#   deploy/install.sh [--binary PATH] [--import-ca FILE [--import-key FILE]] [--root DIR]
#
# Installs the binary, the systemd unit, an example configuration (never
# replacing one that exists), the forwarding sysctls, a system user, and a
# gateway CA when there is none (an existing CA is never overwritten). A
# site moving from Squid passes its CA with --import-ca (a PEM file holding
# the certificate and the key, or the certificate with --import-key), so the
# clients keep trusting the CA they already have. Safe to run twice.
#
# --root DIR installs into DIR instead of / and skips what acts on the
# running system (user creation, sysctl, systemctl): for packaging and tests.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROOT=""
BINARY=""
IMPORT_CA=""
IMPORT_KEY=""

die() { printf 'install: %s\n' "$*" >&2; exit 1; }
say() { printf 'install: %s\n' "$*"; }
# value OPTION VALUE: VALUE, or a clear error when the option has none.
value() { [[ -n ${2:-} && ${2:0:2} != -- ]] || die "$1 needs a value (see --help)"; printf '%s' "$2"; }

while (($#)); do
	case $1 in
	--binary) BINARY=$(value "$1" "${2:-}"); shift 2 ;;
	--import-ca) IMPORT_CA=$(value "$1" "${2:-}"); shift 2 ;;
	--import-key) IMPORT_KEY=$(value "$1" "${2:-}"); shift 2 ;;
	--root) ROOT=$(value "$1" "${2:-}"); shift 2 ;;
	-h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
	*) die "unknown argument $1 (see --help)" ;;
	esac
done
[[ $(id -u) == 0 || -n $ROOT ]] || die "run as root"
if [[ -z $ROOT && ! -f /etc/debian_version ]]; then
	die "this installer is for Debian or Ubuntu (no /etc/debian_version)"
fi
[[ -n $IMPORT_KEY && -z $IMPORT_CA ]] && die "--import-key goes with --import-ca"

if [[ -z $BINARY ]]; then
	BINARY=$REPO/bin/snigate
	if [[ ! -x $BINARY ]]; then
		command -v go >/dev/null || die "no $BINARY and no go to build it; pass --binary"
		say "building $BINARY"
		(cd "$REPO" && go build -o "$BINARY" ./cmd/snigate)
	fi
fi
[[ -x $BINARY ]] || die "$BINARY is not an executable file"

STATE_DIR=$ROOT/var/lib/snigate
# An imported CA is checked before anything is installed, so a bad file
# leaves the system as it was. One that differs from an installed CA is an
# error: the clients trust one of the two, and silently keeping the old one
# would break them.
STAGED_CA=""
if [[ -n $IMPORT_CA ]]; then
	STAGED_CA=$(mktemp -d)
	trap 'rm -rf "$STAGED_CA"' EXIT
	"$BINARY" ca import --cert "$IMPORT_CA" --key "${IMPORT_KEY:-$IMPORT_CA}" \
		--out "$STAGED_CA/ca" >/dev/null ||
		die "cannot import $IMPORT_CA (a certificate-only file needs --import-key KEYFILE)"
	if [[ -e $STATE_DIR/ca.der ]] && ! cmp -s "$STAGED_CA/ca/ca.der" "$STATE_DIR/ca.der"; then
		die "$STATE_DIR already holds a different CA; move it away to import $IMPORT_CA"
	fi
fi

BIN_DIR=$ROOT/usr/local/bin
UNIT_DIR=$ROOT/etc/systemd/system
CONF_DIR=$ROOT/etc/snigate
SYSCTL_DIR=$ROOT/etc/sysctl.d
mkdir -p "$BIN_DIR" "$UNIT_DIR" "$CONF_DIR" "$STATE_DIR" "$SYSCTL_DIR"
chmod 0700 "$STATE_DIR"

install -m 0755 "$BINARY" "$BIN_DIR/snigate.new"
mv -f "$BIN_DIR/snigate.new" "$BIN_DIR/snigate"
install -m 0644 "$REPO/deploy/snigate.service" "$UNIT_DIR/snigate.service"
install -m 0644 "$REPO/deploy/sysctl.conf" "$SYSCTL_DIR/90-snigate.conf"
if [[ -e $CONF_DIR/snigate.yaml ]]; then
	install -m 0644 "$REPO/deploy/snigate.yaml" "$CONF_DIR/snigate.yaml.example"
	say "kept $CONF_DIR/snigate.yaml; the current example is snigate.yaml.example"
else
	install -m 0644 "$REPO/deploy/snigate.yaml" "$CONF_DIR/snigate.yaml"
	say "wrote $CONF_DIR/snigate.yaml: set intercept.interfaces to your LAN interfaces"
fi

if [[ -z $ROOT ]] && ! getent passwd snigate >/dev/null; then
	useradd --system --home-dir /var/lib/snigate --shell /usr/sbin/nologin \
		--user-group snigate
	say "created system user snigate"
fi

if [[ -e $STATE_DIR/ca.crt || -e $STATE_DIR/ca.key ]]; then
	say "kept the existing CA in $STATE_DIR"
elif [[ -n $STAGED_CA ]]; then
	install -m 0600 "$STAGED_CA/ca/ca.key" "$STATE_DIR/ca.key"
	install -m 0644 "$STAGED_CA/ca/ca.crt" "$STAGED_CA/ca/ca.der" "$STATE_DIR/"
	say "imported the CA from $IMPORT_CA"
else
	"$BIN_DIR/snigate" ca init --out "$STATE_DIR"
fi
[[ -z $ROOT ]] && chown -R snigate:snigate "$STATE_DIR"

if [[ -z $ROOT ]]; then
	sysctl -q -p "$SYSCTL_DIR/90-snigate.conf"
	if [[ -d /run/systemd/system ]]; then
		systemctl daemon-reload
		systemctl enable snigate.service >/dev/null
		say "enabled snigate.service; start it with: systemctl start snigate"
	else
		say "systemd is not running here; start snigate run --config /etc/snigate/snigate.yaml by hand"
	fi
fi

CA=$STATE_DIR
cat <<TRUST

Clients must trust the gateway CA before their connections are bumped. Copy
$CA/ca.crt (PEM) or $CA/ca.der (DER) to each client, then there:
  Windows:  as administrator: certutil -addstore root ca.der
  macOS:    sudo security add-trusted-cert -d -r trustRoot \\
              -k /Library/Keychains/System.keychain ca.crt
  Debian/Ubuntu: cp ca.crt /usr/local/share/ca-certificates/snigate.crt &&
              update-ca-certificates
  Firefox:  enterprise policy Certificates.ImportEnterpriseRoots, or import
            ca.crt under Settings > Certificates > Authorities
  Java:     keytool -importcert -cacerts -alias snigate -file ca.crt
  gcloud:   core/custom_ca_certs_file REPLACES gcloud's bundle, so append the
            CA to a copy of it:
              cat /etc/ssl/certs/ca-certificates.crt ca.crt > ~/gcloud-roots.pem
              gcloud config set core/custom_ca_certs_file ~/gcloud-roots.pem
            (IAP tunnels are spliced by default and need none of this.)
Print the certificate at any time with: snigate ca export --pem (or --der)
TRUST
