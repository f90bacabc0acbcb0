# Sourced by the `/metrics` hooks for `ab.py` (commit_stats.sh, wake_stats.sh): with the hook's
# arguments PID SECONDS PREFIX, scrapes the server's /metrics into PREFIX.before, waits out the
# measured seconds and scrapes again into PREFIX.after; leaves `prefix` and `seconds` set.
pid=$1 seconds=$2 prefix=$3
port=$(ss -ltnpH | grep "pid=$pid," | head -1 | awk '{print $4}' | sed 's/.*://')
curl -fsS "http://127.0.0.1:$port/metrics" > "$prefix.before"
sleep "$seconds"
curl -fsS "http://127.0.0.1:$port/metrics" > "$prefix.after"
