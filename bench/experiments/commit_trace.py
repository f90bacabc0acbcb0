#!/usr/bin/env python3
"""Reads the event trace that a server built with commit_trace.patch writes at shutdown
(SY_EXP_TRACE=FILE) and prints, for bench/RESULTS.md 2026-12-06 session 13:

  - the server-side append wait (queue + commit + fsync + wake-up) and each writer step;
  - the appends that waited longer than SLOW_MS, grouped into episodes (overlapping within
    1 ms), each put down to the longest writer step overlapping it: an fdatasync, a commit
    (over 1.5 ms these are SQLite's WAL checkpoints), a pacing sleep that overran (the writer
    not scheduled back in time), or none of them;
  - gaps of over 2 ms in which nothing at all happened (no append began, no writer step).

The first 10% of the appends (warm-up) are left out.

  python3 bench/experiments/commit_trace.py [--slow-ms 4] TRACE...
"""
import argparse
import collections

KINDS = {0: "append", 1: "commit", 2: "fsync (writer)", 3: "fsync (syncer)", 4: "pacing sleep",
         5: "gather wait"}
CAUSES = {1: "commit/checkpoint", 2: "fsync", 3: "fsync", 4: "sleep overran", 5: "gather wait"}


def load(path):
    events = []
    with open(path) as f:
        for line in f:
            kind, at_ns, dur_us, n = map(int, line.split())
            events.append((kind, at_ns, dur_us, n))
    events.sort(key=lambda e: e[1])
    return events


def pct(sorted_values, q):
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def report(path, slow_us):
    events = load(path)
    appends = [e for e in events if e[0] == 0]
    start = appends[len(appends) // 10][1]
    appends = [e for e in appends if e[1] >= start]
    steps = [e for e in events if e[0] != 0 and e[1] >= start - 20_000_000]
    print(f"== {path}")
    for kind in KINDS:
        durations = sorted(e[2] for e in (appends if kind == 0 else steps) if e[0] == kind)
        if durations:
            print(f"  {KINDS[kind]:15s} n={len(durations):7d} p50={pct(durations, .5):6d} µs "
                  f"p99={pct(durations, .99):6d} p99.9={pct(durations, .999):6d} "
                  f"max={durations[-1]:6d} total={sum(durations) / 1e6:.2f} s")

    episodes = []  # [start_ns, end_ns, appends, longest wait µs]
    for e in (e for e in appends if e[2] > slow_us):
        end = e[1] + e[2] * 1000
        if episodes and e[1] < episodes[-1][1] + 1_000_000:
            last = episodes[-1]
            last[1], last[2], last[3] = max(last[1], end), last[2] + 1, max(last[3], e[2])
        else:
            episodes.append([e[1], end, 1, e[2]])
    by_cause, appends_by_cause = collections.Counter(), collections.Counter()
    for begin, end, count, _ in episodes:
        overlapping = [s for s in steps if s[1] < end and s[1] + s[2] * 1000 > begin]
        longest = max(overlapping, key=lambda s: s[2], default=None)
        cause = CAUSES[longest[0]] if longest and longest[2] > 1000 else "none"
        by_cause[cause] += 1
        appends_by_cause[cause] += count
    slow = sum(appends_by_cause.values())
    print(f"  appends over {slow_us / 1000:g} ms: {slow} ({slow / len(appends) * 100:.2f}%) in "
          f"{len(episodes)} episodes: "
          + ", ".join(f"{c} {by_cause[c]} ({appends_by_cause[c]} appends)"
                      for c, _ in by_cause.most_common()))

    times = sorted(e[1] for e in events if e[1] >= start and e[1] <= appends[-1][1])
    gaps = [(a, b - a) for a, b in zip(times, times[1:]) if b - a > 2_000_000]
    print(f"  gaps over 2 ms with nothing happening: {len(gaps)}, longest "
          f"{max((g for _, g in gaps), default=0) / 1e6:.1f} ms")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--slow-ms", type=float, default=4.0)
    parser.add_argument("traces", nargs="+")
    args = parser.parse_args()
    for path in args.traces:
        report(path, args.slow_ms * 1000)


if __name__ == "__main__":
    main()
