#!/usr/bin/env bash
# Benchmark (not a test), issue 14: cold pull + unpack from a loopback registry of the images that
# bench/unpack.sh builds, four ways in the same run, alternating. Everything on tmpfs; prints medians, min–max,
# ratios and peak RSS.
#
#   bench/pull.sh                # root; containerd + ctr, skopeo, umoci, docker-registry, curl, /usr/bin/time
#                                # (apt-get install -y containerd skopeo umoci docker-registry); builds the
#                                # release binaries unless KILN and KILND are both given
#   RUNS=5 IMAGES="minbase stack" WORK=/dev/shm/kiln-bench W=/dev/shm/kiln-bench-pull bench/pull.sh
#   KILN=/path/kiln KILND=/path/kilnd RUNS=3 bench/pull.sh      # other binaries, no cargo build
#
# Rows, per image (every run cold: a fresh kilnd root, a fresh containerd root, a fresh target directory;
# `sync; sleep 1` before every timed command):
#   kiln-pull      a fresh kilnd (own root, state, socket, a TOML config of the script's), then the timed
#                  `kiln image pull 127.0.0.1:PORT/NAME:latest`: manifests, config and layers fetched over HTTP
#                  (loopback registries are plain HTTP), checked, stored, unpacked into snapshots
#   kiln-local     kiln's unpack alone: a fresh kilnd whose store already holds the image (`kiln image import`
#                  of the layout, not timed), then the timed `kiln image pull NAME` (no network)
#   ctr-pull       a fresh containerd 1.6 (own config, root, state, socket; CRI off), then the timed
#                  `ctr images pull --plain-http --snapshotter overlayfs 127.0.0.1:PORT/NAME:latest` (fetch +
#                  unpack into overlayfs snapshots; the script checks that the snapshots exist)
#   skopeo+unpack  `skopeo copy docker://127.0.0.1:PORT/NAME:latest oci:DIR:NAME` then `kiln unpack --image
#                  DIR:NAME BUNDLE` (no daemon), each timed, back to back; the row is their sum
#   peak RSS       VmHWM of kilnd / containerd, reset (clear_refs 5) just before each timed pull; the maximum
#                  over the runs (children such as unpigz and the clients are not counted)
# Ratios: kiln-pull / ctr-pull (target ≤ 0.5), kiln-pull / kiln-local (target ≤ 1.15: the download hidden
# behind the unpack), kiln-pull / skopeo+unpack; kilnd peak RSS during kiln-pull (target ≤ 64 MiB).
#
# The registry is Debian's docker-registry (distribution) on 127.0.0.1 and a free port, filesystem storage
# under $W, filled once per script run by `skopeo copy --preserve-digests oci:LAYOUT:NAME
# docker://127.0.0.1:PORT/NAME:latest` (the same manifests and blobs that kiln-local imports). Images are built
# once and cached by `BUILD_ONLY=1 bench/unpack.sh` under $WORK/layout (shared; never removed here). Everything
# else lives under $W and is removed on exit; nothing of a system containerd or kilnd is used.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/common.sh
. bench/common.sh

RUNS=${RUNS:-5}
IMAGES=${IMAGES:-minbase stack}
WORK=${WORK:-/dev/shm/kiln-bench}
W=${W:-/dev/shm/kiln-bench-pull}
L="$WORK/layout"

[ "$(id -u)" = 0 ] || { echo "bench: needs root (mounts, containerd)"; exit 2; }
for t in containerd ctr skopeo umoci docker-registry curl /usr/bin/time python3; do
  command -v "$t" >/dev/null || { echo "bench: $t missing (apt-get install -y containerd skopeo umoci docker-registry curl)"; exit 2; }
done
if [ -z "${KILN:-}" ] || [ -z "${KILND:-}" ]; then
  cargo build --release --bin kiln --bin kilnd >/dev/null
fi
KILN=${KILN:-$PWD/target/release/kiln}
KILND=${KILND:-$PWD/target/release/kilnd}
for b in "$KILN" "$KILND"; do [ -x "$b" ] || { echo "bench: $b missing"; exit 2; }; done
WORK="$WORK" KILN="$KILN" BUILD_ONLY=1 bench/unpack.sh
SRC=$(cat "$L/SOURCE")

