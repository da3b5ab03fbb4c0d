#!/bin/sh
# Docker inside a restored golden (issue 9, deliverable 5; findings F5/F6), for real.
#
# Usage (root): scripts/docker-in-guest.sh GOLDEN.tar.zst [WORKDIR] [keyctl=1|0]
#
# Unpacks a `felhom golden build --docker debian` archive the way PVE's restore does (tar
# under lxc-usernsexec with the unprivileged id map), applies the part of PVE's start-time
# setup a network-less guest needs, and boots it as an unprivileged LXC container with what
# PVE's nesting=1 adds (allow_nesting's /proc and /sys mounts) and, for keyctl=1, no keyctl
# seccomp rule (keyctl=0 adds PVE's `keyctl errno 38`). Inside, after systemd is up: `docker
# info`, `docker import` of a busybox rootfs made here (no registry is reachable), and
# `docker run` of it with no network and with Docker's default bridge. Everything lives in
# WORKDIR (lxc state too: /run is a private bind mount); the guest has no network but its
# own namespace's loopback. Output: what worked, and the exact errors of what did not.
#
# Measured on the project's machines (kernel 6.18, cgroup v1+v2 hybrid, Debian 13's Docker
# 26.1.5, runc 1.1.15): overlay2 (userxattr) works, `docker import` and `docker run` work with
# no network and with Docker's default bridge, with keyctl=1 and also with keyctl=0 (runc
# ignores keyctl's ENOSYS). systemd ends `degraded`: sys-kernel-debug.mount and
# systemd-modules-load.service fail because userns.conf keeps CAP_SYS_RAWIO/CAP_SYS_MODULE
# in the bounding set (`lxc.cap.drop = sys_module sys_rawio` gives `running`).
set -eu

GOLDEN=${1:?usage: $0 GOLDEN.tar.zst [WORKDIR] [keyctl=1|0]}
WORK=${2:-$(mktemp -d /var/tmp/felhom-docker-XXXXXX)}
KEYCTL=${3:-keyctl=1}
NAME=golden-docker

[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 2; }
for t in lxc-start lxc-usernsexec unshare nsenter tar zstd; do
    command -v "$t" >/dev/null || { echo "missing $t (apt-get install lxc uidmap zstd)" >&2; exit 2; }
done
BUSYBOX=$(command -v busybox) || { echo "missing busybox (apt-get install busybox-static)" >&2; exit 2; }
case $KEYCTL in keyctl=1|keyctl=0) ;; *) echo "third argument: keyctl=1 or keyctl=0" >&2; exit 2 ;; esac

# newuidmap needs root's subordinate range for the id map PVE uses.
for f in /etc/subuid /etc/subgid; do
    grep -qx 'root:100000:65536' "$f" 2>/dev/null || echo 'root:100000:65536' >> "$f"
done

mkdir -p "$WORK/lxc/$NAME" "$WORK/run" "$WORK/rootfs"
# The id-mapped tar and the container root (uid 100000) must be able to reach the rootfs.
chmod 0755 "$WORK" "$WORK/lxc"
ROOTFS=$WORK/rootfs
chown 100000:100000 "$ROOTFS"

echo "== restore: unpack as PVE does (ids shifted by 100000)"
lxc-usernsexec -m u:0:100000:65536 -m g:0:100000:65536 -- \
    tar xpf "$GOLDEN" --zstd --totals --one-file-system -p --sparse --numeric-owner \
    --acls --xattrs --xattrs-include='user.*' --xattrs-include=security.capability \
    --warning=no-file-ignored --warning=no-xattr-write --skip-old-files --anchored \
    --exclude './dev/*' -C "$ROOTFS"
rm -f "$ROOTFS/etc/vzdump/pct.conf"

echo "== start-time setup (no NIC: loopback only)"
in_ns() { lxc-usernsexec -m u:0:100000:65536 -m g:0:100000:65536 -- "$@"; }
in_ns sh -c "
    touch '$ROOTFS/fastboot'
    echo $NAME > '$ROOTFS/etc/hostname'
    printf '127.0.0.1 localhost\n::1 localhost\n127.0.1.1 $NAME\n' > '$ROOTFS/etc/hosts'
    printf 'auto lo\niface lo inet loopback\n' > '$ROOTFS/etc/network/interfaces'
