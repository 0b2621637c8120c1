#!/bin/sh
# Emergency flush of every mounted smlogfs volume, for a UPS daemon's power-fail hook.
# `smlogfs flush` makes the ring, the volume and the mirror agent durable at once and prints
# how long it took (well under a second); the mounts keep serving. Exit 0 when every volume
# is on its disks (and its agent's), 12 when an agent's disk could not be brought up to date,
# other codes as `smlogfs` documents (docs/operations.md, "Exit codes").
#
# NUT (upssched.conf):
#   AT ONBATT * EXECUTE onbatt
#   # and in the CMDSCRIPT upssched runs:  case $1 in onbatt) /usr/local/sbin/ups-flush.sh ;; esac
# apcupsd: put the line `/usr/local/sbin/ups-flush.sh` in /etc/apcupsd/onbattery
#   (and in /etc/apcupsd/doshutdown, before the system halts).
#
# Alternatively send SIGPWR to the daemons: kill -PWR $(cat VOLDIR/supervisor.pid)
#   install -m 0755 contrib/ups-flush.sh /usr/local/sbin/
SMLOGFS=${SMLOGFS_BIN:-smlogfs}
status=0
# Mountpoints of smlogfs (fuse.smlogfs) mounts; /proc/self/mounts escapes spaces as \040.
for mnt in $(awk '$3 == "fuse.smlogfs" { print $2 }' /proc/self/mounts); do
    mnt=$(printf '%b' "$mnt")
    out=$("$SMLOGFS" flush "$mnt" 2>&1)
    code=$?
    printf '%s\n' "$out" | logger -s -t ups-flush
    [ "$code" -eq 0 ] || status=$code
done
exit $status
