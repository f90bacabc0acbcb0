#!/usr/bin/env python3
"""Prototype behind bench/RESULTS.md, session 12: the event log's writer with SQLite's automatic
checkpoints inside its commits ("inline") against a log of segment files whose finished
segments another thread checkpoints ("segments"). 1,400 paced commits a second of one 6 KB
record each, fdatasync of the WAL after each commit, like the real writer. A rotation (the new
segment opened; its WAL sized ahead with PRESIZE MiB of zeros by the other thread, which also
checkpoints the old segment on the writer's own connection, handed over so that closing it does
not checkpoint on the writer's path) counts in the commit it follows.

  [PRESIZE=16] python3 bench/experiments/segments.py inline|segments [SECONDS]   (/var/tmp/segx)
"""
import os, sqlite3, threading, time, sys, random
D="/var/tmp/segx"
os.makedirs(D, exist_ok=True)
mode=sys.argv[1]  # "inline": one file, autocheckpoint 1000 inside commits; "segments": writer wal_autocheckpoint=0, rotate every ROT commits, other thread TRUNCATE-checkpoints the old one
DUR=float(sys.argv[2]) if len(sys.argv)>2 else 12
for f in os.listdir(D): os.unlink(os.path.join(D,f))
rnd=random.Random(1)
vocab=[os.urandom(8).hex() for _ in range(400)]
def payload(n=2000):
    return " ".join(rnd.choice(vocab) for _ in range(n//17)).encode()
PRESIZE=os.environ.get("PRESIZE")
def prepare(path):
    if PRESIZE:
        c=sqlite3.connect(path, isolation_level=None); c.execute("PRAGMA journal_mode=WAL"); c.execute("CREATE TABLE IF NOT EXISTS log(seq INTEGER PRIMARY KEY, payload BLOB)"); c.execute("PRAGMA wal_checkpoint(TRUNCATE)"); c.close()
        fd=os.open(path+"-wal", os.O_RDWR|os.O_CREAT); z=b"\0"*(1<<20)
        for i in range(int(PRESIZE)): os.pwrite(fd, z, i<<20)
        os.fsync(fd); os.close(fd)
def open_db(path, autockpt):
    c=sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    c.execute("PRAGMA journal_mode=WAL"); c.execute("PRAGMA synchronous=NORMAL")
    c.execute(f"PRAGMA wal_autocheckpoint={autockpt}")
    c.execute("CREATE TABLE IF NOT EXISTS log(seq INTEGER PRIMARY KEY, payload BLOB)")
    return c
lat=[]; ck=[]
todo=[]; cv=threading.Condition(); stop=False
def checkpointer():
    while True:
        with cv:
            while not todo and not stop: cv.wait()
            if not todo and stop: return
            item=todo.pop(0)
        if isinstance(item, str):
            prepare(item); continue
        t=time.perf_counter()
        item.execute("PRAGMA wal_checkpoint(TRUNCATE)"); item.close()
        ck.append((time.perf_counter()-t)*1000)
th=threading.Thread(target=checkpointer); th.start()
if mode=="segments": prepare(f"{D}/seg0.db"); prepare(f"{D}/seg1.db")
seg=0; path=f"{D}/seg{seg}.db"; conn=open_db(path, 1000 if mode=="inline" else 0)
wal=os.open(path+"-wal", os.O_RDONLY)
ROT=1500  # commits per segment (~1 s)
seq=0; n=0; t_end=time.time()+DUR; period=1/1400
nxt=time.perf_counter()
blob=[payload(6000) for _ in range(50)]
while time.time()<t_end:
    nxt+=period
    d=nxt-time.perf_counter()
    if d>0: time.sleep(d)
    t=time.perf_counter()
    conn.execute("BEGIN IMMEDIATE"); seq+=1
    conn.execute("INSERT INTO log VALUES(?,?)",(seq, blob[seq%50])); conn.execute("COMMIT")
    os.fdatasync(wal)
    n+=1
    if mode=="segments" and n%ROT==0:
        old=conn; os.close(wal)
        seg+=1; path=f"{D}/seg{seg}.db"; conn=open_db(path,0)
        wal=os.open(path+"-wal", os.O_RDONLY)
        with cv: todo.append(old); todo.append(f"{D}/seg{seg+1}.db"); cv.notify()
    lat.append((time.perf_counter()-t)*1000)
with cv: stop=True; cv.notify()
th.join()
lat.sort(); L=len(lat)
print(f"{mode}: ops {L} p50 {lat[L//2]:.2f} p99 {lat[int(L*.99)]:.2f} p99.9 {lat[int(L*.999)]:.2f} max {lat[-1]:.2f} ms; over 2ms {sum(1 for x in lat if x>2)/L*100:.2f}% (time {sum(x for x in lat if x>2)/DUR/10:.2f}%); checkpoints {len(ck)} " + (f"p50 {sorted(ck)[len(ck)//2]:.1f} ms" if ck else ""))
