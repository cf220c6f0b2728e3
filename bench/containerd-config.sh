# Shared by bench/containerd.sh and bench/pull.sh (sourced): containerd 1.6's own minimal configuration, CRI
# off and the overlayfs snapshotter, everything under DIR, listening on SOCK (ttrpc on SOCK.ttrpc).
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
