#!/usr/bin/env bash
# Benchmark (not a test): kilnd's warm Bundles.Create + Delete throughput and latency at 1, 8 and 64 concurrent
# callers, and kilnd's idle RSS. Root, a release build, umoci and busybox-static (for the demo image).
#
#   bench/daemon.sh            # COUNT=1000 CONCURRENCY=1,8,64 WORK=/dev/shm/kiln-bench-daemon
#   BIN=DIR bench/daemon.sh    # use DIR/{kilnd,kiln,grpc_load} (e.g. copies built from another commit, for an A/B)
#   MODE=phases bench/daemon.sh  # all the creates first, then all the deletes: each verb's rate alone
#                                # (default MODE=cycles: each caller creates and deletes in turn)
#   STATE_MOUNT=shared bench/daemon.sh  # the state directory on the same tmpfs as the root (default: a tmpfs
#                                # of its own, as kilnd's defaults have it on a node: /var/lib/kiln and /run/kiln)
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${COUNT:-1000}
CONCURRENCY=${CONCURRENCY:-1,8,64}
WORK=${WORK:-/dev/shm/kiln-bench-daemon}
MODE=${MODE:-cycles}
STATE_MOUNT=${STATE_MOUNT:-own}
[ "$(id -u)" = 0 ] || { echo "bench: needs root (overlay mounts)"; exit 2; }
if [ -z "${BIN:-}" ]; then
  cargo build --release --bin kilnd --bin kiln --example grpc_load >/dev/null
  BIN=target/release
  LOAD=target/release/examples/grpc_load
fi
LOAD=${LOAD:-$BIN/grpc_load}

cleanup() {
  [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  awk -v p="$WORK" '$5 ~ "^"p {print $5}' /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l
  rm -rf "$WORK"
}
trap cleanup EXIT
rm -rf "$WORK"; mkdir -p "$WORK"
# Where the bundles are mounted matters to every overlay mount: the kernel's overlay set-up walks each child
# mount of the mount that holds the layers (clone_private_mount, bench/overlay_mounts.py). With the defaults the
# layers are under /var/lib and the bundles under /run, two mounts; one tmpfs for both would make each create
# walk every earlier bundle's mount.
if [ "$STATE_MOUNT" = own ]; then mkdir -p "$WORK/state" && mount -t tmpfs -o mode=0711 kiln-bench-state "$WORK/state"; fi
scripts/demo-image.sh "$WORK/layout" >/dev/null

"$BIN/kilnd" --root "$WORK/root" --state "$WORK/state" --log-level warn &
pid=$!
addr="unix://$WORK/state/kilnd.sock"
for _ in $(seq 100); do [ -S "$WORK/state/kilnd.sock" ] && break; sleep 0.05; done
sleep 0.5
echo "state directory: $STATE_MOUNT mount"
echo "kilnd idle RSS after start: $(awk '/VmRSS/ {print $2, $3}' /proc/$pid/status)"
"$BIN/kiln" --address "$addr" image import "$WORK/layout" --name busybox --source-ref busybox >/dev/null
"$BIN/kiln" --address "$addr" image pull busybox >/dev/null
cpu() { awk '{print $14 + $15}' /proc/$pid/stat; }  # kilnd's user+system CPU, in clock ticks
# The CPU of the shell's finished children (bash's `times`, run in this shell, not a subshell: its second line),
# in seconds: its change over the load is the load client's own CPU, which shares the machine's cores with kilnd.
children() { tail -1 "$1" | awk '{ s = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); s += a[1] * 60 + a[2] } printf "%.3f", s }'; }
times > "$WORK/times.before"
before=$(cpu)
"$LOAD" --address "$addr" --image busybox --concurrency "$CONCURRENCY" --count "$COUNT" --mode "$MODE"
ticks=$(( $(cpu) - before ))
times > "$WORK/times.after"
client=$(awk -v a="$(children "$WORK/times.before")" -v b="$(children "$WORK/times.after")" 'BEGIN {printf "%.3f", b - a}')
runs=$(( $(tr ',' '\n' <<<"$CONCURRENCY" | wc -l) ))
[ "$MODE" = creates ] && unit=create || unit=create+delete
echo "kilnd CPU over the load: $(awk -v u="$unit" -v t="$ticks" -v hz="$(getconf CLK_TCK)" -v n="$((COUNT * runs))" \
  'BEGIN {printf "%.2f s, %.3f ms per " u, t / hz, 1000 * t / hz / n}')"
echo "load client CPU: $(awk -v u="$unit" -v c="$client" -v n="$((COUNT * runs))" 'BEGIN {printf "%.2f s, %.3f ms per " u, c, 1000 * c / n}')"
sleep 1
echo "kilnd RSS after the load: $(awk '/VmRSS/ {print $2, $3}' /proc/$pid/status); peak: $(awk '/VmHWM/ {print $2, $3}' /proc/$pid/status)"
