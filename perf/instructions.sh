#!/usr/bin/env bash
# Instructions per message: runs one tern-bench scenario for a fixed number of messages
# against a fresh Tern under `valgrind --tool=callgrind`, counting from the first message
# (the counters are zeroed once the server is up), and prints the server's instructions per
# message in all and for each function (inclusive), the figure to compare builds by on
# this noisy VM, where wall-clock rounds differ by 10-40 %.
#
#   perf/instructions.sh [-b] [-m MSGS] [-n ROWS] -- SCENARIO [tern-bench run args...]
#
#   -b       two shards (add --placement same|cross --shards 2 to the bench arguments);
#            default one shard. valgrind 3.19 keeps its thread lock while a thread sleeps
#            in io_uring_enter, so a parked shard would starve the other: with -b the shards
#            never park (--spin_before_park 3600s) and valgrind schedules fairly
#            (--fair-sched=yes). The spin's own instructions then count too; compare
#            functions, or totals of runs made the same way.
#   -m MSGS  messages to publish (default 100000)
#   -n ROWS  functions to list (default 30; as in perf/ns-per-msg.sh)
#   TERN another binary; TERN_ARGS more arguments for it. Keeps the profile in
#   /tmp/instructions.out for callgrind_annotate (use --inclusive=yes or --auto=yes).
#
# Example: perf/instructions.sh -b -- pubsub --size 128 --placement cross --shards 2
set -euo pipefail
cd "$(dirname "$0")/.."
shards=1
msgs=100000
rows=30
while [ $# -gt 0 ]; do
  case "$1" in
    -b) shards=2; shift ;;
    -m) msgs=$2; shift 2 ;;
    -n) rows=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "usage: $0 [-b] [-m MSGS] [-n ROWS] -- SCENARIO [bench args]" >&2; exit 2 ;;
  esac
done
[ $# -ge 1 ] || { echo "usage: $0 [-b] [-m MSGS] [-n ROWS] -- SCENARIO [bench args]" >&2; exit 2; }
command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 1; }
out=/tmp/instructions.out
log=$(mktemp /tmp/instructions-bench.XXXXXX)
rm -f "$out" "$out".*
if [ $shards = 1 ]; then
  vg=(); spin=(--spin_before_park 0)
else
  vg=(--fair-sched=yes); spin=(--spin_before_park 3600s)
fi
. perf/fresh-tern.sh
# shellcheck disable=SC2086 # TERN_ARGS are words
TERN_WRAP="valgrind --tool=callgrind ${vg[*]} --callgrind-out-file=$out" \
  fresh_tern --shards $shards "${spin[@]}" ${TERN_ARGS:-}
trap 'kill -9 $pid 2>/dev/null && wait $pid 2>/dev/null; rm -f "$log"' EXIT
# Up when a connection gets its INFO; valgrind takes a few seconds to start the shards.
up() {
  exec 3<>/dev/tcp/127.0.0.1/$port || return 1
  local line=""
  read -r -t 10 line <&3 || true
  exec 3<&-
  [[ $line == INFO* ]]
}
for _ in $(seq 60); do
  up 2>/dev/null && break
  sleep 0.5
done
callgrind_control -z $pid >/dev/null 2>&1
target/release/tern-bench run "$@" --msgs "$msgs" --url nats://127.0.0.1:$port >"$log" 2>&1 ||
  { cat "$log" >&2; exit 1; }
callgrind_control -d $pid >/dev/null 2>&1
grep -E "received|lost" "$log" | head -1
# The dump after zeroing is the largest file (callgrind numbers them).
f=$(ls -S "$out"* | head -1)
[ "$f" = "$out" ] || cp "$f" "$out"
total=$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
echo "instructions per message: $((total / msgs)) ($total for $msgs messages)"
echo "per message, inclusive, by function:"
callgrind_annotate --inclusive=yes "$out" 2>/dev/null |
  awk -v n="$msgs" '/ \[\/.*\]$/ && $1 ~ /^[0-9,]+$/ {c = $1; gsub(",", "", c);
    f = $0; sub(/^ *[0-9,]+ +\( *[0-9.]+%\) +/, "", f); printf "%9.1f  %s\n", c / n, f}' |
  head -"$rows" || true # `head` closing the pipe early is not a failure.
