#!/usr/bin/env bash
# Benchmark (not a test): cold CRI PullImage + CreateContainer + StartContainer through containerd 1.6's CRI
# plugin, the kubelet's path, four ways on the same images, same registry, same run, alternating:
#   kiln-store     snapshotter = "kiln", the image already in kiln's store: kiln unpacks it itself (the
#                  remote-snapshot shortcut; containerd fetches only manifest and config)
#   kiln-fetch     snapshotter = "kiln", kiln's store lacks it: kiln fetches it from the registry itself (by the
#                  manifest digest CRI pulls) and unpacks it as it downloads; containerd fetches manifest and config
#   kiln-fallback  the same with [registry] fetch_for_containerd = false: containerd fetches the layers and its applier
#                  writes them into kiln's mounts
#   overlayfs      containerd's own overlayfs snapshotter (the baseline)
# Every run starts from an empty kilnd, docker-registry and containerd, all on tmpfs (/dev/shm); the pod sandbox
# runs before the clock starts; `sync; sleep 1` before each timed run. Prints medians, min–max, ratios to
# overlayfs, and kilnd's peak RSS. The harness is tests/containerd_cri.rs (`bench_cri_cold_pull_create_start`,
# ignored in the test suite), in release mode.
#
#   bench/cri.sh                                  # root; containerd, runc, skopeo, umoci, docker-registry,
#                                                 # busybox-static; images from bench/unpack.sh (BUILD_ONLY=1)
#   RUNS=5 IMAGES="minbase stack" WORK=/dev/shm/kiln-bench bench/cri.sh
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-5}
IMAGES=${IMAGES:-minbase stack}
WORK=${WORK:-/dev/shm/kiln-bench}

[ "$(id -u)" = 0 ] || { echo "bench: needs root (mounts, containerd)"; exit 2; }
for t in containerd ctr runc skopeo umoci docker-registry; do
  command -v "$t" >/dev/null || { echo "bench: $t missing (apt-get install -y containerd runc skopeo umoci docker-registry)"; exit 2; }
done
cargo build --release --bin kiln >/dev/null
WORK="$WORK" KILN="$PWD/target/release/kiln" BUILD_ONLY=1 bench/unpack.sh
KILN_BENCH_LAYOUT="$WORK/layout" KILN_BENCH_IMAGES="$IMAGES" KILN_BENCH_RUNS="$RUNS" KILN_TEST_STRICT=1 \
  cargo test --release --test containerd_cri bench_cri_cold_pull_create_start -- --ignored --nocapture --test-threads=1
