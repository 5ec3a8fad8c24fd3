#!/usr/bin/env bash
# Starts a local pool of three xenpoold hosts on 127.0.0.1, 127.0.0.2 and 127.0.0.3 (same
# ports on each, as in a real pool), with one shared SR directory and the simulated
# hypervisor; joins the second and third host to the first; prints the coordinator's URL
# and where the credentials are; runs until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=${XENPOOL_LOCAL_DIR:-$PWD/target/local-pool}
HTTP_PORT=${XENPOOL_HTTP_PORT:-8080}
HTTPS_PORT=${XENPOOL_HTTPS_PORT:-8443}
# HA heartbeats (xha's port is 694, which needs root).
HA_PORT=${XENPOOL_HA_PORT:-8694}

cargo build --release --locked -p xenpoold -p xenpool-had -p xenpool-cli
BIN=$PWD/target/release

rm -rf "$DIR"
mkdir -p "$DIR/shared-sr"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

start() { # index, extra flags...
    local i=$1; shift
    "$BIN/xenpoold" --data-dir "$DIR/host$i" --address "127.0.0.$i" \
        --http-port "$HTTP_PORT" --https-port "$HTTPS_PORT" --ha-port "$HA_PORT" \
        --host-name "host$i" "$@" \
        > "$DIR/host$i.out" 2> "$DIR/host$i.log" &
    pids+=($!)
    for _ in $(seq 1 100); do
        grep -q "xenpoold ready" "$DIR/host$i.out" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "host$i did not start; see $DIR/host$i.log" >&2
    exit 1
}

# An example plugin on every host (host.call_plugin / host-call-plugin): it answers with
# its host, the function it was called with, and the call's JSON from its standard input.
for i in 1 2 3; do
    mkdir -p "$DIR/host$i/plugins"
    cat > "$DIR/host$i/plugins/echo" <<PLUGIN
#!/bin/sh
printf 'host$i %s ' "\$1"
cat
PLUGIN
    chmod 755 "$DIR/host$i/plugins/echo"
done

start 1 --shared-sr "$DIR/shared-sr"
start 2 --no-demo
start 3 --no-demo

PW=$(cat "$DIR/host1/root-password")
for i in 2 3; do
    "$BIN/xenpool" -s "127.0.0.$i" -p "$HTTP_PORT" -u root -pwf "$DIR/host$i/root-password" \
        pool-join master-address=127.0.0.1 master-username=root master-password="$PW"
done
sleep 1
"$BIN/xenpool" -s 127.0.0.1 -p "$HTTP_PORT" -u root -pwf "$DIR/host1/root-password" host-list

cat <<MSG
Local pool running:
  coordinator:  http://127.0.0.1:$HTTP_PORT/  (https://127.0.0.1:$HTTPS_PORT/, self-signed)
  user root, password in $DIR/host1/root-password
  try:  target/release/xenpool -s 127.0.0.1 -p $HTTP_PORT -u root -pwf $DIR/host1/root-password vm-list
        target/release/xenpool ... host-call-plugin host-uuid=<uuid> plugin=echo fn=hello args:who=me
        curl -u root:<password> http://127.0.0.1:$HTTP_PORT/metrics
  logs: $DIR/host*.log
Ctrl-C stops the pool.
MSG
wait
