#!/bin/bash
# PID 1 of a machine's new PID namespace (see machine.go), inside its own mount, UTS, IPC and
# cgroup namespaces and the host's network namespace. It builds the machine's root, an overlay of
# the host's own root file system under a tmpfs (so the machine has the host's systemd,
# containerd and runc and writes nothing to the host), and becomes systemd. Everything mounted
# here lives in the machine's mount namespace only, and goes with its last process.
set -euo pipefail
NAME=$1 BASE=$2 UNIT=$3
R=$BASE/root T=$BASE/scratch

# machine.go moves its launcher (our ancestors, outside the PID namespace) out of the machine's
# cgroups first: systemd must find only its own processes there.
for _ in $(seq 400); do [ -e "$BASE/go" ] && break; sleep 0.05; done
[ -e "$BASE/go" ] || { echo "machine-init: the launcher never said go" >&2; exit 1; }

mount -t tmpfs -o mode=755,size=4g "machine-$NAME" "$T"
mkdir -p "$T/upper" "$T/work"
# The harness's files for this machine, over the host's.
cp -a "$BASE/seed/." "$T/upper/"
mount -t overlay -o "lowerdir=/,upperdir=$T/upper,workdir=$T/work" "machine-$NAME" "$R"

mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
# Read-only: the network namespace is the host's, and most other settings are global.
mount --bind "$R/proc/sys" "$R/proc/sys"
mount -o remount,bind,ro,nosuid,nodev,noexec "$R/proc/sys"
if [ -e "$R/proc/sysrq-trigger" ]; then mount --bind /dev/null "$R/proc/sysrq-trigger"; fi
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys"

# The cgroup namespace's root is the machine's own cgroup in every hierarchy, so fresh mounts
# show only that subtree.
mount -t tmpfs -o mode=755,nosuid,nodev,noexec cgroup "$R/sys/fs/cgroup"
for c in $(awk -F: '$2!="" && $2 !~ /^name=/ {print $2}' /proc/self/cgroup); do
  mkdir -p "$R/sys/fs/cgroup/$c"
  mount -t cgroup -o "nosuid,nodev,noexec,$c" cgroup "$R/sys/fs/cgroup/$c"
done
if grep -q ':name=systemd:' /proc/self/cgroup; then
  mkdir -p "$R/sys/fs/cgroup/systemd" "$R/sys/fs/cgroup/unified"
  mount -t cgroup -o nosuid,nodev,noexec,none,name=systemd cgroup "$R/sys/fs/cgroup/systemd"
  mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$R/sys/fs/cgroup/unified"
else
  umount "$R/sys/fs/cgroup"
  mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$R/sys/fs/cgroup"
fi

mount -t tmpfs -o mode=755,nosuid,size=64m dev "$R/dev"
mknod -m 666 "$R/dev/null" c 1 3
mknod -m 666 "$R/dev/zero" c 1 5
mknod -m 666 "$R/dev/full" c 1 7
mknod -m 666 "$R/dev/random" c 1 8
mknod -m 666 "$R/dev/urandom" c 1 9
mknod -m 666 "$R/dev/tty" c 5 0
mkdir -m 755 "$R/dev/pts" "$R/dev/mqueue"
mkdir -m 1777 "$R/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5,nosuid,noexec devpts "$R/dev/pts"
ln -s pts/ptmx "$R/dev/ptmx"
mount -t tmpfs -o mode=1777,nosuid,nodev shm "$R/dev/shm"
mount -t mqueue -o nosuid,nodev,noexec mqueue "$R/dev/mqueue"
ln -s /proc/self/fd "$R/dev/fd"
ln -s /proc/self/fd/0 "$R/dev/stdin"
ln -s /proc/self/fd/1 "$R/dev/stdout"
ln -s /proc/self/fd/2 "$R/dev/stderr"
# The kernel's log, which kubelet's OOM watcher reads.
if [ -c /dev/kmsg ]; then touch "$R/dev/kmsg"; mount --bind /dev/kmsg "$R/dev/kmsg"; fi
# No console: systemd writes to it only when it is a tty; the journal has everything.
touch "$R/dev/console"
mount --bind /dev/null "$R/dev/console"

mount -t tmpfs -o mode=755,nosuid,nodev,size=512m run "$R/run"
mount -t tmpfs -o mode=1777,nosuid,nodev tmp "$R/tmp"
# containerd's overlayfs snapshots cannot live on an overlay: a real directory of the host.
mkdir -p "$R/var/lib/containerd"
mount --bind "$BASE/containerd" "$R/var/lib/containerd"

rm -f "$R/etc/machine-id"
tr -d - < /proc/sys/kernel/random/uuid > "$R/etc/machine-id"
echo "$NAME" > "$R/etc/hostname"
hostname "$NAME"

cd "$R"
mkdir -p .oldroot
pivot_root . .oldroot
umount -l /.oldroot
rmdir /.oldroot
cd /
# As on a host: kubelet's mountPropagation needs a shared root, which systemd in a container
# leaves as it finds it (kind's entrypoint does the same).
mount --make-rshared /
exec setpriv --bounding-set -sys_module,-sys_time \
  env -i container=pullgate-test TERM=linux /lib/systemd/systemd --unit="$UNIT"
