#!/usr/bin/env bash
# XenAPI compatibility tests with real, unmodified clients against a real xenpoold:
#   - the `xenapi` package from PyPI (XML-RPC), installed in a venv under target/client-venv;
#   - Xen Orchestra's `xen-api` package from npm (JSON-RPC, XML-RPC and its automatic
#     choice), installed from tests/clients/package-lock.json under target/client-npm;
#   - our xe-style CLI (`xenpool`).
# Each client logs in, reads every class with get_all_records, starts a VM with
# Async.VM.start and waits for the task, sees the power-state change through event.from,
# fails to log in with a wrong password with SESSION_AUTHENTICATION_FAILED and logs out,
# over HTTP and over HTTPS (accepting the daemon's self-signed certificate).
# A second host then joins the pool; on the pool of two, the `xenapi` package follows
# HOST_IS_SLAVE from the member, and drives the pool through the call sequences of
# CloudStack's XenServer agent (tests/clients/cloudstack_like.py: volume, VLAN network,
# VM with disk and NIC, snapshot, migration to the other host, host plugin, data sources)
# and of OpenStack Nova's XenAPI driver (tests/clients/openstack_like.py: spawn from a
# cached image, snapshot, reboot, destroy). The coordinator has a shared SR (the default
# SR); each host has the test plugin tests/clients/host_plugin.py in its plugin directory.
#
# Run from anywhere; needs python3 (with venv), node >= 18 and npm, and network access to
# PyPI and the npm registry on the first run (later runs reuse target/client-*).
# Environment: XENPOOL_SKIP_BUILD=1 skips `cargo build` (scripts/test.sh has just built).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

XENAPI_VERSION=26.21.1 # PyPI `xenapi`
XEN_API_VERSION=4.7.6  # npm `xen-api` (pinned with its dependencies in tests/clients/package-lock.json)

VENV=$ROOT/target/client-venv
NPM_DIR=$ROOT/target/client-npm
RUN_DIR=$ROOT/target/client-tests
DATA=$RUN_DIR/data
STAGE_TIMEOUT=300

log() { printf 'client-tests: %s\n' "$*"; }
daemon_pid=""

show_daemon_log() {
    if [[ -f $RUN_DIR/xenpoold.log ]]; then
        echo "---- last lines of $RUN_DIR/xenpoold.log ----" >&2
        tail -n 30 "$RUN_DIR/xenpoold.log" >&2 || true
        echo "----" >&2
    fi
}

die() {
    printf 'client-tests: FAILED: %s\n' "$*" >&2
    show_daemon_log
    exit 1
}

