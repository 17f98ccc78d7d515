#!/bin/bash
# make vmtest: boot Debian with systemd as PID 1 under QEMU, with the head node installed
# by packer/install.sh (as on the AMI), as an instance of a real stack: moto plays AWS and
# the instance metadata (tests/vm/cloud.py) in a network namespace this script makes, the
# launcher creates the stack, and the VM runs the user data the stack gave its head node,
# as cloud-init would. From there the product alone configures the node: node.toml from
# the stack, storage, the munge key, slurm.conf, the daemons. Checked inside what only a
# real system shows (guest/usr/local/sbin/vmtest-checks) and, on the host, the stack's
# SUCCESS signal. Disks: two instance-store stand-ins, the EBS volume as the NVMe device
# whose serial is its id (as on Nitro), and one that carries the results out. Needs root
# (chroot, mounts, a network namespace).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${VMTEST_CACHE:-/var/cache/cfncluster-vmtest}"
work="$(mktemp -d /var/tmp/cfncluster-vmtest.XXXXXX)"
root="$work/root"
# The VPC: a bridge in a namespace of our own, moto and the metadata on its address.
netns="cfnvm$$" aws_address=172.31.255.254 mac=52:54:00:00:01:01
cloud_pid=""
cleanup() {
    umount -q "$root/proc" "$root/dev" 2>/dev/null || true
    [ -n "$cloud_pid" ] && kill "$cloud_pid" 2>/dev/null
    for pid in $(ip netns pids "$netns" 2>/dev/null); do kill "$pid" 2>/dev/null; done
    ip netns del "$netns" 2>/dev/null || true
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

# 2. The cloud: the namespace, its bridge and tap, moto and the stack, the metadata.
ip netns add "$netns"
ip -n "$netns" link set lo up
ip -n "$netns" link add br0 type bridge
ip -n "$netns" addr add "$aws_address/16" dev br0
ip -n "$netns" link set br0 up
ip -n "$netns" tuntap add tap0 mode tap
ip -n "$netns" link set tap0 master br0
ip -n "$netns" link set tap0 up
mkdir "$work/state"
ip netns exec "$netns" env PYTHONPATH="$repo" "$repo/.venv/bin/python" -m tests.vm.cloud \
    serve "$work/state" "$aws_address" > "$work/state/cloud.log" 2>&1 &
cloud_pid=$!
for _ in $(seq 240); do
    [ -f "$work/state/state.json" ] && break
    kill -0 "$cloud_pid" 2>/dev/null || { cat "$work/state/cloud.log"; say "the cloud died"; exit 1; }
    sleep 0.5
done
[ -f "$work/state/state.json" ] || { cat "$work/state/cloud.log"; say "no stack"; exit 1; }
state() { "$repo/.venv/bin/python" -c "import json,sys; print(json.load(open('$work/state/state.json'))[sys.argv[1]])" "$1"; }
say "stack created in moto; the head node is $(state address)"
# moto gives instances addresses of its own choosing: the VM and the bridge reach each
# other on the link, whatever the subnets.
ip -n "$netns" route add "$(state address)/32" dev br0

# 3. This tree, installed by the script Packer runs, then the test's own files.
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
# What EC2 gives an instance: its address on the VPC, its endpoints (here, moto's and
# the metadata's in the namespace), and its user data for cloud-init (here, a unit).
cat > "$root/etc/systemd/network/10-vpc.network" <<NETWORK
[Match]
MACAddress=$mac

[Network]
Address=$(state address)/16
LinkLocalAddressing=no

[Route]
Destination=$aws_address/32
Scope=link
NETWORK
mkdir -p "$root/etc/systemd/system.conf.d" "$root/var/lib/cloud/instance"
"$repo/.venv/bin/python" - "$work/state/state.json" > "$root/etc/systemd/system.conf.d/aws.conf" <<'PY'
import json, sys
environment = json.load(open(sys.argv[1]))["environment"]
print("[Manager]")
print("DefaultEnvironment=" + " ".join(f"{k}={v}" for k, v in environment.items()))
PY
state user_data > "$root/var/lib/cloud/instance/user-data.txt"
chroot "$root" systemctl enable --quiet systemd-networkd.service vmtest-user-data.service \
    vmtest.service
mkfs.ext4 -q -F -L root -d "$root" "$work/root.img" 3G
say "image ready after $((SECONDS - started)) s"

# 4. Boot. Fresh sparse disks each run: old RAID superblocks would be assembled at boot.
for disk in scratch1 scratch2 shared; do truncate -s 1G "$work/$disk.img"; done
truncate -s 64M "$work/results.img"
drives=()
for disk in root scratch1 scratch2 shared results; do
    drives+=(-drive "file=$work/$disk.img,format=raw,if=none,id=$disk")
    if [ "$disk" = shared ]; then
        drives+=(-device "nvme,drive=$disk,serial=$(state volume_serial)")
    else
        drives+=(-device "virtio-blk-pci,drive=$disk,serial=$disk")
    fi
done
booted=$SECONDS
timeout 900 ip netns exec "$netns" \
    qemu-system-x86_64 -accel tcg,thread=multi -cpu max -machine q35 -smp 2 -m 1536 \
    -nodefaults -display none -monitor none -no-reboot -device virtio-rng-pci \
    -netdev tap,id=vpc,ifname=tap0,script=no,downscript=no \
    -device "virtio-net-pci,netdev=vpc,mac=$mac" \
    -serial "file:$work/serial.log" \
    -kernel "$base/vmlinuz" -initrd "$base/initrd.img" \
    -append "root=LABEL=root rw console=ttyS0 systemd.unit=vmtest.target panic=1 quiet" \
    "${drives[@]}" || { tail -50 "$work/serial.log"; say "QEMU failed"; exit 1; }
say "VM ran for $((SECONDS - booted)) s"

# 5. The results, the VM's and the stack's.
mkdir "$work/results"
if ! tar -xf "$work/results.img" -C "$work/results" 2>/dev/null; then
    tail -80 "$work/serial.log"
    say "no results came out of the VM"
    exit 1
fi
kill "$cloud_pid" 2>/dev/null; wait "$cloud_pid" 2>/dev/null || true
cloud_pid=""
PYTHONPATH="$repo" "$repo/.venv/bin/python" -m tests.vm.cloud check "$work/state" >> "$work/results/checks.txt" || true
mkdir -p "$repo/.vmtest"
cp "$work/serial.log" "$work/results/"* "$work/state/"*.log "$repo/.vmtest/"
cat "$work/results/checks.txt"
expected=$(( $(grep -c '^check ' "$here/guest/usr/local/sbin/vmtest-checks") + 1 ))
passed="$(grep -c '^PASS ' "$work/results/checks.txt" || true)"
say "$passed of $expected checks passed in $((SECONDS - started)) s (logs in .vmtest/)"
[ "$passed" -eq "$expected" ]
