#!/usr/bin/env bash
# The demo: the orders API on :8080, the receiver on :9000, Envoy (deploy/demo/envoy.yaml) on :10000, admin
# :9901. Ctrl-C stops all three. `make run` builds everything first and then runs this.
set -euo pipefail
cd "$(dirname "$0")/.."

ENVOY_BIN=${ENVOY_BIN:-.venv/bin/envoy}
SECRET=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
LOG=.tmp/envoy-demo.log

for needed in target/wasm32-wasip1/release/proxy_webhooks.wasm target/debug/demo-orders \
              target/debug/demo-receiver "$ENVOY_BIN"; do
  [[ -x $needed || -f $needed ]] || { echo "missing $needed: run 'make run'" >&2; exit 1; }
done

# Fail early, and clearly, when another demo (or anything else) holds one of the ports.
for port in 8080 9000 10000 9901; do
  if ! python3 -c 'import socket,sys; socket.socket().bind(("127.0.0.1", int(sys.argv[1])))' "$port" 2>/dev/null; then
    echo "port $port is in use (is another demo running?); stop that first" >&2
    exit 1
  fi
done

pids=()
stop_all() {
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "demo stopped"
}
trap stop_all EXIT
trap 'exit 130' INT TERM

target/debug/demo-orders --port 8080 &
pids+=($!)
target/debug/demo-receiver --port 9000 --secret "$SECRET" &
pids+=($!)
mkdir -p .tmp
"$ENVOY_BIN" -c deploy/demo/envoy.yaml --concurrency 2 --log-level info --disable-hot-restart >"$LOG" 2>&1 &
pids+=($!)

# Wait (20 s at most) for Envoy's admin /ready.
ready() {
  python3 -c 'import urllib.request,sys; urllib.request.urlopen("http://127.0.0.1:9901/ready", timeout=1)' 2>/dev/null
}
for _ in $(seq 100); do
  ready && break
  kill -0 "${pids[2]}" 2>/dev/null || { echo "Envoy exited; its log:" >&2; tail -30 "$LOG" >&2; exit 1; }
  sleep 0.2
done
ready || { echo "Envoy not ready after 20 s; see $LOG" >&2; exit 1; }
for pid in "${pids[@]}"; do
  kill -0 "$pid" 2>/dev/null || { echo "a demo process failed to start (see above and $LOG)" >&2; exit 1; }
done

cat <<'TRY'

proxy-webhooks demo is up: Envoy :10000 → orders API :8080; webhooks → receiver :9000 (printed below).
Envoy's log: .tmp/envoy-demo.log   admin: http://127.0.0.1:9901/stats?filter=wasmcustom

Try, in another terminal (as the consumer "demo": its writes' events go to its subscriptions):
  curl -i -X POST localhost:10000/orders -H 'X-API-Key: demo-key' -H 'content-type: application/json' -d '{"item":"book","total":12}'
  curl -i -X PATCH localhost:10000/orders/1 -H 'X-API-Key: demo-key' -H 'content-type: application/json' -d '{"status":"paid"}'
  curl -i -X DELETE localhost:10000/orders/1 -H 'X-API-Key: demo-key'
  curl -i localhost:10000/orders
Without the key a write names no consumer: no webhook (webhooks_events_unaddressed counts it).

The subscription API (API key "demo-key"):
  curl -i localhost:10000/webhooks/subscriptions -H 'X-API-Key: demo-key'
  curl -i -X POST localhost:10000/webhooks/subscriptions -H 'X-API-Key: demo-key' \
       -H 'content-type: application/json' -d '{"url":"http://127.0.0.1:9000/mine","events":["order.*"]}'
  curl -i localhost:10000/webhooks/event-types -H 'X-API-Key: demo-key'

Webhooks for a subscription you create are signed with the secret its create call returned:
the demo receiver (which knows only the demo secret) prints them as not verified and answers 401.

Ctrl-C stops everything.
TRY

# Until Ctrl-C or until one of the three stops.
wait -n "${pids[@]}"
echo "a demo process stopped; stopping the others" >&2
