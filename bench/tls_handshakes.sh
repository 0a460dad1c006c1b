#!/usr/bin/env bash
# Handshakes per second against nginx (TLS 1.3, one worker) with `openssl s_time -new`, without
# and with the observer, in alternating rounds of one run; then the TLS programs' run counts and
# run times from bpf_stats. Usage (root): bench/tls_handshakes.sh [SECONDS] [ROUNDS]
# (default 5 s, 3 rounds).
# Needs the release build (`cargo build --release -p observer`), nginx, openssl, bpftool.
set -euo pipefail
secs=${1:-5}
rounds=${2:-3}
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/target/release/observer
dir=$(mktemp -d)
ns=obs-bench-tls-$$
cleanup() {
  [ -f "$dir/nginx.pid" ] && kill "$(cat "$dir/nginx.pid")" 2>/dev/null || true
  [ -n "${obs:-}" ] && kill "$obs" 2>/dev/null || true
  sleep 0.5; ip netns del "$ns" 2>/dev/null || true; rm -rf "$dir"
}
trap cleanup EXIT
ip netns add "$ns"; ip -n "$ns" link set lo up
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$dir/key.pem" \
  -out "$dir/cert.pem" -days 1 -subj /CN=tls.test 2>/dev/null
mkdir -p "$dir/tmp"
cat > "$dir/nginx.conf" <<CONF
daemon on; worker_processes 1; user root; error_log $dir/error.log; pid $dir/nginx.pid;
events { worker_connections 256; }
http { access_log off; client_body_temp_path $dir/tmp; proxy_temp_path $dir/tmp;
  fastcgi_temp_path $dir/tmp; uwsgi_temp_path $dir/tmp; scgi_temp_path $dir/tmp;
  server { listen 127.0.0.1:8443 ssl; ssl_certificate $dir/cert.pem; ssl_certificate_key $dir/key.pem;
    ssl_protocols TLSv1.3; ssl_session_tickets off; location / { return 200 "ok\n"; } } }
CONF
ip netns exec "$ns" nginx -p "$dir" -c "$dir/nginx.conf"
sleep 0.5
# Handshakes per wall-clock second (s_time rounds its own "real seconds" to an integer).
rate() {
  local start end n
  start=$(date +%s.%N)
  n=$(ip netns exec "$ns" openssl s_time -connect 127.0.0.1:8443 -new -time "$secs" 2>/dev/null \
    | awk '/connections in/ && /real seconds/ { print $1; exit }')
  end=$(date +%s.%N)
  awk -v n="$n" -v s="$start" -v e="$end" 'BEGIN { printf "%.0f", n / (e - s) }'
}
start_observer() {
  rm -f "$dir/out.ndjson"
  "$bin" run --tls --netns "/run/netns/$ns" --output "$dir/out.ndjson" 2>"$dir/obs.err" &
  obs=$!
  until grep -q '"started"' "$dir/out.ndjson" 2>/dev/null; do sleep 0.1; done
}
stop_observer() { kill -INT "$obs"; wait "$obs" || true; obs=; }
# Rounds alternate the order (none, observer; then observer, none; ...) on a shared machine.
sysctl -q -w kernel.bpf_stats_enabled=1
without=(); with=()
for round in $(seq "$rounds"); do
  if [ $((round % 2)) = 1 ]; then
    without+=("$(rate)"); start_observer; with+=("$(rate)"); stop_observer
  else
    start_observer; with+=("$(rate)"); stop_observer; without+=("$(rate)")
  fi
done
start_observer
rate >/dev/null
stats=$(bpftool prog show 2>/dev/null | awk '
  /name tls_/ { name=$4; for (i=1;i<=NF;i++) { if ($i=="run_time_ns") t=$(i+1); if ($i=="run_cnt") c=$(i+1) }
    if (c > 0) printf "%s runs=%d avg_ns=%.0f\n", name, c, t/c }')
records=$(grep -c '"observer.tls"' "$dir/out.ndjson" || true)
stop_observer
sysctl -q -w kernel.bpf_stats_enabled=0
mean() { printf '%s\n' "$@" | awk '{ s += $1 } END { printf "%.0f", s / NR }'; }
echo "handshakes/s without: ${without[*]} (mean $(mean "${without[@]}")); with observer: ${with[*]} (mean $(mean "${with[@]}"))"
echo "ratio of means with / without: $(awk -v a="$(mean "${with[@]}")" -v b="$(mean "${without[@]}")" 'BEGIN { printf "%.3f", a / b }')"
echo "last round with bpf_stats: $records observer.tls records; programs:"
echo "$stats"

# Per-hit cost of a uprobe: SSL_free(NULL) returns at once, so a loop of calls costs the call
# alone without the observer, and the call plus the uprobe (trap, tls_call, return) with it.
hit_loop() {
  python3 - <<'PY'
import ctypes, time
ssl = ctypes.CDLL("libssl.so.3")
f = ssl.SSL_free
n = 300000
t = time.perf_counter()
for _ in range(n):
    f(None)
print((time.perf_counter() - t) / n * 1e9)
PY
}
bare=$(hit_loop)
"$bin" run --tls --output /dev/null 2>/dev/null &
obs=$!
sleep 3
hooked=$(hit_loop)
kill -INT "$obs"; wait "$obs" || true; obs=
echo "SSL_free(NULL) call: $(printf %.0f "$bare") ns without, $(printf %.0f "$hooked") ns with the uprobe: $(awk -v a="$hooked" -v b="$bare" 'BEGIN { printf "%.0f", a - b }') ns per hit"
