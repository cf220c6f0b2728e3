# Shared by bench/containerd.sh and bench/pull.sh (sourced).

# containerd 1.6's own minimal configuration, CRI off and the overlayfs snapshotter, everything under DIR,
# listening on SOCK (ttrpc on SOCK.ttrpc).
#   containerd_config DIR SOCK   writes DIR/config.toml
containerd_config() {
  local dir=$1 sock=$2
  mkdir -p "$dir"
  cat >"$dir/config.toml" <<EOF
version = 2
root = "$dir/root"
state = "$dir/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
[debug]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/opt"
EOF
}

# A process's peak RSS: reset it (kernel's clear_refs 5), read it (VmHWM, KiB).
hwm_reset() { echo 5 >"/proc/$1/clear_refs"; }
hwm() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
quiesce() { sync; sleep 1; }

# Times one command: appends "seconds client_maxrss_kib" to $1.
timeit() {
  local out=$1; shift
  /usr/bin/time -f "%e %M" -o "$out.t" "$@" >"$out.out" 2>"$out.err" || { echo "bench: failed: $*"; cat "$out.out" "$out.err"; exit 1; }
  cat "$out.t" >>"$out"
}
