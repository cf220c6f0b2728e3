#!/usr/bin/env python3
"""What one overlay mount costs the kernel, apart from kiln: mount(2) of a one-lower overlay, as kilnd mounts a
bundle's rootfs (index=off,redirect_dir=off), timed from Python's ctypes, with N other mounts on the filesystem
that holds the layers, and with the layers on a bind mount of their own. The kernel's ovl_fill_super clones a
private mount of every layer's path, and clone_private_mount walks every child mount of the mount holding it,
so the first column grows with N. See bench/RESULTS.md ("an overlay mount whose cost grows with the host's
mounts"). Needs root; works in $WORK (default /dev/shm/kiln-bench-ovl, removed at the end).

    bench/overlay_mounts.py                  # N = 0, 500, 2000
    N=0,4000 RUNS=7 COUNT=300 bench/overlay_mounts.py
    OPTIONS='index=off,redirect_dir=off;index=off,redirect_dir=off,uuid=null' N=0 bench/overlay_mounts.py
"""
import ctypes
import os
import shutil
import statistics
import time

libc = ctypes.CDLL("libc.so.6", use_errno=True)
MS_BIND = 4096
MNT_DETACH = 2
WORK = os.environ.get("WORK", "/dev/shm/kiln-bench-ovl")
COUNT = int(os.environ.get("COUNT", "300"))
RUNS = int(os.environ.get("RUNS", "5"))
NS = [int(n) for n in os.environ.get("N", "0,500,2000").split(",")]
OPTIONS = os.environ.get("OPTIONS", "index=off,redirect_dir=off").split(";")


def mount(src, dst, fstype, flags, data):
    if libc.mount(src.encode(), dst.encode(), fstype.encode() if fstype else None, flags,
                  data.encode() if data else None) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), dst)


def umount(path):
    libc.umount2(path.encode(), MNT_DETACH)


def per_mount(layers, options):
    """Microseconds per overlay mount of COUNT fresh snapshots over layers/lower (mkdirs and unmounts untimed)."""
    dirs = [f"{layers}/s{i}" for i in range(COUNT)]
    for d in dirs:
        for sub in ("fs", "work", "m"):
            os.makedirs(f"{d}/{sub}")
    mounted = []
    try:
        start = time.perf_counter()
        for d in dirs:
            mount("overlay", f"{d}/m", "overlay", 0, f"workdir={d}/work,upperdir={d}/fs,lowerdir={layers}/lower,{options}")
            mounted.append(f"{d}/m")
        took = time.perf_counter() - start
    finally:  # a failed mount (a bad OPTIONS) leaves none of the earlier ones behind
        for m in mounted:
            umount(m)
    for d in dirs:
        shutil.rmtree(d)
    return took / COUNT * 1e6


def main():
    if os.geteuid() != 0:
        raise SystemExit("bench/overlay_mounts.py: needs root (mount)")
    shared, own = f"{WORK}/shared", f"{WORK}/own"
    siblings = []
    try:
        for layers in (shared, own):
            os.makedirs(f"{layers}/lower/etc")
            with open(f"{layers}/lower/etc/passwd", "w") as f:
                f.write("root:x:0:0::/root:/bin/sh\n")
        mount(own, own, None, MS_BIND, None)
        print(f"{'N other mounts':>15} {'options':<45} {'layers on the shared mount':>27} {'on their own mount':>19}")
        for n in NS:
            while len(siblings) < n:
                p = f"{WORK}/siblings/{len(siblings)}"
                os.makedirs(p)
                mount("tmpfs", p, "tmpfs", 0, "size=4k")
                siblings.append(p)
            for options in OPTIONS:
                a, b = [], []
                for _ in range(RUNS):  # alternating
                    a.append(per_mount(shared, options))
                    b.append(per_mount(own, options))
                print(f"{n:>15} {options:<45} {statistics.median(a):>24.0f} µs {statistics.median(b):>16.0f} µs")
    finally:
        for p in siblings:
            umount(p)
        umount(own)
        shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
