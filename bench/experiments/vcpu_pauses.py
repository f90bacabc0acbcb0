#!/usr/bin/env python3
"""Detects the host taking a vCPU away (bench/RESULTS.md, 2026-12-06 session 13): sleeps 1 ms at
a time and reports every wake-up more than 4 ms after the previous one. Run it at real-time
priority pinned to each CPU, so that nothing inside the guest can delay it:

  taskset -c 0 chrt -f 80 python3 bench/experiments/vcpu_pauses.py 30 cpu0 &
  taskset -c 1 chrt -f 80 python3 bench/experiments/vcpu_pauses.py 30 cpu1 &
"""
import sys
import time

seconds, label = float(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else ""
end = time.monotonic() + seconds
gaps, wakeups, last = [], 0, time.monotonic()
while last < end:
    time.sleep(0.001)
    now = time.monotonic()
    wakeups += 1
    if now - last > 0.004:
        gaps.append(round((now - last) * 1000, 1))
    last = now
print(f"{label} wake-ups {wakeups}, oversleeps over 4 ms: {len(gaps)}, longest {sorted(gaps)[-12:]}")
