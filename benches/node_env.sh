# Sourced by the single-node benchmark scripts (rss_by_step.sh,
# under_ingest.sh): one insecure local node, as the peers harness runs it.
# Needs BIN (the hourcell binary), D (the node's directory) and PORT.

# write_node_toml CACHE_MB: $D/node.toml with data in $D/data.
write_node_toml() {
  mkdir -p "$D"
  cat > "$D/node.toml" <<TOML
data_dir = "$D/data"
listen = "127.0.0.1:$PORT"
block_cache_mb = $1
log = "warn"

[rules]
hourly = false

[security]
insecure = true
anonymous_roles = ["all"]
requests_per_sec = 0
retention_days = 36500
TOML
}

# restart_node: stops the node started last (if any), starts it again and
# waits until it answers. Sets PID.
restart_node() {
  if [ -n "${PID:-}" ]; then kill "$PID"; while kill -0 "$PID" 2>/dev/null; do sleep 0.2; done; fi
  "$BIN" node --config "$D/node.toml" >>"$D/node.log" 2>&1 & PID=$!
  for _ in $(seq 300); do "$BIN" status --server "http://127.0.0.1:$PORT" >/dev/null 2>&1 && break; sleep 0.2; done
}
