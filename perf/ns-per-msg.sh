#!/usr/bin/env bash
# Where a message's server time goes: runs one tern-bench scenario against a fresh Tern,
# samples the server with `perf record -e cpu-clock` (a software event: this VM has no
# hardware counters) for a few seconds in the middle of the run, and prints nanoseconds per
# message for each (thread, function) and each (thread, binary/kernel), stalls included.
# callgrind counts instructions; this shows what they cost, cache misses and wake-ups too.
# Session 19 found with it a 400-byte line copied twice per delivered message, a route
# parser that split, hashed and utf8-checked every message, and a malloc per routed message.
#
#   perf/ns-per-msg.sh [-b] [-n ROWS] -- SCENARIO [tern-bench run args...]
#
#   -b       placement b: `--shards 2`, nothing pinned (add --placement same|cross --shards 2
#            to the bench arguments); default placement a: one shard on core 1, the
#            generator on core 0
#   -n ROWS  how many functions to list (default 25)
#   TERN_ARGS="--spin_before_park 0" passes extra arguments to Tern; TERN another binary.
#
# Example: perf/ns-per-msg.sh -- pubsub --size 128
# The run lasts 8 s (sampling from 2 s to 5 s); the rate is the bench's out (or in) msgs/s.
set -euo pipefail
cd "$(dirname "$0")/.."
placement=a
rows=25
while [ $# -gt 0 ]; do
  case "$1" in
    -b) placement=b; shift ;;
    -n) rows=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "usage: $0 [-b] [-n ROWS] -- SCENARIO [bench args]" >&2; exit 2 ;;
  esac
done
[ $# -ge 1 ] || { echo "usage: $0 [-b] [-n ROWS] -- SCENARIO [bench args]" >&2; exit 2; }
command -v perf >/dev/null || { echo "perf is not installed" >&2; exit 1; }
bench=target/release/tern-bench
data=$(mktemp /tmp/ns-per-msg.XXXXXX)
log=$(mktemp /tmp/ns-per-msg-bench.XXXXXX)
freq=2000
secs=3
. perf/fresh-tern.sh
# shellcheck disable=SC2086 # TERN_ARGS are words
if [ $placement = a ]; then
  TERN_WRAP="taskset -c 1" fresh_tern --shards 1 ${TERN_ARGS:-}
  pin=(--pin 0)
else
  fresh_tern --shards 2 ${TERN_ARGS:-}
  pin=()
fi
trap 'kill $pid 2>/dev/null || true; rm -f "$data" "$log"' EXIT
$bench run "$@" --duration 8 "${pin[@]}" --url nats://127.0.0.1:$port >"$log" 2>&1 &
gen=$!
sleep 2
perf record -q -e cpu-clock -F $freq -p $pid -o "$data" -- sleep $secs >/dev/null 2>&1
wait $gen
# "out 1.23M msgs/s" (or "in" for pub-only): messages per second, with its k/M suffix.
rate=$(awk '($1 == "out" || $1 == "in") && $2 != "0" {v = $2; m = 1;
  if (v ~ /k$/) m = 1e3; if (v ~ /M$/) m = 1e6; sub(/[kM]$/, "", v); print v * m; exit}' "$log")
grep -E "^ *(in|out|latency|generator)" "$log" || true
[ -n "$rate" ] || { echo "no message rate in the bench output" >&2; cat "$log" >&2; exit 1; }
echo "ns per message at $rate msgs/s ($secs s of samples at $freq Hz):"
per_msg() {
  perf report -i "$data" --no-children --sort "$1" -n --stdio -g none 2>/dev/null |
    grep -v '^#' | grep -v '^$' | head -"$2" |
    awk -v r="$rate" -v f=$freq -v s=$secs '{n = $2; $1 = ""; $2 = "";
      printf "%7.1f %s\n", n / f / (r * s) * 1e9, $0}'
}
# `head` closing the pipe early is not a failure.
per_msg pid,sym "$rows" || true
echo "by binary:"
per_msg pid,dso 12 || true
