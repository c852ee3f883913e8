# Sourced by the perf/*-hunt.sh scripts: `fresh_tern` starts a two-shard Tern (from $TERN,
# default target/release/tern) on a random loopback port and sets `port` and `pid`.
fresh_tern() {
  port=$((17000 + RANDOM % 3000))
  "${TERN:-target/release/tern}" -a 127.0.0.1 -p "$port" --shards 2 >/dev/null 2>&1 &
  pid=$!
  sleep 0.3
}
