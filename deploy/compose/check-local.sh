#!/usr/bin/env bash
# Checks the compose example's node configs without Docker: copies
# node1..3.toml to a temporary directory, rewrites only what a container
# provides (the addresses become 127.0.0.1 ports, data_dir a temporary
# directory, /run/secrets/* the files `hourcell certs init` makes), starts
# three `hourcell node` processes and checks that they form a cluster,
# accept an import of generated data through one node and answer through
# another. Everything it starts is stopped, and the temporary directory
# removed, on exit.
#
#   deploy/compose/check-local.sh [path/to/hourcell] [first port]
#
# Ports: gRPC on PORT..PORT+2, metrics on PORT+100..PORT+102 (default 21420).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${1:-${HOURCELL_BIN:-hourcell}}"
port="${2:-21420}"
tmp="$(mktemp -d -t hourcell-compose-check.XXXXXX)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

grpc() { echo $((port + $1 - 1)); }
metrics() { echo $((port + 100 + $1 - 1)); }

# The step OPERATIONS.md documents, with the same hosts.
"$bin" certs init "$tmp/certs" --nodes 3 --hosts node1,node2,node3,localhost,127.0.0.1 >/dev/null

for i in 1 2 3; do
  sed -e "s|^data_dir = \"/var/lib/hourcell\"|data_dir = \"$tmp/node$i\"|" \
      -e "s|^listen = \"0.0.0.0:7420\"|listen = \"127.0.0.1:$(grpc "$i")\"|" \
      -e "s|^metrics_listen = \"0.0.0.0:9420\"|metrics_listen = \"127.0.0.1:$(metrics "$i")\"|" \
      -e "s|\"node1:7420\"|\"127.0.0.1:$(grpc 1)\"|" \
      -e "s|\"node2:7420\"|\"127.0.0.1:$(grpc 2)\"|" \
      -e "s|\"node3:7420\"|\"127.0.0.1:$(grpc 3)\"|" \
      -e "s|/run/secrets/node\.pem|$tmp/certs/node-$i.pem|" \
      -e "s|/run/secrets/node\.key|$tmp/certs/node-$i.key|" \
      -e "s|/run/secrets/|$tmp/certs/|" \
      "$here/node$i.toml" > "$tmp/node$i.toml"
  # Only those lines may differ from the checked-in file.
  changed=$(diff "$here/node$i.toml" "$tmp/node$i.toml" | grep -c '^>' || true)
  [ "$changed" -eq 10 ] || { echo "node$i.toml: expected 10 rewritten lines, got $changed" >&2; exit 1; }
done

for i in 1 2 3; do
  "$bin" node --config "$tmp/node$i.toml" >"$tmp/node$i.log" 2>&1 &
  pids+=($!)
done

export HOURCELL_CA="$tmp/certs/ca.pem" HOURCELL_CERT="$tmp/certs/admin.pem" HOURCELL_KEY="$tmp/certs/admin.key"
fail() { echo "FAILED: $*" >&2; for i in 1 2 3; do echo "--- node$i.log" >&2; tail -20 "$tmp/node$i.log" >&2; done; exit 1; }

# A leader, and all three nodes voters with lag 0.
deadline=$((SECONDS + 60))
until out=$("$bin" cluster status --server "127.0.0.1:$(grpc 1)" --format json 2>/dev/null) \
  && python3 - "$out" <<'PY'
import json, sys
v = json.loads(sys.argv[1])
nodes = v["nodes"]
ok = len(nodes) == 3 and all(n["member"] == "voter" and n["lag"] == 0 for n in nodes)
ok = ok and sum(1 for n in nodes if n.get("role") == "leader") == 1
sys.exit(0 if ok else 1)
PY
do
  [ $SECONDS -lt $deadline ] || fail "no cluster of three voters: $out"
  sleep 1
done
"$bin" cluster status --server "127.0.0.1:$(grpc 1)"
# The compose healthcheck: status as the node itself, by its host name.
"$bin" status --server "localhost:$(grpc 2)" --ca "$tmp/certs/ca.pem" \
  --cert "$tmp/certs/node-2.pem" --key "$tmp/certs/node-2.key" >/dev/null || fail "healthcheck command"

# Generated data, imported through node 2.
"$bin" gen --seed 7 --persons 300 --days 3 --start "$(date -u -d '-5 days' +%Y-%m-%dT00:00:00Z)" --out "$tmp/town" >/dev/null
for kind in addresses registry events; do
  "$bin" import --server "127.0.0.1:$(grpc 2)" --kind "$kind" "$tmp/town/$kind.csv" --format json \
    | tee "$tmp/import-$kind.json" | head -c 300; echo
  python3 -c "import json,sys; v=json.load(open(sys.argv[1])); sys.exit(0 if v['accepted']>0 and v['rejected']==0 else 1)" \
    "$tmp/import-$kind.json" || fail "import of $kind"
done

# Every node answers, with the same number of persons seen.
for i in 1 2 3; do
  "$bin" status --server "127.0.0.1:$(grpc "$i")" --format json > "$tmp/status$i.json" || fail "status of node $i"
done
python3 - "$tmp" <<'PY' || fail "nodes disagree"
import json, sys
s = [json.load(open(f"{sys.argv[1]}/status{i}.json")) for i in (1, 2, 3)]
print("persons per node:", [x.get("persons") for x in s])
sys.exit(0 if s[0].get("persons") and len({x.get("persons") for x in s}) == 1 else 1)
PY
curl -fsS "http://127.0.0.1:$(metrics 3)/metrics" | grep -E '^hourcell_(health|raft_leader|raft_role|apply_lag)' | head -8 || fail "metrics"
"$bin" audit verify --server "127.0.0.1:$(grpc 3)" || fail "audit verify"
echo "OK: three nodes from node1..3.toml formed a cluster over TLS and took an import"
