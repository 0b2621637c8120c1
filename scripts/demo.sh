#!/usr/bin/env bash
# The smlogfs demo: mkfs, mount, write, kill -9 the daemon, show the dead mount, remount,
# verify every file by checksum. No arguments; cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

command -v fusermount3 >/dev/null || { echo "demo: fusermount3 missing: apt-get install -y fuse3" >&2; exit 8; }
say "building smlogfs (release)"
cargo build --release -q -p smlogfs
S="$PWD/target/release/smlogfs"

work=$(mktemp -d /tmp/smlogfs-demo.XXXXXX)
vol="$work/vol"; mnt="$work/mnt"
mkdir -p "$mnt"
cleanup() {
  fusermount3 -uz "$mnt" 2>/dev/null || true
  if [ -f "$vol/daemon.pid" ]; then kill -9 "$(head -1 "$vol/daemon.pid")" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

say "smlogfs mkfs $vol --size 512M --ring 64M"
"$S" mkfs "$vol" --size 512M --ring 64M

say "smlogfs mount $vol $mnt"
"$S" mount "$vol" "$mnt"

say "writing files"
mkdir -p "$mnt/docs/deep"
echo "acknowledged means durable" > "$mnt/docs/hello.txt"
head -c 8M /dev/urandom > "$mnt/random.bin"
seq 1 100000 > "$mnt/docs/deep/numbers.txt"
ln "$mnt/docs/hello.txt" "$mnt/hardlink.txt"
ln -s docs/hello.txt "$mnt/symlink.txt"
setfattr -n user.owner -v demo "$mnt/docs/hello.txt" 2>/dev/null || true
mv "$mnt/docs/deep/numbers.txt" "$mnt/docs/numbers.txt"
(cd "$mnt" && find . -type f | sort | xargs md5sum) | tee "$work/before.md5"

pid=$(head -1 "$vol/daemon.pid")
say "kill -9 $pid (the daemon), no unmount, no flush"
kill -9 "$pid"
while kill -0 "$pid" 2>/dev/null && [ "$(awk '{print $3}' /proc/$pid/stat 2>/dev/null)" != Z ]; do sleep 0.05; done

say "the mount is dead now"
ls "$mnt" 2>&1 | head -1 || true

say "what recovery will do (smlogfs inspect, last lines)"
"$S" inspect "$vol" | tail -4

say "smlogfs mount again: recovery replays the state log"
"$S" mount "$vol" "$mnt"
grep "recovered" "$vol/daemon.log" | tail -1 || true

say "verifying checksums"
(cd "$mnt" && find . -type f | sort | xargs md5sum) | tee "$work/after.md5"
diff "$work/before.md5" "$work/after.md5"
getfattr -n user.owner "$mnt/docs/hello.txt" 2>/dev/null || true
stat -c '%n: %h links' "$mnt/docs/hello.txt"

say "clean unmount and fsck"
"$S" umount "$mnt"
"$S" fsck "$vol"
say "demo passed: every acknowledged write survived kill -9"
