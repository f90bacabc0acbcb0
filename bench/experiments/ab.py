#!/usr/bin/env python3
"""A/B runs of server binaries with bench/run's own helpers (same niceness, provisioning,
settling, CPU accounting), for the comparisons in bench/RESULTS.md's hand-written notes.

Each round starts every binary fresh, one after the other, in a new data directory under
/var/tmp, loads it, prints one line, and stops it. A binary may be a wrapper script that sets
environment variables and `exec`s the real one (the pid stays the server's); a path ending in
`bench-noop` is started as the no-op server.

  python3 bench/experiments/ab.py --rate 57000 [--seconds 10] [--rounds 3] BIN...
  python3 bench/experiments/ab.py --wrk [--seconds 8] BIN...        (BENCH_WRK_CONNECTIONS)
  --hook SCRIPT: run `bash SCRIPT PID SECONDS PREFIX` beside each measured run (perf, strace, a
  /metrics scrape, ...); PREFIX is a path to write its files to.
"""
import argparse
import importlib.machinery
import importlib.util
import os
import subprocess
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
loader = importlib.machinery.SourceFileLoader("bench_run", os.path.join(HERE, "..", "run"))
spec = importlib.util.spec_from_loader("bench_run", loader)
bench = importlib.util.module_from_spec(spec)
loader.exec_module(bench)


def start(binary, data):
    if binary.endswith("bench-noop"):
        return bench.start_noop(binary, os.path.join(data, "server.log"))
    return bench.start_switchyard(binary, data)


def main():
    parser = argparse.ArgumentParser()
    load = parser.add_mutually_exclusive_group(required=True)
    load.add_argument("--wrk", action="store_true", help="closed loop (wrk)")
    load.add_argument("--rate", type=float, help="open loop at this rate (bench-load)")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--warm", type=float, default=2, help="wrk warm-up seconds")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hook")
    parser.add_argument("binaries", nargs="+")
    args = parser.parse_args()
    bench.raise_priority()
    scratch = tempfile.mkdtemp(prefix="ab-", dir="/var/tmp")
    for round_ in range(args.rounds):
        for i, binary in enumerate(args.binaries):
            data = os.path.join(scratch, f"r{round_}-{i}")
            os.makedirs(data)
            proc, port = start(binary, data)
            bench.send_once(port)
            bench.settle(proc.pid)
            if args.wrk:
                bench.wrk(port, args.warm)
            hook = None
            if args.hook:
                hook = subprocess.Popen(["bash", args.hook, str(proc.pid), str(args.seconds),
                                         os.path.join(scratch, f"hook-r{round_}-{i}")])
            if args.wrk:
                r, cpu = bench.measure_cpu(lambda: bench.wrk(port, args.seconds), proc.pid)
                line = f"{r['rate']:,.0f} req/s"
            else:
                r, cpu = bench.measure_cpu(lambda: bench.load(port, args.rate, args.seconds),
                                           proc.pid)
                lat = r["latency_ms"]
                line = (f"{r['ok'] / args.seconds:,.0f} 2xx/s p50 {lat['p50']:.2f} "
                        f"p90 {lat['p90']:.2f} p99 {lat['p99']:.2f} max {lat['max']:.2f} ms; "
                        f"p99 from send {r['service_ms']['p99']:.2f}, "
                        f"send lag {r['send_lag_ms']['p99']:.2f}; errors {r['errors_total']}")
            if hook:
                hook.wait()
            print(f"round {round_} {binary}: {line}; cores: server {cpu['server']:.2f} "
                  f"({bench.thread_cores(cpu)}), load {cpu['generator']:.2f}, other {cpu['other']:.2f}",
                  flush=True)
            bench.stop(proc)
    print(f"scratch directory: {scratch}")


if __name__ == "__main__":
    main()
