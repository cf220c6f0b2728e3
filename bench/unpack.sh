#!/usr/bin/env bash
# Benchmark (not a test): `kiln unpack` (with ISA-L, and with zlib-rs: KILN_GZIP=zlib-rs) vs `umoci unpack` vs
# `tar -xzf` of the same layer blobs, and `igzip -dc` to /dev/null (the inflate floor); for the zstd copy of
# minbase, vs `tar -I zstd -xf` and `zstd -dc`. Alternating runs on the same filesystem (tmpfs by default).
# Prints medians, min–max, ratios and peak RSS. IMAGES="minbase stack minbase-zstd" picks the images.
#
#   bench/unpack.sh                      # needs root, umoci, GNU tar, /usr/bin/time; debootstrap for image A
#   RUNS=7 WORK=/dev/shm/kiln-bench KILN=target/release/kiln bench/unpack.sh
#   BUILD_ONLY=1 bench/unpack.sh         # only build (or find) the images under $WORK/layout; used by containerd.sh
#
# Images (built once, cached under $WORK/layout):
#   minbase  one gzip layer: `debootstrap --variant=minbase bookworm` packed by umoci (falls back to a copy of
#            this host's /usr/lib and /etc when debootstrap cannot run; the output says which)
#   minbase-zstd  minbase's layer recompressed with `zstd -3` (same tar)
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

# The zstd copy of minbase (same tar, so the same DiffID and config): `zstd -3` of the uncompressed layer.
add_zstd_image() {
  python3 - "$L" <<'PY'
import gzip, hashlib, json, subprocess, sys
L = sys.argv[1]
def blob(d): return f"{L}/blobs/sha256/{d.split(':')[1]}"
def put(b):
    d = "sha256:" + hashlib.sha256(b).hexdigest()
    open(blob(d), "wb").write(b)
    return d
idx = json.load(open(f"{L}/index.json"))
refs = [m.get("annotations", {}).get("org.opencontainers.image.ref.name") for m in idx["manifests"]]
if "minbase-zstd" in refs:
    sys.exit(0)
m = next(m for m in idx["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == "minbase")
man = json.load(open(blob(m["digest"])))
tar = gzip.decompress(open(blob(man["layers"][0]["digest"]), "rb").read())
z = subprocess.run(["zstd", "-3", "-T1", "-q", "-c"], input=tar, stdout=subprocess.PIPE, check=True).stdout
man["layers"] = [{"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": put(z), "size": len(z)}]
mb = json.dumps(man).encode()
idx["manifests"].append({"mediaType": m["mediaType"], "digest": put(mb), "size": len(mb),
                         "annotations": {"org.opencontainers.image.ref.name": "minbase-zstd"}})
json.dump(idx, open(f"{L}/index.json", "w"))
PY
}

[ -f "$L/SOURCE" ] || build_images
add_zstd_image
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

# Times one command (wall clock in µs, and peak RSS): appends "seconds maxrss_kib" to $1.
timeit() {
  local out=$1 t0 t1; shift
  t0=$(date +%s%N)
  /usr/bin/time -f "%M" -o "$out.t" "$@" >/dev/null 2>"$out.err" || { cat "$out.err"; exit 1; }
  t1=$(date +%s%N)
  echo "$(( (t1 - t0) / 1000 ))e-6 $(cat "$out.t")" >>"$out"
}

# Each tool once, into a fresh directory that is removed after (not timed).
run_tool() {
  local tool=$1 tag=$2 out=$3
  rm -rf "$WORK/x"
  case $tool in
    kiln) timeit "$out" "$KILN" unpack --image "$L:$tag" "$WORK/x" ;;
    kiln-zlib-rs) timeit "$out" env KILN_GZIP=zlib-rs "$KILN" unpack --image "$L:$tag" "$WORK/x" ;;
    umoci) timeit "$out" umoci unpack --image "$L:$tag" "$WORK/x" ;;
    tar) mkdir "$WORK/x"
         timeit "$out" sh -c 'for b in "$@"; do tar -xzf "$b" -C "$0" || exit 1; done' "$WORK/x" "${LAYERS[@]}" ;;
    igzip) timeit "$out" sh -c 'for b in "$@"; do igzip -dc "$b" >/dev/null || exit 1; done' sh "${LAYERS[@]}" ;;
    tar-zstd) mkdir "$WORK/x"; timeit "$out" tar -I zstd -xf "${LAYERS[0]}" -C "$WORK/x" ;;
    zstd) timeit "$out" sh -c 'zstd -dc "$0" >/dev/null' "${LAYERS[0]}" ;;
  esac
  rm -rf "$WORK/x"
}

# igzip (ISA-L's CLI: inflate alone, to /dev/null) is the floor issue 15 measures against.
command -v igzip >/dev/null || { echo "bench: igzip missing (apt install isal)"; exit 2; }
command -v zstd >/dev/null || { echo "bench: zstd missing"; exit 2; }
for tag in ${IMAGES:-minbase stack minbase-zstd}; do
  case $tag in
    minbase-zstd) TOOLS="kiln tar-zstd zstd" ;;
    *) TOOLS="kiln kiln-zlib-rs umoci tar igzip" ;;
  esac
  R="$WORK/results-$tag"; rm -f "$R".*
  mapfile -t LAYERS < <(blobs "$tag")
  for i in $(seq 1 "$RUNS"); do
    sync
    for tool in $TOOLS; do run_tool "$tool" "$tag" "$R.$tool"; done
  done
  python3 - "$R" "$tag" "$RUNS" "$SRC" $TOOLS <<'PY'
import statistics, sys
R, tag, runs, src, tools = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
res = {}
for tool in tools:
    rows = [l.split() for l in open(f"{R}.{tool}") if l.strip()]
    secs = [float(r[0]) for r in rows]
    rss = [int(r[1]) for r in rows]
    res[tool] = (statistics.median(secs), min(secs), max(secs), max(rss) / 1024)
print(f"== image {tag} ({runs} runs each, alternating; source: {src})")
for tool, (med, lo, hi, rss) in res.items():
    print(f"  {tool:13} median {med:6.3f}s  (min {lo:.3f} – max {hi:.3f})  peak RSS {rss:7.1f} MiB")
k = res["kiln"][0]
print("  ratios: " + "   ".join(f"kiln/{t} {k / res[t][0]:.2f}" for t in tools if t != "kiln"))
PY
done