"

echo "== a busybox rootfs for docker import"
BB=$WORK/busybox-rootfs
mkdir -p "$BB/bin"
cp "$BUSYBOX" "$BB/bin/busybox"
ln -sf busybox "$BB/bin/sh"
tar -C "$BB" --numeric-owner --owner=0 --group=0 -cf "$WORK/busybox.tar" .
in_ns cp "$WORK/busybox.tar" "$ROOTFS/root/busybox.tar"

SECCOMP=$WORK/lxc/$NAME/seccomp
cp /usr/share/lxc/config/common.seccomp "$SECCOMP"
[ "$KEYCTL" = keyctl=1 ] || echo 'keyctl errno 38' >> "$SECCOMP"

cat > "$WORK/lxc/$NAME/config" <<EOF
lxc.include = /usr/share/lxc/config/debian.common.conf
lxc.include = /usr/share/lxc/config/debian.userns.conf
lxc.idmap = u 0 100000 65536
lxc.idmap = g 0 100000 65536
lxc.rootfs.path = dir:$ROOTFS
lxc.uts.name = $NAME
lxc.net.0.type = empty
lxc.apparmor.profile = unconfined
lxc.mount.auto = sys:mixed
lxc.mount.entry = proc dev/.lxc/proc proc create=dir,optional 0 0
lxc.mount.entry = sys dev/.lxc/sys sysfs create=dir,optional 0 0
lxc.seccomp.profile = $SECCOMP
lxc.environment = TERM=linux
lxc.log.file = $WORK/lxc/$NAME/lxc.log
lxc.log.level = INFO
EOF

echo "== boot ($KEYCTL)"
export WORK NAME
# The inner script runs in the private mount namespace; its variables expand there.
# shellcheck disable=SC2016
unshare -m --propagation private sh -eu -c '
mount --bind "$WORK/run" /run
mkdir -p /run/lxc/lock
lxc-start -P "$WORK/lxc" -n "$NAME" -d
trap "lxc-stop -P \"$WORK/lxc\" -n \"$NAME\" -k 2>/dev/null || true" EXIT
PID=$(lxc-info -P "$WORK/lxc" -n "$NAME" -pH)
i=0
until nsenter -t "$PID" -m test -S /run/systemd/private; do
    i=$((i + 1)); [ $i -lt 300 ] || { echo "systemd did not come up"; exit 1; }; sleep 0.1
done
g() { nsenter -t "$PID" -a env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root "$@"; }
echo "-- systemctl is-system-running: $(g timeout 60 systemctl is-system-running --wait || true)"
g systemctl --failed --no-legend || true
# keyctl(KEYCTL_JOIN_SESSION_KEYRING) from a process systemd starts, so it runs under the
# container seccomp filter (nsenter from the host would not).
echo "-- keyctl inside the guest: $(g systemd-run --wait --pipe -q --expand-environment=no -- perl -e "\$r = syscall(250, 1, 0); print \$r < 0 ? q(errno ).(\$!+0).q( ).\$! : q(ok)" || true)"
echo "-- docker.service: $(g systemctl is-active docker.service || true)"
echo "-- docker info"
g docker info 2>&1 || true
echo "-- docker import"
g docker import /root/busybox.tar felhom/busybox:local 2>&1 || true
echo "-- docker run --network none"
g docker run --rm --network none felhom/busybox:local /bin/busybox echo hello-from-nested-docker 2>&1 || true
echo "-- docker run (default bridge, inside the guest network namespace)"
g docker run --rm felhom/busybox:local /bin/busybox ip -4 addr show eth0 2>&1 || true
echo "-- poweroff"
g systemctl poweroff || true
i=0
while ! lxc-info -P "$WORK/lxc" -n "$NAME" -s 2>/dev/null | grep -q STOPPED; do
    i=$((i + 1)); [ $i -lt 100 ] || break; sleep 0.1
done
'
echo "== done; workdir $WORK (ids shifted by 100000: remove it with rm -rf)"
