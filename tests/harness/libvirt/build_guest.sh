#!/bin/bash
# Build the tiny test guest: a Debian kernel (taken from the linux-image .deb with `apt-get
# download`, never installed: /boot and the host's modules are untouched) plus a busybox-static
# initramfs whose /init
#   - loads the virtio modules (Debian builds virtio_* as modules),
#   - puts its NIC on a link-local address and pings the host side of its tap (5 pkt/s, 1200 B),
#   - loops forever: 1 MiB written to /dev/vda + fsync, 1 MiB read back with O_DIRECT, sleep 1.
# It prints "NLC-READY ..." on the serial console once the first disk round and the first ping
# are done, so block and net counters are already non-zero when the start script returns.
#
# usage: build_guest.sh OUTDIR        -> OUTDIR/vmlinuz, OUTDIR/initrd.img, OUTDIR/build.stamp
# Cached: the kernel is downloaded once per OUTDIR; the initramfs is rebuilt (~0.2 s) only when
# this script changes. Env: NLC_GUEST_KERNEL_META (default linux-image-cloud-amd64: a 27 MB .deb
# with the same virtio modules as linux-image-amd64, which is 70 MB).
# Needs: apt-get, apt-cache, dpkg-deb, cpio, gzip, a static /bin/busybox (package busybox-static).
set -euo pipefail
umask 022

G=${1:?usage: build_guest.sh OUTDIR}
META=${NLC_GUEST_KERNEL_META:-linux-image-cloud-amd64}
SELF=$(readlink -f "$0")
STAMP="$(sha256sum "$SELF" | cut -c1-16) $META"
# load order matters (no modprobe in the guest): dependencies first
MODS="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
      virtio_blk failover net_failover virtio_net virtio_balloon"

mkdir -p "$G"
chmod 0755 "$G"
cd "$G"

if [ -f vmlinuz ] && [ -f initrd.img ] && [ "$(cat build.stamp 2>/dev/null)" = "$STAMP" ]; then
    exit 0    # cached and current
fi

kernel_complete() {
    [ -f vmlinuz ] && [ "$(cat kernel.meta 2>/dev/null)" = "$META" ] || return 1
    local m
    for m in $MODS; do [ -f "kmods/$m.ko" ] || return 1; done
}

if ! kernel_complete; then
    t0=$(date +%s)
    pkg=$(apt-cache depends "$META" 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
    if [ -z "$pkg" ]; then
        apt-get -o DPkg::Lock::Timeout=900 update -qq
        pkg=$(apt-cache depends "$META" | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
    fi
    [ -n "$pkg" ] || { echo "build_guest: cannot resolve kernel package of $META" >&2; exit 1; }
    rm -rf dl kx && mkdir dl kx
    # apt's _apt sandbox user must be able to write the download dir (else a harmless warning)
    chown _apt dl 2>/dev/null || true
    (cd dl && apt-get -q download "$pkg" >/dev/null 2>&1) || { sleep 2; (cd dl && apt-get -q download "$pkg"); }
    deb=$(ls dl/*.deb)
    pat=()
    for m in $MODS; do pat+=("./lib/modules/*/$m.ko"); done
    # --wildcards with '*' matching '/' (GNU tar default) finds the modules in their subdirs
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C kx --wildcards './boot/vmlinuz-*' "${pat[@]}"
    rm -rf kmods && mkdir kmods
    for m in $MODS; do
        f=$(find kx/lib/modules -name "$m.ko" | head -1)
        [ -n "$f" ] || { echo "build_guest: module $m.ko not in $pkg" >&2; exit 1; }
        cp "$f" kmods/
    done
    cp kx/boot/vmlinuz-* vmlinuz.new && mv vmlinuz.new vmlinuz
    echo "$META" > kernel.meta
    echo "$pkg" > kernel.pkg
    rm -rf dl kx
    echo "build_guest: kernel $pkg extracted in $(( $(date +%s) - t0 )) s"
fi

BUSYBOX=$(readlink -f "$(command -v busybox)")
if ldd "$BUSYBOX" >/dev/null 2>&1; then
    echo "build_guest: $BUSYBOX is dynamically linked; install busybox-static" >&2
    exit 1
fi

rm -rf rootfs && mkdir -p rootfs/bin rootfs/dev rootfs/proc rootfs/sys rootfs/tmp rootfs/lib/modules
cp "$BUSYBOX" rootfs/bin/busybox
cp kmods/*.ko rootfs/lib/modules/
echo "$MODS" > rootfs/lib/modules/order
cat > rootfs/init <<'INIT'
#!/bin/busybox sh
# PID 1 of the nova-libvirt-checks test guest. Never exits (panic=-1 would reboot the guest).
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /lib/modules/order); do
    insmod /lib/modules/$m.ko || echo "NLC-WARN insmod $m failed"
done
# knobs from the kernel command line (set by domain_xml.py)
IP=169.254.77.15/24; GW=169.254.77.2; BS=64; CNT=16; SLP=1
for a in $(cat /proc/cmdline); do
    case $a in
        nlc_ip=*) IP=${a#*=};; nlc_gw=*) GW=${a#*=};;
        nlc_bs_kb=*) BS=${a#*=};; nlc_count=*) CNT=${a#*=};; nlc_sleep=*) SLP=${a#*=};;
    esac
done
# devices appear asynchronously after insmod
n=0
while [ ! -b /dev/vda ] || [ ! -d /sys/class/net/eth0 ]; do
    n=$((n+1)); [ $n -gt 100 ] && break; sleep 0.1
done
ip link set lo up
ip link set eth0 up
ip addr add "$IP" dev eth0
# network load: ~5 kB/s each way, to the host side of our own tap (link-local, never routed)
( while true; do ping -q -c 50 -i 0.2 -s 1200 -W 2 "$GW" >/dev/null 2>&1 || sleep 1; done ) &
disk_round() {
    # CNT*BS KiB written and flushed to the virtual disk, then read back bypassing the page cache
    dd if=/dev/zero of=/dev/vda bs=${BS}k count=$CNT seek=$(( ($1 % 8) * CNT )) conv=fsync 2>/dev/null
    dd if=/dev/vda of=/dev/null bs=${BS}k count=$CNT skip=$(( ($1 % 8) * CNT )) iflag=direct 2>/dev/null
}
disk_round 0
net=down
n=0
while [ $n -lt 20 ]; do
    if ping -c 1 -W 1 "$GW" >/dev/null 2>&1; then net=up; break; fi
    n=$((n+1))
done
echo "NLC-READY uptime=$(cut -d' ' -f1 /proc/uptime) ip=$IP gw=$GW net=$net disks=$(ls /sys/block | tr '\n' ,) nics=$(ls /sys/class/net | tr '\n' ,)"
i=1
while true; do
    disk_round $i
    i=$((i+1))
    [ $((i % 60)) -eq 0 ] && echo "NLC-LOOP i=$i uptime=$(cut -d' ' -f1 /proc/uptime)"
    sleep $SLP
done
INIT
chmod 0755 rootfs/init
(cd rootfs && find . | cpio -o -H newc --quiet | gzip -1) > initrd.img.new
mv initrd.img.new initrd.img
rm -rf rootfs
chmod 0644 vmlinuz initrd.img
echo "$STAMP" > build.stamp
echo "build_guest: $(du -h vmlinuz | cut -f1) vmlinuz, $(du -h initrd.img | cut -f1) initrd.img in $G"
