#!/usr/bin/env bash
# The smlogfs demo on the default volume (RAID-5 over 4 backing files): mkfs, a mirror agent
# (on loopback here; another host in production), mount mirroring to it, write; kill -9 the
# serving daemon while a writer runs (a pause: its supervisor starts a new one, the writer
# finishes without an error); `smlogfs restart` (a planned hand-over); then kill -9 the
# supervisor and the daemon (the crash), show the dead mount, remount, verify every file by
# checksum; kill both again, delete the local ring, and recover from the agent's copy. No
# arguments; cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

command -v fusermount3 >/dev/null || { echo "demo: fusermount3 missing: apt-get install -y fuse3" >&2; exit 8; }
say "building smlogfs (release)"
cargo build --release -q -p smlogfs -p mirror-agent
S="$PWD/target/release/smlogfs"
AGENT="$PWD/target/release/mirror-agent"

work=$(mktemp -d /tmp/smlogfs-demo.XXXXXX)
vol="$work/vol"; mnt="$work/mnt"
mkdir -p "$mnt"
agent_pid=""
cleanup() {
  fusermount3 -uz "$mnt" 2>/dev/null || true
  for p in $(cat "$vol/supervisor.pid" "$vol/daemon.pid" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
  if [ -n "$agent_pid" ]; then kill -9 "$agent_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

. scripts/lib.sh   # crash_volume: kill -9 of the supervisor and the daemon

say "smlogfs mkfs $vol --size 512M --ring 64M (default: RAID-5 over 4 backing files)"
"$S" mkfs "$vol" --size 512M --ring 64M

port=$((20000 + RANDOM % 20000))
say "mirror-agent --listen 127.0.0.1:$port (the peer; on another host in production)"
"$AGENT" --listen "127.0.0.1:$port" --dir "$work/agent" 2>"$work/agent.log" &
agent_pid=$!
disown "$agent_pid"
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.05
done
mirror=(--mirror "127.0.0.1:$port")

say "smlogfs mount $vol $mnt --mirror 127.0.0.1:$port (sync: a write returns once the agent has it)"
"$S" mount "$vol" "$mnt" "${mirror[@]}"

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

say "a writer runs while the serving daemon is killed twice: a pause for it, not an error"
(set -e; for i in $(seq 1 300); do
  printf 'line %s\n' "$i" >> "$mnt/docs/journal.txt"; echo "$i" > "$mnt/docs/counter"; sync "$mnt/docs/counter"
done) &
writer=$!
for _ in 1 2; do
  sleep 0.3
  pid=$(head -1 "$vol/daemon.pid")
  echo "kill -9 $pid (daemon; supervisor $(cat "$vol/supervisor.pid") stays)"
  kill -9 "$pid"; wait_pid_gone "$pid" 30
  while [ "$(head -1 "$vol/daemon.pid")" = "$pid" ]; do sleep 0.02; done
  echo "new daemon pid $(head -1 "$vol/daemon.pid") serves"
done
wait "$writer" && echo "the writer finished without an error: $(wc -l <"$mnt/docs/journal.txt") lines, counter $(cat "$mnt/docs/counter")"
[ "$(wc -l <"$mnt/docs/journal.txt")" -eq 300 ] && [ "$(cat "$mnt/docs/counter")" = 300 ]
grep -E "died \(signal 9" "$vol/daemon.log" | tail -2 | sed 's/^\[[^]]*\] //'

say "smlogfs restart $mnt: a planned hand-over to a new daemon (e.g. after an upgrade)"
"$S" restart "$mnt"
"$S" status "$mnt" | grep -A1 '^restarts'
(cd "$mnt" && find . -type f | sort | xargs md5sum) > "$work/before.md5"

say "kill -9 of the daemon ($(head -1 "$vol/daemon.pid")) and its mount supervisor ($(cat "$vol/supervisor.pid")): a crash, no unmount, no flush"
crash_volume "$vol"

say "the mount is dead now"
ls "$mnt" 2>&1 | head -1 || true

say "what recovery will do (smlogfs inspect, last lines)"
"$S" inspect "$vol" | tail -4

say "smlogfs mount again: recovery replays the state log"
"$S" mount "$vol" "$mnt" "${mirror[@]}"
grep "recovered" "$vol/daemon.log" | tail -1 || true

say "verifying checksums"
(cd "$mnt" && find . -type f | sort | xargs md5sum) | tee "$work/after.md5"
diff "$work/before.md5" "$work/after.md5"
getfattr -n user.owner "$mnt/docs/hello.txt" 2>/dev/null || true
stat -c '%n: %h links' "$mnt/docs/hello.txt"

say "more writes, then kill -9 again and delete the local ring: only the agent has them now"
echo "after the first crash" > "$mnt/docs/second.txt"
head -c 1M /dev/urandom > "$mnt/docs/second.bin"
(cd "$mnt" && find . -type f | sort | xargs md5sum) > "$work/before2.md5"
crash_volume "$vol"
rm -v "$vol/statelog"

say "smlogfs mount: the ring is gone, recovery reads the entries back from the agent"
"$S" mount "$vol" "$mnt" "${mirror[@]}"
grep -E "from the mirror agent|recovered" "$vol/daemon.log" | tail -2 || true
(cd "$mnt" && find . -type f | sort | xargs md5sum) > "$work/after2.md5"
diff "$work/before2.md5" "$work/after2.md5" && echo "all $(wc -l <"$work/after2.md5") files identical"

say "clean unmount and fsck"
"$S" umount "$mnt"
"$S" fsck "$vol"
say "demo passed: every acknowledged write survived kill -9, and the loss of the local ring"
