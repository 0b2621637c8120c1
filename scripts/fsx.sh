#!/usr/bin/env bash
# Runs fsx (cargo install fsx) for N operations (default 100000) on a file in a fresh
# smlogfs mount, then unmounts and checks the volume with fsck.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100000}
FSX=${FSX:-$(command -v fsx || echo "$HOME/.cargo/bin/fsx")}
[ -x "$FSX" ] || { echo "fsx.sh: fsx not found; install it with: cargo install fsx" >&2; exit 2; }
cargo build --release -q -p smlogfs
S="$PWD/target/release/smlogfs"
work=$(mktemp -d /tmp/smlogfs-fsx.XXXXXX)
cleanup() {
  fusermount3 -uz "$work/mnt" 2>/dev/null || true
  [ -f "$work/vol/daemon.pid" ] && kill -9 "$(head -1 "$work/vol/daemon.pid")" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/mnt" "$work/artifacts"
"$S" mkfs "$work/vol" --size 1G --ring 16M >/dev/null
"$S" mount "$work/vol" "$work/mnt" -o checkpoint_ms=1000
"$FSX" -N "$N" -S 20261125 -P "$work/artifacts" "$work/mnt/fsx.file" | tail -3
"$S" umount "$work/mnt"
"$S" fsck "$work/vol"
