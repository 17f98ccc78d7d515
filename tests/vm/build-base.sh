#!/bin/bash
# The test VM's base system, built once per set of inputs (vmtest.sh keys the cache):
# Debian bookworm with systemd, a kernel and the given packages.
#
#   build-base.sh OUT DEBCONF PACKAGE...   ->  OUT/rootfs.tar.zst, OUT/vmlinuz, OUT/initrd.img
#
# DEBCONF: a file of debconf-set-selections lines, answered before the packages install.
set -euo pipefail
out="$1" debconf="$2"; shift 2
mirror="${VMTEST_MIRROR:-http://deb.debian.org/debian}"
tmp="$(mktemp -d /var/tmp/cfncluster-vmbase.XXXXXX)"
trap 'rm -rf "$tmp"' EXIT
root="$tmp/root"

packages="$(IFS=,; echo "$*")"
mmdebstrap --quiet --variant=minbase --include="$packages" \
    --essential-hook="chroot \"\$1\" debconf-set-selections < $(printf %q "$debconf")" \
    bookworm "$root" "$mirror"

# A small initramfs: only what a virtio machine boots with (37 MB -> 7 MB, faster boots).
sed -i 's/^MODULES=.*/MODULES=list/' "$root/etc/initramfs-tools/initramfs.conf"
printf '%s\n' virtio_pci virtio_blk ext4 >> "$root/etc/initramfs-tools/modules"
chroot "$root" update-initramfs -u -k all >/dev/null 2>&1

echo "LABEL=root / ext4 rw,errors=remount-ro 0 1" > "$root/etc/fstab"
echo vmtest > "$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 vmtest\n' > "$root/etc/hosts"
# mmdebstrap leaves machine-id empty: first boot would then prompt on the console.
systemd-machine-id-setup --root="$root" >/dev/null
chroot "$root" passwd -d root >/dev/null
# Nothing but the test may run late or wait on a console.
chroot "$root" systemctl mask --quiet getty-static.service e2scrub_reap.service \
    getty@tty1.service apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
    fstrim.timer dpkg-db-backup.timer 2>/dev/null || true
rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"*

mkdir -p "$out"
cp "$root"/boot/vmlinuz-* "$out/vmlinuz"
cp "$root"/boot/initrd.img-* "$out/initrd.img"
tar -C "$root" -c . | zstd -q -T0 -3 -o "$out/rootfs.tar.zst.part"
mv "$out/rootfs.tar.zst.part" "$out/rootfs.tar.zst"
