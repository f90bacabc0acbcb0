#!/usr/bin/env bash
# An `ab.py --hook` for a build with `wake_delay.patch` applied: reads /metrics before and after
# the measured seconds and prints, for the requests in between, how long each waited to be
# polled again after the log's writer answered it (`event_log_wake_delay_seconds`) and how long
# the server spent on each `/g/collect` request (`http_request_duration_seconds`): mean and how
# many took over 0.5–25 ms. Arguments: PID SECONDS PREFIX (ab.py passes them).
set -euo pipefail
source "$(dirname "$0")/metrics_window.sh"
python3 - "$prefix" <<'PY'
import sys, re
prefix = sys.argv[1]
def scrape(path, name, filt=""):
    v = {}
    for line in open(path):
        if line.startswith(name) and filt in line:
            key, value = line.rsplit(" ", 1)
            v[key] = float(value)
    return v
for name, filt in (("event_log_wake_delay_seconds", ""), ("http_request_duration_seconds", "/g/collect")):
    b, a = scrape(prefix + ".before", name, filt), scrape(prefix + ".after", name, filt)
    d = {k: a[k] - b.get(k, 0) for k in a}
    count = sum(v for k, v in d.items() if "_count" in k)
    total = sum(v for k, v in d.items() if "_sum" in k)
    buckets = sorted((float(m.group(1)), v) for k, v in d.items() if "bucket" in k and (m := re.search(r'le="([0-9.e+-]+)"', k)))
    over = ", ".join(f"{le*1000:g}ms {int(count - v)}" for le, v in buckets if 0.0005 <= le <= 0.025)
    print(f"{name}: n {int(count)} mean {total / max(count, 1) * 1e6:.0f} µs; over {over}")
PY
