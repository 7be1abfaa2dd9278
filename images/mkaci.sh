#!/bin/sh
# mkaci.sh BUILD_DIR OUT.aci: pack BUILD_DIR/manifest and BUILD_DIR/rootfs into a gzip'd ACI
# with numeric owners (names mean nothing inside another rootfs). Build the tree as root.
set -eu
build=$1
out=$2
[ -f "$build/manifest" ] || { echo "mkaci.sh: $build/manifest is missing" >&2; exit 1; }
[ -d "$build/rootfs" ] || { echo "mkaci.sh: $build/rootfs is missing" >&2; exit 1; }
tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT
tar -C "$build" --numeric-owner -cf - manifest rootfs | gzip -9n > "$tmp"
mv "$tmp" "$out"
trap - EXIT
