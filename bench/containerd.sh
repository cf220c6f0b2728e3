#!/usr/bin/env bash
# Benchmark (not a test): kilnd vs containerd 1.6 from Debian (overlayfs snapshotter) on the images that
# bench/unpack.sh builds. Alternating runs on tmpfs; prints medians, min–max, ratios (kiln/containerd), peak RSS.
#
#   bench/containerd.sh          # root; containerd + ctr (apt-get install containerd), runc, skopeo, umoci,
#                                # debootstrap (see unpack.sh), /usr/bin/time; builds the release binaries
#   RUNS=5 COUNT=50 IMAGES="minbase stack" WORK=/dev/shm/kiln-bench W=/dev/shm/kiln-bench-ctd bench/containerd.sh
#
# Rows, per image (each cold run starts from nothing unpacked; `sync; sleep 1` before every timed run):
#   cold unpack   containerd: `ctr images mount REF DIR` on an image imported with --no-unpack (ctr 1.6 has no
#                 `images unpack`; `images mount` runs the same image.Unpack as `import`/`run`, then one
#                 read-only view + mount of a few ms); kiln: `kiln image pull REF` on a fresh kilnd root
#   cold run      containerd: `ctr run --rm --snapshotter overlayfs REF ID /bin/true`; kiln: `kiln image pull` +
#                 `kiln bundle create` + `runc run` + `kiln bundle rm`
#   warm create   kiln: Bundles.Create (overlay mount + config.json) p50 over COUNT via examples/grpc_load, and the
#                 `kiln bundle create`+`rm` CLI pair; containerd: `ctr snapshots prepare KEY CHAINID` (no mount,
#                 no spec — its closest verb) and `ctr snapshots rm KEY`; `ctr version` = ctr's own start-up cost
#   peak RSS      VmHWM of the daemon, reset (clear_refs 5) just before each timed unpack
#
# containerd runs with its own config, root, state and socket under $W; nothing of a system containerd is used.
# Images are built once and cached by `BUILD_ONLY=1 bench/unpack.sh` under $WORK/layout.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/common.sh
. bench/common.sh

RUNS=${RUNS:-5}
COUNT=${COUNT:-50}
IMAGES=${IMAGES:-minbase stack}
WORK=${WORK:-/dev/shm/kiln-bench}
W=${W:-/dev/shm/kiln-bench-ctd}
L="$WORK/layout"

[ "$(id -u)" = 0 ] || { echo "bench: needs root (mounts)"; exit 2; }
for t in containerd ctr runc skopeo umoci /usr/bin/time python3; do
  command -v "$t" >/dev/null || { echo "bench: $t missing (apt-get install -y containerd runc skopeo umoci)"; exit 2; }
done
cargo build --release --bin kilnd --bin kiln --example grpc_load >/dev/null
KILN=$PWD/target/release/kiln
KILND=$PWD/target/release/kilnd
LOAD=$PWD/target/release/examples/grpc_load
WORK="$WORK" KILN="$KILN" BUILD_ONLY=1 bench/unpack.sh
SRC=$(cat "$L/SOURCE")

cpid=""
kpid=""
umount_under() { awk -v p="$1" '$5 ~ "^"p {print $5}' /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l; }
cleanup() {
  set +e
  [ -n "$kpid" ] && kill "$kpid" 2>/dev/null && wait "$kpid" 2>/dev/null
  [ -d "$W/runc" ] && for c in $(runc --root "$W/runc" list -q 2>/dev/null); do runc --root "$W/runc" delete -f "$c"; done
  if [ -n "$cpid" ]; then
    for c in $(C tasks ls -q 2>/dev/null); do C tasks kill -s KILL "$c"; done
    sleep 0.5
    for c in $(C containers ls -q 2>/dev/null); do C tasks rm -f "$c"; C containers rm "$c"; done
    kill "$cpid" 2>/dev/null; wait "$cpid" 2>/dev/null
  fi
  umount_under "$W"
  rm -rf "$W"
  # ctr and the runc shim of 1.6 keep fifos, shim sockets and runc state under /run/containerd whatever the
  # config says; remove that directory only if this script created it.
  [ -n "${RUN_CTD_NEW:-}" ] && rm -rf /run/containerd
}
[ -e /run/containerd ] || RUN_CTD_NEW=1
trap cleanup EXIT
cleanup
mkdir -p "$W/ctd" "$W/arch" "$W/mnt" "$W/runc"

