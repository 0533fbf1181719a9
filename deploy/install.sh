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

while (($#)); do
	case $1 in
	--binary) BINARY=${2:?--binary needs a path}; shift 2 ;;
	--import-ca) IMPORT_CA=${2:?--import-ca needs a file}; shift 2 ;;
	--import-key) IMPORT_KEY=${2:?--import-key needs a file}; shift 2 ;;
	--root) ROOT=${2:?--root needs a directory}; shift 2 ;;
	-h | --help) sed -n '2,16p' "$0"; exit 0 ;;
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

BIN_DIR=$ROOT/usr/local/bin
UNIT_DIR=$ROOT/etc/systemd/system
CONF_DIR=$ROOT/etc/snigate
STATE_DIR=$ROOT/var/lib/snigate
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
	say "installed $CONF_DIR/snigate.yaml: set intercept.interfaces to your LAN interfaces"
fi

if [[ -z $ROOT ]] && ! getent passwd snigate >/dev/null; then
	useradd --system --home-dir /var/lib/snigate --shell /usr/sbin/nologin \
		--user-group snigate
	say "created system user snigate"
fi

if [[ -e $STATE_DIR/ca.crt || -e $STATE_DIR/ca.key ]]; then
	say "kept the existing CA in $STATE_DIR"
	[[ -n $IMPORT_CA ]] && say "ignored --import-ca: a CA is already installed"
elif [[ -n $IMPORT_CA ]]; then
	"$BIN_DIR/snigate" ca import --cert "$IMPORT_CA" --key "${IMPORT_KEY:-$IMPORT_CA}" \
		--out "$STATE_DIR"
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

CA=/var/lib/snigate
cat <<TRUST

Clients must trust the gateway CA before their connections are bumped:
  Windows:  copy $CA/ca.der to the PC, then as administrator:
              certutil -addstore root ca.der
  macOS:    sudo security add-trusted-cert -d -r trustRoot \\
              -k /Library/Keychains/System.keychain ca.crt
  Debian/Ubuntu: cp ca.crt /usr/local/share/ca-certificates/snigate.crt
              && update-ca-certificates
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
