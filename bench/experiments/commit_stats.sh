#!/usr/bin/env bash
# An `ab.py --hook`: reads switchyard's /metrics before and after the measured seconds and
# prints what the SQLite event log's writer did in between (commits a second, records a commit,
# mean commit and fdatasync time, how many took over 1 / 2.5 / 5 ms). Arguments: PID SECONDS
# PREFIX (ab.py passes them); the two scrapes are kept as PREFIX.before and PREFIX.after.
set -euo pipefail
pid=$1 seconds=$2 prefix=$3
port=$(ss -ltnpH | grep "pid=$pid," | head -1 | awk '{print $4}' | sed 's/.*://')
curl -fsS "http://127.0.0.1:$port/metrics" > "$prefix.before"
sleep "$seconds"
curl -fsS "http://127.0.0.1:$port/metrics" > "$prefix.after"
python3 - "$prefix" "$seconds" <<'PY'
import sys
prefix, seconds = sys.argv[1], float(sys.argv[2])
def scrape(path):
    values = {}
    for line in open(path):
        if line.strip() and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            values[key] = float(value)
    return values
before, after = scrape(prefix + ".before"), scrape(prefix + ".after")
delta = lambda key: after.get(key, 0.0) - before.get(key, 0.0)
commits = delta("event_log_commit_records_count")
if not commits:
    sys.exit(print("no commits in the window"))
over = lambda name: [int(commits - delta(f'{name}_bucket{{le="{le}"}}')) for le in ("0.001", "0.0025", "0.005")]
commit_us = delta("event_log_commit_duration_seconds_sum") / commits * 1e6
fsync_us = delta("event_log_fsync_duration_seconds_sum") / commits * 1e6
print(f"{commits / seconds:,.0f} commits/s, {delta('event_log_commit_records_sum') / commits:.1f} records a commit; "
      f"commit {commit_us:.0f} µs (over 1/2.5/5 ms: {over('event_log_commit_duration_seconds')}), "
      f"fdatasync {fsync_us:.0f} µs (over: {over('event_log_fsync_duration_seconds')})")
PY
