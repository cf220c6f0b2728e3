#!/usr/bin/env bash
# Builds a small runnable OCI image layout with umoci from Debian's busybox-static:
#   scripts/demo-image.sh [LAYOUT_DIR]   (default /tmp/kiln-demo; the image is LAYOUT_DIR:busybox)
set -euo pipefail
out=${1:-/tmp/kiln-demo}
command -v umoci >/dev/null || { echo "needs umoci (apt-get install umoci)" >&2; exit 1; }
[ -x /bin/busybox ] || { echo "needs /bin/busybox (apt-get install busybox-static)" >&2; exit 1; }
rm -rf "$out"
umoci init --layout "$out"
umoci new --image "$out:busybox"
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/etc" "$root/tmp"
cp /bin/busybox "$root/bin/busybox"
for applet in sh ls cat echo id true env; do ln -s busybox "$root/bin/$applet"; done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
umoci insert --image "$out:busybox" "$root" /
umoci config --image "$out:busybox" --config.cmd /bin/sh --config.cmd -c --config.cmd 'echo hello from a kiln bundle' \
  --config.env PATH=/bin --config.workingdir /
echo "$out:busybox"
