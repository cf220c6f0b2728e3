#!/usr/bin/env bash
# Benchmark (not a test): the three gzip inflate backends issue 15 weighed, in-process and streaming with
# bounded memory (256 KiB in, 256 KiB out, as kiln's pipeline), on the same layer blobs, alternating runs:
# zlib-rs (flate2, pure Rust), zlib-ng (libz-ng-sys, built from source with cmake) and ISA-L (kiln's own shim,
# src/sys/isal.c, over Debian's libisal). Also SHA-256 over the output alone (sha2 and ring), the DiffID's cost.
#
#   bench/inflate.sh                         # needs cmake, libisal-dev; images from bench/unpack.sh
#   RUNS=9 WORK=/dev/shm/kiln-bench bench/inflate.sh
set -euo pipefail
cd "$(dirname "$0")"
RUNS=${RUNS:-7}
WORK=${WORK:-/dev/shm/kiln-bench}
for t in cmake pkg-config; do command -v "$t" >/dev/null || { echo "bench: $t missing (apt install $t)"; exit 2; }; done
pkg-config --exists libisal || { echo "bench: libisal-dev missing"; exit 2; }
WORK="$WORK" BUILD_ONLY=1 ./unpack.sh >/dev/null
TARGET=${CARGO_TARGET_DIR:-$WORK/target-inflate}
cargo build --release --quiet --manifest-path inflate/Cargo.toml --target-dir "$TARGET"
L="$WORK/layout"
# minbase's layer (text and binaries), the 200 MiB random file's layer (incompressible: stored blocks) and the
# 30 000 small files' layer.
for tag in minbase s2 s3; do
  blob=$(python3 - "$L" "$tag" <<'PY'
import json, sys
L, tag = sys.argv[1], sys.argv[2]
idx = json.load(open(f"{L}/index.json"))
m = next(m for m in idx["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag)
man = json.load(open(f"{L}/blobs/sha256/{m['digest'].split(':')[1]}"))
print(f"{L}/blobs/sha256/{man['layers'][-1]['digest'].split(':')[1]}")
PY
)
  echo "== $tag: top layer $(basename "$blob" | cut -c1-12)"
  "$TARGET/release/kiln-inflate-bench" "$blob" "$RUNS" | grep -v "sha256 of output"
done