# containerd: a minimal config of its own (CRI off, overlayfs snapshotter, everything under $W/ctd).
SOCK="$W/ctd/containerd.sock"
containerd_config "$W/ctd" "$SOCK"
C() { ctr -a "$SOCK" -n bench "$@"; }
containerd --config "$W/ctd/config.toml" --log-level warn >"$W/containerd.log" 2>&1 &
cpid=$!
for _ in $(seq 200); do C version >/dev/null 2>&1 && break; sleep 0.05; done
C version >/dev/null || { cat "$W/containerd.log"; exit 1; }
CTD_VERSION=$(containerd --version | awk '{print $3}')
# containerd 1.6 inflates through `unpigz` when it is on PATH (and CONTAINERD_DISABLE_PIGZ is unset).
if command -v unpigz >/dev/null && [ -z "${CONTAINERD_DISABLE_PIGZ:-}" ]; then CTD_VERSION+=" (gzip via unpigz)"
else CTD_VERSION+=" (gzip via Go compress/gzip)"; fi

# kilnd: a fresh root and state for every cold run.
KADDR="unix://$W/k/state/kilnd.sock"
K() { "$KILN" --address "$KADDR" "$@"; }
start_kilnd() {
  "$KILND" --root "$W/k/root" --state "$W/k/state" --log-level warn >>"$W/kilnd.log" 2>&1 &
  kpid=$!
  for _ in $(seq 200); do [ -S "$W/k/state/kilnd.sock" ] && K system info >/dev/null 2>&1 && break; sleep 0.05; done
  K image import "$L" --name "$1" --source-ref "$1" >/dev/null
}
stop_kilnd() {
  kill "$kpid"; wait "$kpid" 2>/dev/null || true; kpid=""
  umount_under "$W/k"; rm -rf "$W/k"
}


# containerd image reset: nothing of REF left (content, snapshots), then the blobs back in without unpacking.
ctd_fresh() {
  C images rm --sync "$CREF" >/dev/null 2>&1 || true
  [ "$(C snapshots --snapshotter overlayfs ls | tail -n +2 | wc -l)" = 0 ] || { echo "bench: containerd snapshots left"; C snapshots ls; exit 1; }
  C images import --no-unpack "$W/arch/$tag.tar" >/dev/null
}

