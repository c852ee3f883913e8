#!/usr/bin/env bash
# Runs one tern-bench scenario against a fresh two-shard Tern again and again, and stops at
# the first run that does not finish: a shard that went to sleep and was never woken. Use it
# on any change to the vendored glommio's sleep and wake-up path (vendor/README.md, parts 4
# and 5). Before fa58b0a fixed the stranded-task bug (an executor parking with runnable tasks),
# the default scenario (an open loop at 600k msgs/s, publisher and subscriber on one shard)
# and other placement-b scenarios hit it twice in some 300 runs with timers kept armed.
#
#   [TERN=path/to/tern] perf/hang-hunt.sh [RUNS] [SCENARIO ARGS...]
#
# The hung server is left running for inspection (/proc/PID/fdinfo of its io_uring fds
# lists what each ring has in flight); kill it afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-40}
shift || true
args=("$@")
[ ${#args[@]} -eq 0 ] && args=(openloop --size 128 --rate 600000 --placement same)
. perf/fresh-tern.sh
bench=target/release/tern-bench
for i in $(seq 1 "$runs"); do
  fresh_tern
  if ! timeout 20 "$bench" run "${args[@]}" --url "nats://127.0.0.1:$port" --shards 2 \
      --duration 2 >/dev/null 2>&1; then
    echo "run $i did not finish: server pid $pid left running"
    exit 1
  fi
  kill "$pid"
  wait "$pid" 2>/dev/null || true
done
echo "$runs runs, no hang"