rpid=""
cpid=""
kpid=""
umount_under() { awk -v p="$1" '$5 ~ "^"p {print $5}' /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l; }
stop() { [ -n "$1" ] && kill "$1" 2>/dev/null && wait "$1" 2>/dev/null; return 0; }
cleanup() {
  set +e
  stop "$kpid"; kpid=""
  stop "$cpid"; cpid=""
  stop "$rpid"; rpid=""
  umount_under "$W"
  rm -rf "$W"
  # ctr 1.6 may leave fifos under /run/containerd whatever the config says; remove it only if we created it.
  [ -n "${RUN_CTD_NEW:-}" ] && rm -rf /run/containerd
}
[ -e /run/containerd ] || RUN_CTD_NEW=1
trap cleanup EXIT
cleanup
mkdir -p "$W/reg"

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# The registry: one for the whole script (a port the kernel just handed out; it binds it a moment later).
HOST="127.0.0.1:$(free_port)"
cat >"$W/reg/config.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $W/reg/storage
  delete:
    enabled: true
http:
  addr: $HOST
EOF
docker-registry serve "$W/reg/config.yml" >"$W/reg/registry.log" 2>&1 &
rpid=$!
for _ in $(seq 200); do curl -fs "http://$HOST/v2/" >/dev/null && break; sleep 0.05; done
curl -fs "http://$HOST/v2/" >/dev/null || { echo "bench: docker-registry did not answer on $HOST"; cat "$W/reg/registry.log"; exit 1; }
REG_VERSION=$(docker-registry --version | awk '{print $3}')

# containerd: a minimal config of its own (CRI off, overlayfs snapshotter), a fresh root and state per run.
SOCK="$W/ctd/containerd.sock"
C() { ctr -a "$SOCK" -n bench "$@"; }
start_containerd() {
  containerd_config "$W/ctd" "$SOCK"
  containerd --config "$W/ctd/config.toml" --log-level warn >>"$W/containerd.log" 2>&1 &
  cpid=$!
  for _ in $(seq 200); do C version >/dev/null 2>&1 && break; sleep 0.05; done
  C version >/dev/null || { cat "$W/containerd.log"; exit 1; }
}
stop_containerd() {
  stop "$cpid"; cpid=""
  umount_under "$W/ctd"; rm -rf "$W/ctd"
}
CTD_VERSION=$(containerd --version | awk '{print $3}')
# containerd 1.6 inflates through `unpigz` when it is on PATH (and CONTAINERD_DISABLE_PIGZ is unset).
if command -v unpigz >/dev/null && [ -z "${CONTAINERD_DISABLE_PIGZ:-}" ]; then CTD_VERSION+=" (gzip via unpigz)"
else CTD_VERSION+=" (gzip via Go compress/gzip)"; fi

# kilnd: a fresh root, state, socket and config for every cold run. Loopback registries need no [registry]
# entry (plain HTTP unless a ca_file is set); kilnd's default registry settings are what is measured.
KADDR="unix://$W/k/state/kilnd.sock"
K() { "$KILN" --address "$KADDR" "$@"; }
start_kilnd() {
  mkdir -p "$W/k"
  cat >"$W/k/kilnd.toml" <<EOF
version = 1
root = "$W/k/root"
state = "$W/k/state"
address = "$KADDR"
snapshots_address = ""
[log]
level = "warn"
EOF
  "$KILND" --config "$W/k/kilnd.toml" >>"$W/kilnd.log" 2>&1 &
  kpid=$!
  for _ in $(seq 200); do [ -S "$W/k/state/kilnd.sock" ] && K system info >/dev/null 2>&1 && break; sleep 0.05; done
  K system info >/dev/null || { cat "$W/kilnd.log"; exit 1; }
}
stop_kilnd() {
  stop "$kpid"; kpid=""
  umount_under "$W/k"; rm -rf "$W/k"
}


# Fill the registry once: the very manifests and blobs of the layout.
for tag in $IMAGES; do
  skopeo copy -q --preserve-digests --dest-tls-verify=false "oci:$L:$tag" "docker://$HOST/$tag:latest"
done

