# Sourced by the perf/*.sh scripts: `fresh_tern [ARGS...]` starts a Tern (from $TERN, default
# target/release/tern) on a random loopback port with ARGS (default `--shards 2`), under
# $TERN_WRAP if set (e.g. `taskset -c 1`), and sets `port` and `pid`.
fresh_tern() {
  port=$((17000 + RANDOM % 3000))
  [ $# -gt 0 ] || set -- --shards 2
  # shellcheck disable=SC2086 # TERN_WRAP is a command and its arguments
  ${TERN_WRAP:-} "${TERN:-target/release/tern}" -a 127.0.0.1 -p "$port" "$@" >/dev/null 2>&1 &
  pid=$!
  sleep 0.3
}
