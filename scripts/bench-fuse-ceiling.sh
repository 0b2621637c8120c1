#!/usr/bin/env bash
# How much of smlogfs's gap to the native directory is FUSE itself: the two write workloads
# of bench.sh whose targets smlogfs misses, on
#   native    the backing directory (ext4 here)
#   ceiling   examples/fuse_ceiling.rs: a FUSE mount whose one file's writes go straight to a
#             backing file in that directory (pwrite; fsync = fdatasync) and do nothing else
#   smlogfs   a single-file smlogfs volume in that directory
# in one run, each workload three times, medians and ratios printed.
#
#   scripts/bench-fuse-ceiling.sh [--file-size MiB] [--seconds S] [--no-build]
#
# Needs root (drop_caches), fuse3, fio, jq.
set -uo pipefail
cd "$(dirname "$0")/.."
file_mib=512
seconds=10
build=1
while [ $# -gt 0 ]; do
    case "$1" in
    --file-size) file_mib="${2:?}"; shift 2 ;;
    --seconds) seconds="${2:?}"; shift 2 ;;
    --no-build) build=""; shift ;;
    *) echo "usage: $0 [--file-size MiB] [--seconds S] [--no-build]" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" -eq 0 ] || { echo "$0 needs root (drop_caches)" >&2; exit 2; }
for tool in fio jq fusermount3; do
    command -v "$tool" >/dev/null || { echo "$tool is missing (apt-get install fuse3 fio jq)" >&2; exit 2; }
done
if [ -n "$build" ]; then
    cargo build --release --bin smlogfs --example fuse_ceiling >/dev/null 2>&1 ||
        { echo "cargo build failed" >&2; exit 1; }
fi
target_dir="$(cargo metadata --format-version 1 --no-deps 2>/dev/null | jq -r .target_directory)"
smlogfs="$target_dir/release/smlogfs"
ceiling="$target_dir/release/examples/fuse_ceiling"
work="$(mktemp -d /var/tmp/smlogfs-ceiling.XXXXXX)"
ceiling_pid=""
cleanup() {
    fusermount3 -u "$work/ceiling.mnt" 2>/dev/null
    "$smlogfs" umount "$work/smlogfs.mnt" 2>/dev/null
    [ -n "$ceiling_pid" ] && wait "$ceiling_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/native" "$work/ceiling.mnt" "$work/smlogfs.mnt"
"$ceiling" "$work/ceiling.img" "$work/ceiling.mnt" &
ceiling_pid=$!
"$smlogfs" mkfs "$work/smlogfs.vol" --size $(( (file_mib * 2 + 512) ))M --ring 64M --disks 1 >/dev/null || exit 1
"$smlogfs" mount "$work/smlogfs.vol" "$work/smlogfs.mnt" || exit 1
for _ in $(seq 50); do mountpoint -q "$work/ceiling.mnt" && break; sleep 0.1; done
mountpoint -q "$work/ceiling.mnt" || { echo "the ceiling mount did not come up" >&2; exit 1; }

file_of() { case "$1" in native) echo "$work/native/f" ;; ceiling) echo "$work/ceiling.mnt/data" ;; smlogfs) echo "$work/smlogfs.mnt/f" ;; esac; }
settle() { sync; echo 3 >/proc/sys/vm/drop_caches; sleep 1; }
median3() { printf '%s\n' "$@" | sort -n | sed -n 2p; }
declare -A R
targets=(native ceiling smlogfs)
for t in "${targets[@]}"; do
    f="$(file_of "$t")"
    a=(); b=()
    for _ in 1 2 3; do
        rm -f "$f" 2>/dev/null; : >"$f" 2>/dev/null
        settle
        a+=("$(fio --output-format=json --name=seq --filename="$f" --rw=write --bs=1M --size="${file_mib}M" \
            --ioengine=psync --end_fsync=1 2>/dev/null | jq '.jobs[0].write.bw_bytes / 1048576 | floor')")
        settle
        b+=("$(fio --output-format=json --name=rw --filename="$f" --rw=randwrite --bs=4k --size=64M \
            --ioengine=psync --fsync=1 --time_based --runtime="$seconds" 2>/dev/null | jq '.jobs[0].write.iops | floor')")
    done
    R[$t,seq]=$(median3 "${a[@]}")
    R[$t,fsync]=$(median3 "${b[@]}")
    echo "== $t: seq write 1 MiB + end fsync ${a[*]} MiB/s (median ${R[$t,seq]}); 4 KiB write+fsync ${b[*]} IOPS (median ${R[$t,fsync]})"
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
echo
printf '%-34s %9s %9s %9s %12s %12s %14s\n' workload native ceiling smlogfs ceiling/nat smlogfs/nat smlogfs/ceil
for w in seq fsync; do
    name=$([ "$w" == seq ] && echo "seq write 1M+fsync (MiB/s)" || echo "4K write+fsync (IOPS)")
    printf '%-34s %9s %9s %9s %12s %12s %14s\n' "$name" "${R[native,$w]}" "${R[ceiling,$w]}" "${R[smlogfs,$w]}" \
        "$(ratio "${R[ceiling,$w]}" "${R[native,$w]}")" "$(ratio "${R[smlogfs,$w]}" "${R[native,$w]}")" \
        "$(ratio "${R[smlogfs,$w]}" "${R[ceiling,$w]}")"
done
