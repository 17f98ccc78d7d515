#!/bin/bash
# make vmtest: boot Debian with systemd as PID 1 under QEMU, with the head node installed
# by packer/install.sh (as on the AMI), and check inside what only a real system shows:
# a real mdadm RAID0, the shared volume, READY=1, the watchdog, journal fields
# (guest/usr/local/sbin/vmtest-checks). Disks: two instance-store stand-ins, one EBS
# stand-in, and one that carries the results out. Needs root (chroot, mounts).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${VMTEST_CACHE:-/var/cache/cfncluster-vmtest}"
work="$(mktemp -d /var/tmp/cfncluster-vmtest.XXXXXX)"
root="$work/root"
cleanup() {
    umount -q "$root/proc" "$root/dev" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
say() { echo "vmtest: $*"; }
started=$SECONDS

# 1. The base system, cached by its inputs: the package list and the build script.
packages="systemd-sysv udev kmod linux-image-amd64 $(bash "$repo/packer/install.sh" --role head --list-packages)"
key="$( (echo "$packages"; cat "$here/build-base.sh") | sha256sum | cut -c1-16)"
base="$cache/base-$key"
if [ -f "$base/rootfs.tar.zst" ]; then
    say "base image $key from the cache"
else
    say "building base image $key (mmdebstrap, a few minutes)"
    # shellcheck disable=SC2086
    "$here/build-base.sh" "$base" $packages
fi

# 2. This tree, installed by the script Packer runs, then the test's own files.
mkdir "$root"
zstd -q -dc "$base/rootfs.tar.zst" | tar -x -C "$root"
cp -r "$repo/dist" "$root/tmp/dist"
mount -t proc proc "$root/proc"
mount --bind /dev "$root/dev"
# A clean environment, as on a fresh instance: none of this machine's pip settings.
chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    bash /tmp/dist/install.sh --role head --from /tmp/dist --no-packages
umount "$root/proc" "$root/dev"
rm -rf "$root/tmp/dist"
cp -r "$here/guest/." "$root/"
chroot "$root" systemctl enable --quiet systemd-networkd.service slurmctld.service vmtest.service
mkfs.ext4 -q -F -L root -d "$root" "$work/root.img" 3G
say "image ready after $((SECONDS - started)) s"

# 3. Boot. Fresh sparse disks each run: old RAID superblocks would be assembled at boot.
for disk in scratch1 scratch2 shared; do truncate -s 1G "$work/$disk.img"; done
truncate -s 64M "$work/results.img"
drives=()
for disk in root scratch1 scratch2 shared results; do
    drives+=(-drive "file=$work/$disk.img,format=raw,if=none,id=$disk"
             -device "virtio-blk-pci,drive=$disk,serial=$disk")
done
booted=$SECONDS
timeout 900 qemu-system-x86_64 -accel tcg,thread=multi -cpu max -machine q35 -smp 2 -m 1536 \
    -nodefaults -display none -monitor none -no-reboot -nic none -device virtio-rng-pci \
    -serial "file:$work/serial.log" \
    -kernel "$base/vmlinuz" -initrd "$base/initrd.img" \
    -append "root=LABEL=root rw console=ttyS0 systemd.unit=vmtest.target panic=1 quiet" \
    "${drives[@]}" || { tail -50 "$work/serial.log"; say "QEMU failed"; exit 1; }
say "VM ran for $((SECONDS - booted)) s"

# 4. The results.
mkdir "$work/results"
if ! tar -xf "$work/results.img" -C "$work/results" 2>/dev/null; then
    tail -80 "$work/serial.log"
    say "no results came out of the VM"
    exit 1
fi
mkdir -p "$repo/.vmtest"
cp "$work/serial.log" "$work/results/"* "$repo/.vmtest/"
cat "$work/results/checks.txt"
expected="$(grep -c '^check ' "$here/guest/usr/local/sbin/vmtest-checks")"
passed="$(grep -c '^PASS ' "$work/results/checks.txt" || true)"
say "$passed of $expected checks passed in $((SECONDS - started)) s (logs in .vmtest/)"
[ "$passed" -eq "$expected" ]
