#!/usr/bin/env bash
# Takeover and giveback with two hosts made of network namespaces.
#
#   host A (netns smlg-demo-a, 10.77.<n>.1)  ── veth ──  host B (netns smlg-demo-b, 10.77.<n>.2)
#   smlogfs daemon of node A                              mirror-agent; later node B's daemon
#
# Both hosts see the same backing files (one machine), as two servers on shared storage would.
# A serves the volume and mirrors every entry to the agent on B in sync mode; A is killed with
# kill -9 and its local ring deleted (the host is "lost"); B takes the volume over from the
# agent's copy with every acknowledged file; A, back, is fenced; B gives the volume back and A
# mounts it again with B's writes too. Needs root, fuse3 and iproute2; cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
die() { echo "failover-demo: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (network namespaces, mounts)"
command -v fusermount3 >/dev/null || die "fusermount3 missing: apt-get install -y fuse3"
command -v ip >/dev/null || die "ip missing: apt-get install -y iproute2"
command -v nsenter >/dev/null || die "nsenter missing: apt-get install -y util-linux"

say "building smlogfs and mirror-agent (release)"
cargo build --release -q -p smlogfs -p mirror-agent
S="$PWD/target/release/smlogfs"
AGENT="$PWD/target/release/mirror-agent"

tag=$$
ns_a="smlg-demo-a-$tag"
ns_b="smlg-demo-b-$tag"
net="10.77.$((tag % 200 + 20))"
ip_a="$net.1"
ip_b="$net.2"
port=7700
work=$(mktemp -d /tmp/smlogfs-failover.XXXXXX)
vol="$work/vol"
mnt_a="$work/mnt-a"
mnt_b="$work/mnt-b"
mkdir -p "$mnt_a" "$mnt_b"
agent_pid=""

on_a() { nsenter --net="/run/netns/$ns_a" "$@"; }   # network of A, the machine's mounts
on_b() { nsenter --net="/run/netns/$ns_b" "$@"; }

cleanup() {
  set +e
  for m in "$mnt_a" "$mnt_b"; do
    if mountpoint -q "$m" 2>/dev/null || ! ls "$m" >/dev/null 2>&1; then fusermount3 -uz "$m" 2>/dev/null; fi
  done
  for p in $(cat "$vol/supervisor.pid" "$vol/daemon.pid" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
  [ -n "$agent_pid" ] && kill -9 "$agent_pid" 2>/dev/null
  ip netns del "$ns_a" 2>/dev/null
  ip netns del "$ns_b" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

. scripts/lib.sh   # wait_pid_gone

say "two hosts: $ns_a ($ip_a) and $ns_b ($ip_b), joined by a veth pair"
ip netns add "$ns_a"
ip netns add "$ns_b"
ip link add "sdA$tag" netns "$ns_a" type veth peer name "sdB$tag" netns "$ns_b"
ip -n "$ns_a" addr add "$ip_a/24" dev "sdA$tag"
ip -n "$ns_b" addr add "$ip_b/24" dev "sdB$tag"
for ns in "$ns_a" "$ns_b"; do ip -n "$ns" link set lo up; done
ip -n "$ns_a" link set "sdA$tag" up
ip -n "$ns_b" link set "sdB$tag" up

say "host B: mirror-agent --listen $ip_b:$port"
# nsenter itself, not the on_b function: $! must be the agent's pid for the cleanup to kill it
nsenter --net="/run/netns/$ns_b" "$AGENT" --listen "$ip_b:$port" --dir "$work/agent" 2>"$work/agent.log" &
agent_pid=$!
disown "$agent_pid"   # killed in cleanup; no "Killed" notice from bash
for _ in $(seq 1 100); do
  on_a bash -c "exec 3<>/dev/tcp/$ip_b/$port" 2>/dev/null && break
  sleep 0.05
done
mirror=(--mirror "$ip_b:$port")

say "smlogfs mkfs $vol (the default volume: RAID-5 over 4 backing files)"
"$S" mkfs "$vol" --size 256M --ring 32M

say "host A: smlogfs mount … --mirror $ip_b:$port --node A (no checkpoints during the demo)"
on_a "$S" mount "$vol" "$mnt_a" "${mirror[@]}" --node A -o checkpoint_ms=3600000
"$S" status "$mnt_a" | grep -iE "mirror|route|protected|epoch" || true

say "host A writes files; each returned only once the agent on B had its entries"
mkdir -p "$mnt_a/projects/smlogfs"
echo "written on A" > "$mnt_a/projects/smlogfs/notes.txt"
head -c 4M /dev/urandom > "$mnt_a/projects/blob.bin"
seq 1 50000 > "$mnt_a/projects/numbers.txt"
ln -s smlogfs/notes.txt "$mnt_a/projects/link"
mv "$mnt_a/projects/numbers.txt" "$mnt_a/projects/smlogfs/numbers.txt"
(cd "$mnt_a" && find . -type f | sort | xargs md5sum) | tee "$work/a.md5"

pid=$(head -1 "$vol/daemon.pid")
say "host A is lost: kill -9 of its daemon ($pid) and mount supervisor, and its local ring is gone too"
crash_volume "$vol" 10 || die "A's processes did not exit"
fusermount3 -uz "$mnt_a"
ring="$vol/statelog"
[ -f "$ring" ] && rm -f "$ring" && echo "deleted $ring"

say "host B: smlogfs takeover (raise the epoch, replay A's entries from the agent, mount)"
t0=$EPOCHREALTIME
on_b "$S" takeover "$vol" "$mnt_b" "${mirror[@]}" --node B
t1=$EPOCHREALTIME
awk "BEGIN{printf \"takeover ready after %d ms\n\", ($t1 - $t0) * 1000}"

say "host B sees every file A acknowledged"
(cd "$mnt_b" && find . -type f | sort | xargs md5sum) | tee "$work/b.md5"
diff "$work/a.md5" "$work/b.md5"
readlink "$mnt_b/projects/link"
echo "written on B while A was away" > "$mnt_b/projects/from-b.txt"

say "host A comes back and tries to mount: it is fenced"
set +e
on_a "$S" mount "$vol" "$mnt_a" "${mirror[@]}" --node A
code=$?
set -e
[ "$code" -eq 11 ] || die "node A, fenced, got exit $code instead of 11 (fenced)"
echo "(refused with exit 11: fenced, as it must be)"

say "host B: smlogfs giveback"
"$S" giveback "$mnt_b"

say "host A mounts again under a new epoch and sees B's writes too"
on_a "$S" mount "$vol" "$mnt_a" "${mirror[@]}" --node A
cat "$mnt_a/projects/from-b.txt"
(cd "$mnt_a" && find . -type f ! -name from-b.txt | sort | xargs md5sum) >"$work/a2.md5"
diff "$work/a.md5" "$work/a2.md5"
"$S" umount "$mnt_a"
"$S" fsck "$vol"
say "failover demo passed: nothing acknowledged was lost, and A never wrote after the takeover"
