#!/usr/bin/env python3
"""fdatasync latency against the bytes written before it (bench/RESULTS.md, 2026-12-06 session
15): paced at a commit rate, each round writes SIZE bytes into an already written 4 MiB region
(as a reused WAL is) and times the fdatasync after it.

  python3 bench/experiments/fsync_size.py [RATE=1850] [SECONDS=8] [SIZES=4096,12288,32768]
  ROUNDS=2 (environment): how many times to go through the sizes.
The scratch file is made in the current directory: run it on the disk under test.
"""
import os, sys, time
path = "fsync_size.scratch"
rate = int(sys.argv[1]) if len(sys.argv) > 1 else 1850
secs = float(sys.argv[2]) if len(sys.argv) > 2 else 8
sizes = [int(s) for s in (sys.argv[3].split(",") if len(sys.argv) > 3 else ["4096","12288","32768"])]
region = 4 * 1024 * 1024
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
os.write(fd, b"\0" * region); os.fsync(fd)
def run(size):
    buf = os.urandom(size)
    lat = []
    off = 0
    period = 1.0 / rate
    nxt = time.perf_counter()
    end = nxt + secs
    while nxt < end:
        now = time.perf_counter()
        if now < nxt:
            time.sleep(nxt - now)
        if off + size > region: off = 0
        os.pwrite(fd, buf, off); off += size
        t = time.perf_counter(); os.fdatasync(fd); lat.append(time.perf_counter() - t)
        nxt += period
    lat.sort()
    q = lambda p: lat[min(len(lat)-1, int(p*len(lat)))]*1000
    print(f"size {size:6d}: n {len(lat)} p50 {q(.5):.3f} p99 {q(.99):.3f} p99.9 {q(.999):.3f} max {lat[-1]*1000:.2f} ms; >2ms {sum(1 for x in lat if x>0.002)}; busy {sum(lat)/secs*100:.0f}%", flush=True)
for rnd in range(int(os.environ.get("ROUNDS", "2"))):
    for s in sizes: run(s)
os.unlink(path)