for tag in $IMAGES; do
  R="$W/results-$tag"; rm -f "$R".*
  REF="$HOST/$tag:latest"
  NLAYERS=$(skopeo inspect --raw "oci:$L:$tag" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["layers"]))')
  MIB=$(skopeo inspect --raw "oci:$L:$tag" | python3 -c 'import json,sys; print(round(sum(l["size"] for l in json.load(sys.stdin)["layers"]) / 2**20))')

  LOAD0=$(cut -d' ' -f1 /proc/loadavg)
  for i in $(seq 1 "$RUNS"); do
    # 1. kiln-pull: fetch + unpack from the registry into a fresh kilnd.
    start_kilnd; quiesce; hwm_reset "$kpid"
    timeit "$R.kiln_pull" "$KILN" --address "$KADDR" --progress none image pull "$REF"
    hwm "$kpid" >>"$R.kiln_pull_rss"
    grep -q unpacked "$R.kiln_pull.out" || { echo "bench: kiln image pull $REF did not unpack:"; cat "$R.kiln_pull.out"; exit 1; }
    stop_kilnd
    # 2. ctr-pull: fetch + unpack into overlayfs by a fresh containerd.
    start_containerd; quiesce; hwm_reset "$cpid"
    timeit "$R.ctd_pull" ctr -a "$SOCK" -n bench images pull --plain-http --snapshotter overlayfs "$REF"
    hwm "$cpid" >>"$R.ctd_pull_rss"
    [ "$(C snapshots --snapshotter overlayfs ls | tail -n +2 | wc -l)" = "$NLAYERS" ] ||
      { echo "bench: containerd did not unpack $NLAYERS layers:"; C snapshots --snapshotter overlayfs ls; exit 1; }
    stop_containerd
    # 3. kiln-local: the same image already in a fresh kilnd's store; unpack only.
    start_kilnd
    K image import "$L" --name "$tag" --source-ref "$tag" >/dev/null
    quiesce; hwm_reset "$kpid"
    timeit "$R.kiln_local" "$KILN" --address "$KADDR" --progress none image pull "$tag"
    hwm "$kpid" >>"$R.kiln_local_rss"
    grep -q unpacked "$R.kiln_local.out" || { echo "bench: kiln image pull $tag did not unpack:"; cat "$R.kiln_local.out"; exit 1; }
    stop_kilnd
    # 4. skopeo+unpack: copy into a fresh OCI layout, then the daemonless unpack into a fresh bundle.
    rm -rf "$W/sk"; mkdir -p "$W/sk"; quiesce
    timeit "$R.skopeo" skopeo copy -q --src-tls-verify=false "docker://$REF" "oci:$W/sk/layout:$tag"
    timeit "$R.unpack" "$KILN" --progress none unpack --image "$W/sk/layout:$tag" "$W/sk/bundle"
    [ -d "$W/sk/bundle/rootfs/usr" ] || { echo "bench: kiln unpack left no rootfs"; exit 1; }
    rm -rf "$W/sk"
  done

  python3 - "$R" "$tag" "$RUNS" "$SRC" "$NLAYERS" "$MIB" "$CTD_VERSION" "$REG_VERSION" "$LOAD0" <<'PY'
import os, statistics, sys
R, tag, runs, src, nl, mib, ctd, reg, load0 = sys.argv[1:]
def col(name, i=0):
    return [float(l.split()[i]) for l in open(f"{R}.{name}") if l.strip()]
def row(label, v):
    m = statistics.median(v)
    print(f"  {label:44} median {m:6.2f}s  (min {min(v):.2f} – max {max(v):.2f})")
    return m
print(f"== image {tag}: {nl} layer(s), {mib} MiB compressed, source: {src}; containerd {ctd}; "
      f"docker-registry {reg}; {runs} cold runs each, alternating; load average {load0} before, "
      f"{os.getloadavg()[0]:.2f} after, {os.cpu_count()} CPUs")
kp = row("kiln-pull      kiln image pull HOST/NAME", col("kiln_pull"))
kl = row("kiln-local     kiln image pull NAME (store)", col("kiln_local"))
cp = row("ctr-pull       ctr images pull --plain-http", col("ctd_pull"))
sk, up = col("skopeo"), col("unpack")
su = row("skopeo+unpack  skopeo copy + kiln unpack", [a + b for a, b in zip(sk, up)])
print(f"  {'  of which skopeo copy / kiln unpack':44} median {statistics.median(sk):6.2f}s / {statistics.median(up):.2f}s")
print(f"  {'ratio kiln-pull/ctr-pull':44} {kp / cp:.2f}   (target ≤ 0.5)")
print(f"  {'ratio kiln-pull/kiln-local':44} {kp / kl:.2f}   (target ≤ 1.15)")
print(f"  {'ratio kiln-pull/skopeo+unpack':44} {kp / su:.2f}")
mx = lambda name: max(col(name)) / 1024
print(f"  {'peak RSS (daemon VmHWM)':44} kilnd pull {mx('kiln_pull_rss'):5.1f} MiB (target ≤ 64)   "
      f"kilnd local {mx('kiln_local_rss'):5.1f} MiB   containerd pull {mx('ctd_pull_rss'):5.1f} MiB")
print(f"  {'peak RSS (client)':44} skopeo {max(col('skopeo', 1)) / 1024:5.1f} MiB   "
      f"kiln unpack {max(col('unpack', 1)) / 1024:5.1f} MiB")
PY
done