# ChainID of the top layer of a tag (what containerd names the committed snapshot).
chainid() {
  python3 - "$L" "$1" <<'PY'
import hashlib, json, sys
L, tag = sys.argv[1], sys.argv[2]
blob = lambda d: json.load(open(f"{L}/blobs/sha256/{d.split(':')[1]}"))
idx = json.load(open(f"{L}/index.json"))
m = next(m for m in idx["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag)
chain = None
for d in blob(blob(m["digest"])["config"]["digest"])["rootfs"]["diff_ids"]:
    chain = d if chain is None else "sha256:" + hashlib.sha256(f"{chain} {d}".encode()).hexdigest()
print(chain)
PY
}

# Warm loop: runs a command COUNT times (after one untimed warm-up) and prints "p50 min max" in ms.
# The command is a template: {i} becomes the iteration number.
msloop() {
  python3 - "$COUNT" "$@" <<'PY'
import statistics, subprocess, sys, time
count, cmds = int(sys.argv[1]), sys.argv[2:]
def run(i):
    ts = []
    for c in cmds:
        t0 = time.perf_counter()
        p = subprocess.run(c.replace("{i}", str(i)), shell=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        ts.append((time.perf_counter() - t0) * 1000)
        if p.returncode:
            sys.exit(f"bench: failed: {c}: {p.stderr.decode()}")
    return ts
run("warm")
rows = [run(i) for i in range(count)]
for j in range(len(cmds)):
    col = sorted(r[j] for r in rows)
    print(f"{statistics.median(col):.2f} {col[0]:.2f} {col[-1]:.2f}", end=" ")
print()
PY
}

for tag in $IMAGES; do
  R="$W/results-$tag"; rm -f "$R".*
  CREF="docker.io/kiln-bench/$tag:latest"
  skopeo copy -q "oci:$L:$tag" "oci-archive:$W/arch/$tag.tar:$CREF"
  CHAIN=$(chainid "$tag")
  NLAYERS=$(skopeo inspect --raw "oci:$L:$tag" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["layers"]))')

  for i in $(seq 1 "$RUNS"); do
    # 1. cold unpack, containerd
    ctd_fresh; quiesce; hwm_reset "$cpid"
    timeit "$R.ctd_unpack" ctr -a "$SOCK" -n bench images mount --snapshotter overlayfs "$CREF" "$W/mnt"
    hwm "$cpid" >>"$R.ctd_rss"
    C images unmount --rm "$W/mnt" >/dev/null
    # 2. cold unpack, kiln
    start_kilnd "$tag"; quiesce; hwm_reset "$kpid"
    timeit "$R.kiln_unpack" "$KILN" --address "$KADDR" image pull "$tag"
    hwm "$kpid" >>"$R.kiln_rss"
    stop_kilnd
    # 3. cold end-to-end, containerd
    ctd_fresh; quiesce
    if [ ! -f "$R.ctd_run.skip" ]; then
      if ! /usr/bin/time -f "%e %M" -o "$R.ctd_run.t" ctr -a "$SOCK" -n bench run --rm --snapshotter overlayfs \
          "$CREF" "bench-run-$i" /bin/true >"$R.ctd_run.out" 2>"$R.ctd_run.err"; then
        cp "$R.ctd_run.err" "$R.ctd_run.skip"
        C tasks rm -f "bench-run-$i" >/dev/null 2>&1 || true; C containers rm "bench-run-$i" >/dev/null 2>&1 || true
      else
        cat "$R.ctd_run.t" >>"$R.ctd_run"
      fi
    fi
    # 4. cold end-to-end, kiln
    start_kilnd "$tag"; quiesce
    timeit "$R.kiln_run" sh -c '"$1" --address "$2" image pull "$3" && "$1" --address "$2" bundle create "$4" --image "$3" -- /bin/true &&
      runc --root "$5" run --bundle "$6/bundles/$4" "$4" && "$1" --address "$2" bundle rm "$4"' \
      sh "$KILN" "$KADDR" "$tag" "bench-run-$i" "$W/runc" "$W/k/state"
    stop_kilnd
  done

  # 5. warm create: image unpacked once, then COUNT create/delete cycles.
  C images rm --sync "$CREF" >/dev/null 2>&1 || true
  C images import "$W/arch/$tag.tar" >/dev/null          # with unpack
  C snapshots --snapshotter overlayfs info "$CHAIN" >/dev/null || { echo "bench: containerd has no snapshot $CHAIN"; exit 1; }
  msloop "ctr -a $SOCK -n bench snapshots --snapshotter overlayfs prepare bench-w-{i} $CHAIN" \
         "ctr -a $SOCK -n bench snapshots --snapshotter overlayfs rm bench-w-{i}" \
         "ctr -a $SOCK -n bench version" >"$R.ctd_warm"
  C images rm --sync "$CREF" >/dev/null          # the next image starts from an empty containerd
  start_kilnd "$tag"
  K image pull "$tag" >/dev/null
  "$LOAD" --address "$KADDR" --image "$tag" --concurrency 1 --count "$COUNT" >"$R.kiln_load"
  msloop "$KILN --address $KADDR bundle create bench-w-{i} --image $tag -- /bin/true" \
         "$KILN --address $KADDR bundle rm bench-w-{i}" \
         "$KILN --address $KADDR system info" >"$R.kiln_warm"
  stop_kilnd

  python3 - "$R" "$tag" "$RUNS" "$SRC" "$NLAYERS" "$COUNT" "$CTD_VERSION" <<'PY'
import os, statistics, sys
R, tag, runs, src, nl, count, ver = sys.argv[1:]
def col(name, i=0):
    return [float(l.split()[i]) for l in open(f"{R}.{name}") if l.strip()]
def stat(v):
    return statistics.median(v), min(v), max(v)
def row(label, v, unit="s"):
    m, lo, hi = stat(v)
    print(f"  {label:42} median {m:7.2f}{unit}  (min {lo:.2f} – max {hi:.2f})")
    return m
print(f"== image {tag}: {nl} layer(s), source: {src}; containerd {ver}; {runs} cold runs each, alternating")
c = row("cold unpack   containerd", col("ctd_unpack"))
k = row("cold unpack   kiln", col("kiln_unpack"))
print(f"  {'ratio kiln/containerd':42} {k / c:.2f}   (target ≤ 0.6)")
if os.path.exists(f"{R}.ctd_run.skip"):
    print(f"  {'cold run      containerd':42} NOT MEASURED: " + open(f"{R}.ctd_run.skip").read().strip().splitlines()[-1][:160])
    c = None
else:
    c = row("cold run      containerd", col("ctd_run"))
k = row("cold run      kiln (pull+create+runc+rm)", col("kiln_run"))
if c:
    print(f"  {'ratio kiln/containerd':42} {k / c:.2f}")
cr = [int(x) / 1024 for x in col("ctd_rss")]
kr = [int(x) / 1024 for x in col("kiln_rss")]
print(f"  {'peak RSS during unpack':42} containerd {max(cr):6.1f} MiB   kilnd {max(kr):6.1f} MiB   ratio {max(kr) / max(cr):.2f}   (target ≤ 64 MiB)")
load = [l.split() for l in open(f"{R}.kiln_load") if l.strip()][-1]   # concurrency creates p50 p99 max rate
cw = [float(x) for x in open(f"{R}.ctd_warm").read().split()]
kw = [float(x) for x in open(f"{R}.kiln_warm").read().split()]
print(f"  warm, {count} cycles, ms (p50, min – max):")
print(f"    kiln Bundles.Create over gRPC (grpc_load)   p50 {float(load[2]):6.2f}  p99 {float(load[3]):.2f}  max {float(load[4]):.2f}   (target p50 ≤ 5)")
print(f"    kiln CLI  bundle create                     p50 {kw[0]:6.2f}  ({kw[1]:.2f} – {kw[2]:.2f})")
print(f"    kiln CLI  bundle rm                         p50 {kw[3]:6.2f}  ({kw[4]:.2f} – {kw[5]:.2f})")
print(f"    kiln CLI  system info (client start-up)     p50 {kw[6]:6.2f}  ({kw[7]:.2f} – {kw[8]:.2f})")
print(f"    ctr snapshots prepare (no mount, no spec)   p50 {cw[0]:6.2f}  ({cw[1]:.2f} – {cw[2]:.2f})")
print(f"    ctr snapshots rm                            p50 {cw[3]:6.2f}  ({cw[4]:.2f} – {cw[5]:.2f})")
print(f"    ctr version (client start-up)               p50 {cw[6]:6.2f}  ({cw[7]:.2f} – {cw[8]:.2f})")
print(f"    CLI p50 minus client start-up p50 (rough, within noise for ctr): kiln create {kw[0] - kw[6]:.2f}, ctr prepare {cw[0] - cw[6]:.2f}")
PY
done
