#!/usr/bin/env bash
# Benchmark (not a test): `kiln unpack` vs `umoci unpack` vs `tar -xzf` of the same layer blobs, alternating
# runs on the same filesystem (tmpfs by default). Prints medians, min–max, ratios and peak RSS.
#
#   bench/unpack.sh                      # needs root, umoci, GNU tar, /usr/bin/time; debootstrap for image A
#   RUNS=7 WORK=/dev/shm/kiln-bench KILN=target/release/kiln bench/unpack.sh
#   BUILD_ONLY=1 bench/unpack.sh         # only build (or find) the images under $WORK/layout; used by containerd.sh
#
# Images (built once, cached under $WORK/layout):
#   minbase  one gzip layer: `debootstrap --variant=minbase bookworm` packed by umoci (falls back to a copy of
#            this host's /usr/lib and /etc when debootstrap cannot run; the output says which)
#   stack    minbase + 4 layers: a 200 MiB file; 30 000 small files; whiteouts of 10 000 of them and of
#            /usr/share/doc; rewrites and re-creations
# `tar -xzf` extracts each layer blob in turn without interpreting whiteouts: the practical floor.
set -euo pipefail

RUNS=${RUNS:-5}
WORK=${WORK:-/dev/shm/kiln-bench}
KILN=${KILN:-$(cd "$(dirname "$0")/.." && pwd)/target/release/kiln}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

[ "$(id -u)" = 0 ] || { echo "bench: needs root (umoci and tar keep owners and devices)"; exit 2; }
for t in umoci tar /usr/bin/time python3; do command -v "$t" >/dev/null || { echo "bench: $t missing"; exit 2; }; done
[ -x "$KILN" ] || { echo "bench: $KILN missing (cargo build --release)"; exit 2; }

mkdir -p "$WORK"
L="$WORK/layout"
SRC="minbase"

build_images() {
  rm -rf "$L" "$WORK/b"
  umoci init --layout "$L"
  umoci new --image "$L:minbase"
  umoci unpack --image "$L:minbase" "$WORK/b"
  if command -v debootstrap >/dev/null && debootstrap --variant=minbase "$SUITE" "$WORK/b/rootfs.new" "$MIRROR" >"$WORK/debootstrap.log" 2>&1; then
    SRC="debootstrap --variant=minbase $SUITE"
  else
    SRC="host copy of /usr/lib /usr/bin /etc (debootstrap unavailable: see $WORK/debootstrap.log)"
    mkdir -p "$WORK/b/rootfs.new/usr"
    cp -a /usr/lib /usr/bin "$WORK/b/rootfs.new/usr/"
    cp -a /etc "$WORK/b/rootfs.new/"
  fi
  rm -rf "$WORK/b/rootfs" && mv "$WORK/b/rootfs.new" "$WORK/b/rootfs"
  umoci repack --image "$L:minbase" "$WORK/b"
  umoci config --image "$L:minbase" --config.cmd=/bin/sh

  # Layer 2: a 200 MiB file.
  rm -rf "$WORK/b"; umoci unpack --image "$L:minbase" "$WORK/b"
  head -c 200M /dev/urandom >"$WORK/b/rootfs/big.bin"
  umoci repack --image "$L:s2" "$WORK/b"
  # Layer 3: 30 000 small files in 300 directories.
  rm -rf "$WORK/b"; umoci unpack --image "$L:s2" "$WORK/b"
  python3 - "$WORK/b/rootfs/data" <<'PY'
import os, sys
root = sys.argv[1]
for d in range(300):
    p = os.path.join(root, f"d{d:03}")
    os.makedirs(p)
    for f in range(100):
        with open(os.path.join(p, f"f{f:03}"), "wb") as fh:
            fh.write(os.urandom(64 + (d * f) % 4000))
PY
  umoci repack --image "$L:s3" "$WORK/b"
  # Layer 4: whiteouts (10 000 small files, /usr/share/doc).
  rm -rf "$WORK/b"; umoci unpack --image "$L:s3" "$WORK/b"
  for d in $(seq 0 99); do rm -rf "$WORK/b/rootfs/data/d$(printf %03d "$d")"; done
  rm -rf "$WORK/b/rootfs/usr/share/doc"
  umoci repack --image "$L:s4" "$WORK/b"
  # Layer 5: rewrite and re-create.
  rm -rf "$WORK/b"; umoci unpack --image "$L:s4" "$WORK/b"
  mkdir -p "$WORK/b/rootfs/data/d000" && echo recreated >"$WORK/b/rootfs/data/d000/new"
  head -c 1M /dev/urandom >"$WORK/b/rootfs/big.bin"
  umoci repack --image "$L:stack" "$WORK/b"
  umoci config --image "$L:stack" --config.cmd=/bin/sh
  rm -rf "$WORK/b"
  umoci gc --layout "$L"
  echo "$SRC" >"$L/SOURCE"
}

[ -f "$L/SOURCE" ] || build_images
SRC=$(cat "$L/SOURCE")
[ -z "${BUILD_ONLY:-}" ] || { echo "images in $L (source: $SRC)"; exit 0; }

# The layer blobs of a tag, bottom first.
blobs() {
  python3 - "$L" "$1" <<'PY'
import json, sys
L, tag = sys.argv[1], sys.argv[2]
idx = json.load(open(f"{L}/index.json"))
m = next(m for m in idx["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag)
man = json.load(open(f"{L}/blobs/sha256/{m['digest'].split(':')[1]}"))
for l in man["layers"]:
    print(f"{L}/blobs/sha256/{l['digest'].split(':')[1]}")
PY
}

# Times one command: appends "seconds maxrss_kib" to $2.
timeit() {
  local out=$1; shift
  /usr/bin/time -f "%e %M" -o "$out.t" "$@" >/dev/null 2>"$out.err" || { cat "$out.err"; exit 1; }
  cat "$out.t" >>"$out"
}

for tag in minbase stack; do
  R="$WORK/results-$tag"; rm -f "$R".*
  mapfile -t LAYERS < <(blobs "$tag")
  for i in $(seq 1 "$RUNS"); do
    sync
    rm -rf "$WORK/k"; timeit "$R.kiln" "$KILN" unpack --image "$L:$tag" "$WORK/k"
    rm -rf "$WORK/k"
    rm -rf "$WORK/u"; timeit "$R.umoci" umoci unpack --image "$L:$tag" "$WORK/u"
    rm -rf "$WORK/u"
    rm -rf "$WORK/t"; mkdir "$WORK/t"
    timeit "$R.tar" sh -c 'for b in "$@"; do tar -xzf "$b" -C "$0" || exit 1; done' "$WORK/t" "${LAYERS[@]}"
    rm -rf "$WORK/t"
  done
  python3 - "$R" "$tag" "$RUNS" "$SRC" <<'PY'
import statistics, sys
R, tag, runs, src = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
res = {}
for tool in ("kiln", "umoci", "tar"):
    rows = [l.split() for l in open(f"{R}.{tool}") if l.strip()]
    secs = [float(r[0]) for r in rows]
    rss = [int(r[1]) for r in rows]
    res[tool] = (statistics.median(secs), min(secs), max(secs), max(rss) / 1024)
print(f"== image {tag} ({runs} runs each, alternating; source: {src})")
for tool, (med, lo, hi, rss) in res.items():
    print(f"  {tool:6} median {med:6.2f}s  (min {lo:.2f} – max {hi:.2f})  peak RSS {rss:7.1f} MiB")
k = res["kiln"][0]
print(f"  ratio kiln/umoci {k / res['umoci'][0]:.2f}   kiln/tar-xzf {k / res['tar'][0]:.2f}")
PY
done