member_pid=""
cleanup() {
    if [[ -z $member_pid && -n ${RUN_DIR:-} && -f $RUN_DIR/member/pid ]]; then
        member_pid=$(cat "$RUN_DIR/member/pid")
    fi
    if [[ -n $member_pid ]]; then
        kill -9 "$member_pid" 2>/dev/null || true
        wait "$member_pid" 2>/dev/null || true
    fi
    if [[ -n $daemon_pid ]] && kill -0 "$daemon_pid" 2>/dev/null; then
        kill "$daemon_pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$daemon_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$daemon_pid" 2>/dev/null || true
        wait "$daemon_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for tool in python3 node npm; do
    command -v "$tool" >/dev/null || die "$tool is required but not installed"
done
node_major=$(node -p 'process.versions.node.split(".")[0]')
((node_major >= 18)) || die "node >= 18 is required (found $(node --version))"

# ---------------------------------------------------------------------------------------
# Build
if [[ ${XENPOOL_SKIP_BUILD:-0} != 1 ]]; then
    log "building xenpoold and xenpool"
    cargo build --locked --quiet -p xenpoold -p xenpool-cli || die "cargo build failed"
fi
XENPOOLD=$ROOT/target/debug/xenpoold
XENPOOL=$ROOT/target/debug/xenpool
[[ -x $XENPOOLD && -x $XENPOOL ]] || die "target/debug/xenpoold or target/debug/xenpool missing"

# ---------------------------------------------------------------------------------------
# Clients
if "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('xenapi') != '$XENAPI_VERSION')" 2>/dev/null; then
    log "xenapi $XENAPI_VERSION already in target/client-venv"
else
    log "installing xenapi $XENAPI_VERSION from PyPI into target/client-venv"
    rm -rf "$VENV"
    python3 -m venv "$VENV" ||
        die "python3 -m venv failed (on Debian/Ubuntu: apt-get install python3-venv)"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "xenapi==$XENAPI_VERSION" || die "pip install xenapi==$XENAPI_VERSION failed"
fi
"$VENV/bin/python" -c 'import XenAPI' || die "the venv cannot import XenAPI"

if [[ -f $NPM_DIR/node_modules/xen-api/package.json ]] &&
    cmp -s "$ROOT/tests/clients/package-lock.json" "$NPM_DIR/package-lock.json" &&
    cmp -s "$ROOT/tests/clients/package.json" "$NPM_DIR/package.json"; then
    log "xen-api $XEN_API_VERSION already in target/client-npm"
else
    log "installing xen-api $XEN_API_VERSION from npm into target/client-npm"
    rm -rf "$NPM_DIR"
    mkdir -p "$NPM_DIR"
    cp "$ROOT/tests/clients/package.json" "$ROOT/tests/clients/package-lock.json" "$NPM_DIR/"
    npm ci --prefix "$NPM_DIR" --no-audit --no-fund --loglevel=error ||
        die "npm ci (xen-api $XEN_API_VERSION) failed"
fi
installed=$(node -p "require('$NPM_DIR/node_modules/xen-api/package.json').version")
[[ $installed == "$XEN_API_VERSION" ]] || die "target/client-npm holds xen-api $installed, not $XEN_API_VERSION"
export XEN_API_DIR=$NPM_DIR/node_modules/xen-api

# ---------------------------------------------------------------------------------------
# A fresh daemon on free ports
free_ports() {
    python3 - <<'EOF'
import socket
socks = []
for _ in range(2):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(*(s.getsockname()[1] for s in socks))
EOF
}

start_daemon() {
    rm -rf "$RUN_DIR"
    mkdir -p "$DATA"
    read -r HTTP_PORT HTTPS_PORT < <(free_ports)
    "$XENPOOLD" --data-dir "$DATA" --address 127.0.0.1 --http-port "$HTTP_PORT" \
        --https-port "$HTTPS_PORT" --sim-delay-ms 100 --shared-sr "$RUN_DIR/shared-sr" \
        >"$RUN_DIR/xenpoold.out" 2>"$RUN_DIR/xenpoold.log" &
    daemon_pid=$!
    for _ in $(seq 300); do
        if grep -q '^xenpoold ready' "$RUN_DIR/xenpoold.out"; then
            return 0
        fi
        kill -0 "$daemon_pid" 2>/dev/null || break
        sleep 0.1
    done
    cleanup
    daemon_pid=""
    return 1
}

started=0
for attempt in 1 2 3; do
    if start_daemon; then
        started=1
        break
    fi
    log "xenpoold did not start (attempt $attempt):"
    tail -n 5 "$RUN_DIR/xenpoold.log" >&2 || true
done
((started)) || die "xenpoold did not print its ready line"
log "$(cat "$RUN_DIR/xenpoold.out") (pid $daemon_pid, data $DATA)"
PASSWORD=$(cat "$DATA/root-password")
[[ -n $PASSWORD ]] || die "no root password in $DATA/root-password"
[[ -f $DATA/xenpool-cert.pem ]] || die "no generated certificate in $DATA/xenpool-cert.pem"
HTTP_URL=http://127.0.0.1:$HTTP_PORT
HTTPS_URL=https://127.0.0.1:$HTTPS_PORT

# The test plugin in a host's plugin directory (<data dir>/plugins), under the names the
# clients call; the wrapper tells the plugin which host it runs on.
install_plugins() {
    local dir=$1/plugins address=$2 name
    mkdir -p "$dir"
    for name in vmops dom0_plugin_version.py; do
        printf '#!/bin/sh\nXENPOOL_TEST_PLUGIN_HOST=%s exec %q %q "$@"\n' \
            "$address" "$VENV/bin/python" "$ROOT/tests/clients/host_plugin.py" >"$dir/$name"
        chmod 755 "$dir/$name"
    done
}
install_plugins "$DATA" 127.0.0.1

# ---------------------------------------------------------------------------------------
# Stages
passed=()
stage() {
    local name=$1
    shift
    kill -0 "$daemon_pid" 2>/dev/null || die "xenpoold (pid $daemon_pid) exited before: $name"
    log "== $name"
    local rc=0
    if declare -F "$1" >/dev/null; then
        ("$@") || rc=$? # a shell function, in a subshell so that its `exit` ends only it
    else
        timeout "$STAGE_TIMEOUT" "$@" || rc=$?
    fi
    if ((rc == 124)); then
        die "$name: timed out after ${STAGE_TIMEOUT}s"
    elif ((rc != 0)); then
        die "$name (exit status $rc)"
    fi
    passed+=("$name")
}

stage "python xenapi $XENAPI_VERSION over HTTP" \
    "$VENV/bin/python" tests/clients/python_client.py "$HTTP_URL" "$PASSWORD"
stage "python xenapi $XENAPI_VERSION over HTTPS" \
    "$VENV/bin/python" tests/clients/python_client.py "$HTTPS_URL" "$PASSWORD" --https
stage "node xen-api $XEN_API_VERSION over HTTP" \
    node tests/clients/node_client.mjs "$HTTP_URL" "$PASSWORD"
stage "node xen-api $XEN_API_VERSION over HTTPS" \
    node tests/clients/node_client.mjs "$HTTPS_URL" "$PASSWORD"

# The xe-style CLI.
cli_checks() {
    local pwf=$DATA/root-password
    local xp=("$XENPOOL" -s 127.0.0.1 -p "$HTTP_PORT" -u root -pwf "$pwf")
    local out uuid
    fail() {
        echo "FAIL [cli] $*"
        exit 1
    }
    ok() { echo "PASS [cli] $*"; }

    out=$("${xp[@]}" vm-list) || fail "vm-list"
    grep -q 'demo-vm' <<<"$out" || fail "vm-list does not show demo-vm: $out"
    ok "vm-list shows demo-vm"
    uuid=$("${xp[@]}" --minimal vm-list name-label=demo-vm) || fail "vm-list --minimal"
    [[ $uuid =~ ^[0-9a-f-]{36}$ ]] || fail "vm-list --minimal name-label=demo-vm printed '$uuid'"
    ok "vm-list --minimal name-label=demo-vm -> $uuid"
    out=$("${xp[@]}" --minimal vm-list power-state=halted name-label=demo-vm)
    [[ $out == "$uuid" ]] || fail "demo-vm is not halted before vm-start ('$out')"
    "${xp[@]}" vm-start vm=demo-vm || fail "vm-start vm=demo-vm"
    out=$("${xp[@]}" --minimal vm-list power-state=running name-label=demo-vm)
    [[ $out == "$uuid" ]] || fail "demo-vm is not running after vm-start ('$out')"
    ok "vm-start vm=demo-vm -> running"
    "${xp[@]}" vm-shutdown vm=demo-vm || fail "vm-shutdown vm=demo-vm"
    out=$("${xp[@]}" --minimal vm-list power-state=halted name-label=demo-vm)
    [[ $out == "$uuid" ]] || fail "demo-vm is not halted after vm-shutdown ('$out')"
    out=$("${xp[@]}" --minimal vm-list power-state=running name-label=demo-vm)
    [[ -z $out ]] || fail "vm-list power-state=running still lists demo-vm ('$out')"
    ok "vm-shutdown vm=demo-vm -> halted"
    out=$("$XENPOOL" -s 127.0.0.1 -p "$HTTPS_PORT" --https -u root -pwf "$pwf" --minimal vm-list) ||
        fail "vm-list over HTTPS"
    grep -q "$uuid" <<<"$out" || fail "vm-list --minimal over HTTPS does not list $uuid ('$out')"
    ok "vm-list --minimal over HTTPS"
    if out=$("$XENPOOL" -s 127.0.0.1 -p "$HTTP_PORT" -u root -pw wrong-password vm-list 2>&1); then
        fail "vm-list with a wrong password succeeded"
    fi
    grep -q SESSION_AUTHENTICATION_FAILED <<<"$out" ||
        fail "a wrong password did not report SESSION_AUTHENTICATION_FAILED ('$out')"
    ok "a wrong password is refused with SESSION_AUTHENTICATION_FAILED"
    # help needs no server and no password, as xe help.
    out=$("$XENPOOL" help) || fail "help"
    grep -q 'vm-start' <<<"$out" || fail "help does not list vm-start ('$out')"
    out=$("$XENPOOL" help pool-join) || fail "help pool-join"
    grep -q 'master-address' <<<"$out" || fail "help pool-join does not name master-address ('$out')"
    if "$XENPOOL" help no-such-command >/dev/null 2>&1; then
        fail "help of an unknown command succeeded"
    fi
    ok "help, help COMMAND, and an unknown command refused"
}
stage "xenpool CLI (vm-list, vm-start, vm-shutdown, --minimal, HTTPS)" cli_checks

# A second host on 127.0.0.2 (same ports, as hosts of a pool have) joins the pool; the
# Python client pointed at it follows HOST_IS_SLAVE to the coordinator.
redirect_checks() {
    local member_dir=$RUN_DIR/member
    mkdir -p "$member_dir"
    "$XENPOOLD" --data-dir "$member_dir/data" --address 127.0.0.2 --http-port "$HTTP_PORT" \
        --https-port "$HTTPS_PORT" --no-demo \
        >"$member_dir/xenpoold.out" 2>"$member_dir/xenpoold.log" &
    echo $! >"$member_dir/pid"
    for _ in $(seq 300); do
        grep -q '^xenpoold ready' "$member_dir/xenpoold.out" 2>/dev/null && break
        sleep 0.1
    done
    grep -q '^xenpoold ready' "$member_dir/xenpoold.out" || { echo "FAIL [redirect] member did not start"; exit 1; }
    install_plugins "$member_dir/data" 127.0.0.2
    "$XENPOOL" -s 127.0.0.2 -p "$HTTP_PORT" -u root -pwf "$member_dir/data/root-password" \
        pool-join master-address=127.0.0.1 master-username=root master-password="$PASSWORD" ||
        { echo "FAIL [redirect] pool-join"; exit 1; }
    echo "PASS [redirect] 127.0.0.2 joined the pool"
    timeout "$STAGE_TIMEOUT" "$VENV/bin/python" tests/clients/python_redirect.py \
        "http://127.0.0.2:$HTTP_PORT" "$PASSWORD" 127.0.0.1
}
stage "python xenapi $XENAPI_VERSION follows HOST_IS_SLAVE from a member" redirect_checks
[[ -f $RUN_DIR/member/pid ]] && member_pid=$(cat "$RUN_DIR/member/pid")

# The pool of two from here on. The agent is pointed at the member over HTTPS, as
# CloudStack connects to a host's address and follows HOST_IS_SLAVE.
stage "CloudStack-like agent with xenapi $XENAPI_VERSION (2 hosts, migration)" \
    "$VENV/bin/python" tests/clients/cloudstack_like.py "https://127.0.0.2:$HTTPS_PORT" \
    "$PASSWORD"
stage "OpenStack-like driver with xenapi $XENAPI_VERSION (spawn, snapshot, reboot, destroy)" \
    "$VENV/bin/python" tests/clients/openstack_like.py "$HTTP_URL" "$PASSWORD"

log "all ${#passed[@]} stages passed:"
for name in "${passed[@]}"; do
    log "  ok: $name"
done
