#!/bin/sh
# Set dfir-ar up on Debian and run it. Idempotent: a second run installs nothing new.
#
#   sh dfir_ar/bootstrap.sh serve   system packages + venv, then `dfir-ar serve -c examples/local.toml`
#   sh dfir_ar/bootstrap.sh test    system packages + venv, then lint, type-check and the whole suite
#
# Needs root (apt-get, and the suite creates network namespaces, nft tables and test users).
set -eu

cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="${DFIR_AR_VENV:-$ROOT/.venv}"
MODE="${1:-serve}"

# What the product and its tests use from Debian (see README "What gets installed").
APT_PKGS="python3 python3-venv python3-pip nftables ipset iptables iproute2 tcpdump libpcap0.8 \
yara nats-server iputils-ping lsof pamtester binutils gdb zstd procps passwd login curl ca-certificates"

log() { printf 'bootstrap: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    log "run me as root: apt-get, nftables and the tests' network namespaces need it"
    exit 1
fi

missing=""
for pkg in $APT_PKGS; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed"; then
        missing="$missing $pkg"
    fi
done
if [ -n "$missing" ]; then
    log "installing system packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

PY="$(command -v python3)"
if [ ! -x "$VENV/bin/python" ]; then
    log "creating the virtualenv $VENV"
    "$PY" -m venv "$VENV"
fi

stamp="$VENV/.dfir-ar-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    log "installing dfir-ar and its Python dependencies into $VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
    "$VENV/bin/python" -m pip install -q -e ".[dev]"
    echo "$want" > "$stamp"
fi

case "$MODE" in
serve)
    log "starting dfir-ar in local mode with examples/local.toml (Ctrl-C stops; blocks stay, see lift_on_stop)"
    exec "$VENV/bin/dfir-ar" serve -c examples/local.toml
    ;;
test)
    log "ruff"
    "$VENV/bin/ruff" check dfir_ar responders collectors tests bench
    log "mypy --strict"
    "$VENV/bin/mypy"
    log "pytest"
    set +e
    shift || true
    "$VENV/bin/python" -m pytest -p no:cacheprovider "$@"
    rc=$?
    set -e
    if [ "$rc" -eq 5 ]; then
        log "pytest collected no tests: that is a failure here"
        exit 1
    fi
    exit "$rc"
    ;;
*)
    log "unknown mode '$MODE': use 'serve' or 'test'"
    exit 2
    ;;
esac
