# Helpers that start the real components the tests need, each on its own port, in throwaway
# directories; sourced by scripts/test. Every start function prints what it did and exports the
# URL the tests read. `stop_services` (run on exit) stops only what was started here.

STARTED_PIDS=()
CLEANUP_DIRS=()

say() { printf '\033[1m[scripts/test]\033[0m %s\n' "$*" >&2; }

can_install() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }

apt_install() {
  can_install || return 1
  say "installing $* with apt-get"
  if [ -z "${APT_UPDATED:-}" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 || true
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# A throwaway PostgreSQL cluster (fsync off: test speed only). Exports SWITCHYARD_TEST_POSTGRES_URL.
start_postgres() {
  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
    apt_install postgresql || return 1
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    [ -x "$bin/initdb" ] || return 1
  fi
  local dir port runas=()
  dir=$(mktemp -d /tmp/switchyard-pg.XXXXXX)
  CLEANUP_DIRS+=("$dir")
  port=$(free_port)
  if [ "$(id -u)" = 0 ]; then
    chown postgres "$dir"
    runas=(setpriv --reuid=postgres --regid=postgres --init-groups)
  fi
  "${runas[@]}" "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >/dev/null || return 1
  "${runas[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w start \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
    >/dev/null || { cat "$dir/log" >&2; return 1; }
  PG_STOP=("${runas[@]}" "$bin/pg_ctl" -D "$dir/data" -m immediate stop)
  export SWITCHYARD_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$port/postgres"
  say "PostgreSQL $("$bin/postgres" --version | awk '{print $3}') started on port $port"
}

# A throwaway NATS server with JetStream. Exports SWITCHYARD_TEST_NATS_URL.
start_nats() {
  if ! command -v nats-server >/dev/null 2>&1; then
    apt_install nats-server || return 1
  fi
  local dir port
  dir=$(mktemp -d /tmp/switchyard-nats.XXXXXX)
  CLEANUP_DIRS+=("$dir")
  port=$(free_port)
  # JetStream takes 75% of memory and disk by default; cap it.
  cat >"$dir/nats.conf" <<CONF
listen: 127.0.0.1:$port
jetstream { store_dir: "$dir/js", max_memory_store: 256MB, max_file_store: 4GB }
CONF
  nats-server -c "$dir/nats.conf" >"$dir/log" 2>&1 &
  STARTED_PIDS+=($!)
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      export SWITCHYARD_TEST_NATS_URL="nats://127.0.0.1:$port"
      say "NATS $(nats-server --version | awk '{print $2}') with JetStream started on port $port"
      return 0
    fi
    sleep 0.1
  done
  cat "$dir/log" >&2
  return 1
}

# A throwaway ClickHouse server (Debian's 18.16, or whatever clickhouse-server is installed) on
# free ports, as the clickhouse user when we are root. Exports SWITCHYARD_TEST_CLICKHOUSE_URL (the
# HTTP interface; each test creates a database of its own there).
start_clickhouse() {
  if ! command -v clickhouse-server >/dev/null 2>&1; then
    apt_install clickhouse-server clickhouse-client || return 1
  fi
  local dir http tcp inter runas=()
  dir=$(mktemp -d /tmp/switchyard-ch.XXXXXX)
  CLEANUP_DIRS+=("$dir")
  http=$(free_port)
  tcp=$(free_port)
  inter=$(free_port)
  if [ "$(id -u)" = 0 ]; then
    chown clickhouse: "$dir"
    runas=(setpriv --reuid=clickhouse --regid=clickhouse --init-groups)
  fi
  "${runas[@]}" clickhouse-server --config=/etc/clickhouse-server/config.xml -- \
    --path="$dir/" --tmp_path="$dir/tmp/" --user_files_path="$dir/uf/" \
    --format_schema_path="$dir/fs/" --http_port="$http" --tcp_port="$tcp" \
    --interserver_http_port="$inter" --listen_host=127.0.0.1 \
    --logger.log="$dir/ch.log" --logger.errorlog="$dir/ch.err.log" >"$dir/out" 2>&1 &
  STARTED_PIDS+=($!)
  for _ in $(seq 1 240); do
    if curl -sf "http://127.0.0.1:$http/ping" >/dev/null 2>&1; then
      export SWITCHYARD_TEST_CLICKHOUSE_URL="http://127.0.0.1:$http/"
      say "ClickHouse $(curl -s "http://127.0.0.1:$http/?query=SELECT%20version()") started on port $http"
      return 0
    fi
    sleep 0.25
  done
  cat "$dir/out" "$dir/ch.err.log" >&2 2>/dev/null || true
  return 1
}

# The npm packages of the Node.js client tests (crates/switchyard/tests/node: the official Segment
# library), installed from the committed package-lock.json and kept in its node_modules while the
# lock file is unchanged. Needs Node.js 20+ (Debian's is older, so none is installed here).
# Exports SWITCHYARD_TEST_NODE (the node binary).
install_node_deps() {
  local dir=crates/switchyard/tests/node log
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    say "node and npm not found (Node.js 20+ is needed)"
    return 1
  fi
  if [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ]; then
    say "Node.js $(node --version) is too old (20+ is needed)"
    return 1
  fi
  if ! cmp -s "$dir/package-lock.json" "$dir/node_modules/.installed-package-lock.json"; then
    log=$(mktemp)
    if ! npm ci --prefix "$dir" --loglevel=error --no-audit --no-fund >"$log" 2>&1; then
      cat "$log" >&2
      rm -f "$log"
      return 1
    fi
    rm -f "$log"
    cp "$dir/package-lock.json" "$dir/node_modules/.installed-package-lock.json"
  fi
  SWITCHYARD_TEST_NODE=$(command -v node)
  export SWITCHYARD_TEST_NODE
  say "Node.js $(node --version) with the packages of $dir"
}

stop_services() {
  if [ -n "${PG_STOP:-}" ]; then "${PG_STOP[@]}" >/dev/null 2>&1 || true; fi
  for pid in "${STARTED_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  # Let them exit (ClickHouse writes while it shuts down) before removing their directories.
  for pid in "${STARTED_PIDS[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  done
  for dir in "${CLEANUP_DIRS[@]}"; do rm -rf "$dir"; done
}
