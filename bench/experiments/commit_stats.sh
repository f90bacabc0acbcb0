#!/usr/bin/env bash
# An `ab.py --hook`: reads switchyard's /metrics before and after the measured seconds and
# prints what the SQLite event log's writer did in between (commits a second, records a commit,
# mean commit and fdatasync time, how many took over 1 / 2.5 / 5 ms). Arguments: PID SECONDS
# PREFIX (ab.py passes them); the two scrapes are kept as PREFIX.before and PREFIX.after.
set -euo pipefail
source "$(dirname "$0")/metrics_window.sh"
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
# Each histogram against its own count: one fdatasync may cover several commits.
count = lambda name: delta(f"{name}_count")
over = lambda name: [int(count(name) - delta(f'{name}_bucket{{le="{le}"}}')) for le in ("0.001", "0.0025", "0.005")]
mean_us = lambda name: delta(f"{name}_sum") / max(count(name), 1) * 1e6
commit, fsync = "event_log_commit_duration_seconds", "event_log_fsync_duration_seconds"
print(f"{commits / seconds:,.0f} commits/s, {delta('event_log_commit_records_sum') / commits:.1f} records a commit; "
      f"commit {mean_us(commit):.0f} µs (over 1/2.5/5 ms: {over(commit)}), "
      f"{count(fsync) / seconds:,.0f} fdatasyncs/s of {mean_us(fsync):.0f} µs (over: {over(fsync)})")
PY
