#!/bin/bash
# make vmtest: three VMs, Debian with systemd as PID 1 under QEMU, each installed by
# packer/install.sh for its role (as the AMIs are) and each an instance of a real stack:
# moto plays AWS and the instance metadata (tests/vm/cloud.py) in a network namespace this
# script makes, the launcher creates the stacks, and each VM runs the user data the stack
# gave its instance, as cloud-init would. From there the product alone configures the
# nodes: node.toml and compute.toml from the stack, storage, the munge key, slurm.conf,
# NFS, slurmd, the join. The VMs: a cluster's head node ("head") and the compute node its
# group launched ("compute"), and the head node of a second stack whose post_install
# fails ("hook"). Checked inside what only real systems show
# (guest/usr/local/sbin/vmtest-checks: a job from the head node runs on the compute VM)
# and, on the host, the stacks' outcomes. A head node's disks: two instance-store
# stand-ins, its stack's EBS volume as the NVMe device whose serial is its id (as on
# Nitro), and one that carries the results out; the compute node's: two instance-store
# stand-ins and its results. Needs root (chroot, mounts, a network namespace).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${VMTEST_CACHE:-/var/cache/cfncluster-vmtest}"
work="$(mktemp -d /var/tmp/cfncluster-vmtest.XXXXXX)"
python="$repo/.venv/bin/python"
# The VPC: a bridge in a namespace of our own, moto and the metadata on its address.
netns="cfnvm$$" aws_address=172.31.255.254
roles=(head compute hook)
declare -A mac=([head]=52:54:00:00:01:01 [compute]=52:54:00:00:01:02 [hook]=52:54:00:00:01:03)
declare -A tap=([head]=tap0 [compute]=tap1 [hook]=tap2)
# What packer/install.sh installs for each VM.
declare -A install_role=([head]=head [compute]=compute [hook]=head)
cloud_pid=""
cleanup() {
    for role in "${roles[@]}"; do
        umount -q "$work/$role/root/proc" "$work/$role/root/dev" 2>/dev/null || true
    done
    [ -n "$cloud_pid" ] && kill "$cloud_pid" 2>/dev/null
    for pid in $(ip netns pids "$netns" 2>/dev/null); do kill "$pid" 2>/dev/null; done
    ip netns del "$netns" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
say() { echo "vmtest: $*"; }
started=$SECONDS

# 1. The base system, cached by its inputs: the package list and the build script. One
#    base for both roles: each installs its own part of it.
role_packages() { bash "$repo/packer/install.sh" --role "$1" --list-packages; }
packages="$(echo systemd-sysv udev kmod linux-image-amd64 $(role_packages head) \
    $(role_packages compute) | tr ' ' '\n' | sort -u | tr '\n' ' ')"
debconf="$work/debconf"
for role in head compute; do bash "$repo/packer/install.sh" --role "$role" --list-debconf; done \
    | sort -u > "$debconf"
key="$( (echo "$packages"; cat "$debconf" "$here/build-base.sh") | sha256sum | cut -c1-16)"
base="$cache/base-$key"
if [ -f "$base/rootfs.tar.zst" ]; then
    say "base image $key from the cache"
else
    say "building base image $key (mmdebstrap, a few minutes)"
    # shellcheck disable=SC2086
    "$here/build-base.sh" "$base" "$debconf" $packages
fi

# 2. The cloud: the namespace, its bridge and taps, moto and the stack, the metadata.
ip netns add "$netns"
ip -n "$netns" link set lo up
ip -n "$netns" link add br0 type bridge
ip -n "$netns" addr add "$aws_address/16" dev br0
ip -n "$netns" link set br0 up
for role in "${roles[@]}"; do
    ip -n "$netns" tuntap add "${tap[$role]}" mode tap
    ip -n "$netns" link set "${tap[$role]}" master br0
    ip -n "$netns" link set "${tap[$role]}" up
done
mkdir "$work/state"
ip netns exec "$netns" env PYTHONPATH="$repo" "$python" -m tests.vm.cloud \
    serve "$work/state" "$aws_address" > "$work/state/cloud.log" 2>&1 &
cloud_pid=$!
for _ in $(seq 240); do
    [ -f "$work/state/state.json" ] && break
    kill -0 "$cloud_pid" 2>/dev/null || { cat "$work/state/cloud.log"; say "the cloud died"; exit 1; }
    sleep 0.5
done
[ -f "$work/state/state.json" ] || { cat "$work/state/cloud.log"; say "no stack"; exit 1; }
# state KEY ROLE: a value of the instance ROLE's in state.json.
state() {
    "$python" -c 'import json, sys
print(json.load(open(sys.argv[1]))["instances"][sys.argv[3]][sys.argv[2]])' \
        "$work/state/state.json" "$@"
}
say "stacks created in moto: head node $(state address head), compute node" \
    "$(state address compute), failing head node $(state address hook)"
# moto gives instances addresses of its own choosing: the VMs and the bridge reach each
# other on the link, whatever the subnets.
for role in "${roles[@]}"; do ip -n "$netns" route add "$(state address "$role")/32" dev br0; done

# 3. Each image: this tree, installed by the script Packer runs for the role, then the
#    test's own files, then what EC2 gives an instance: its address on the VPC, its
#    endpoints (moto's and the metadata's in the namespace), its hostname, and its user
#    data for cloud-init (a unit stands in for it).
image() {
    local role="$1" root="$work/$1/root" other routes=""
    mkdir -p "$root"
    zstd -q -dc "$base/rootfs.tar.zst" | tar -x -C "$root"
    cp -r "$repo/dist" "$root/tmp/dist"
    mount -t proc proc "$root/proc"
    mount --bind /dev "$root/dev"
    # A clean environment, as on a fresh instance: none of this machine's pip settings.
    chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        bash /tmp/dist/install.sh --role "${install_role[$role]}" --from /tmp/dist --no-packages
    umount "$root/proc" "$root/dev"
    rm -rf "$root/tmp/dist"
    cp -r "$here/guest/." "$root/"
    for other in "${roles[@]}"; do
        [ "$other" = "$role" ] && continue
        routes+=$'\n'"[Route]"$'\n'"Destination=$(state address "$other")/32"$'\n'"Scope=link"$'\n'
    done
    cat > "$root/etc/systemd/network/10-vpc.network" <<NETWORK
[Match]
MACAddress=${mac[$role]}

[Network]
Address=$(state address "$role")/16
LinkLocalAddressing=no

[Route]
Destination=$aws_address/32
Scope=link
$routes
NETWORK
    mkdir -p "$root/etc/systemd/system.conf.d" "$root/var/lib/cloud/instance"
    "$python" - "$work/state/state.json" "$role" > "$root/etc/systemd/system.conf.d/aws.conf" <<'PY'
import json, sys
environment = json.load(open(sys.argv[1]))["instances"][sys.argv[2]]["environment"]
print("[Manager]")
print("DefaultEnvironment=" + " ".join(f"{k}={v}" for k, v in environment.items()))
PY
    state user_data "$role" > "$root/var/lib/cloud/instance/user-data.txt"
    echo "$role" > "$root/etc/vmtest-role"
    if [ "$role" = compute ]; then
        state hostname compute > "$root/etc/hostname"
        printf '127.0.0.1 localhost\n127.0.1.1 %s\n' "$(state hostname compute)" > "$root/etc/hosts"
        # It shuts down as an instance does, not by force: its unit must say it leaves.
        mkdir -p "$root/etc/systemd/system/vmtest.service.d"
        printf '[Unit]\nSuccessAction=none\n' > "$root/etc/systemd/system/vmtest.service.d/compute.conf"
    fi
    if [ "$role" = hook ]; then
        # Its head node's unit fails and restarts, and the boot waits on it: the checks
        # start without waiting for the boot, and wait for the failure themselves.
        mkdir -p "$root/etc/systemd/system/vmtest.service.d"
        printf '[Unit]\nAfter=\nAfter=basic.target\n' > "$root/etc/systemd/system/vmtest.service.d/hook.conf"
    fi
    chroot "$root" systemctl enable --quiet systemd-networkd.service vmtest-user-data.service \
        vmtest.service
    mkfs.ext4 -q -F -L root -d "$root" "$work/$role/root.img" 3G
    rm -rf "$root"
}
for role in "${roles[@]}"; do image "$role"; done
say "images ready after $((SECONDS - started)) s"
# A cluster's munge key exists only in its secret, and on the nodes once they boot.
munge_check="PASS the munge key is in no image: in none of the head, compute and base images"
while read -r munge_key; do
    if grep -qaF "$munge_key" "$base/rootfs.tar.zst" "$work"/*/root.img; then
        munge_check="FAIL the munge key is in no image: found in an image"
    fi
done < <("$python" -c 'import json, sys
print("\n".join(json.load(open(sys.argv[1]))["munge_keys"]))' "$work/state/state.json")

# 4. Boot both. Fresh sparse disks each run: old RAID superblocks would be assembled.
boot() {
    local role="$1" dir="$work/$1" drives=()
    for disk in scratch1 scratch2 shared; do truncate -s 1G "$dir/$disk.img"; done
    truncate -s 64M "$dir/results.img"
    for disk in root scratch1 scratch2 shared results; do
        [ "$disk" = shared ] && [ -z "$(state volume_serial "$role")" ] && continue
        drives+=(-drive "file=$dir/$disk.img,format=raw,if=none,id=$disk")
        if [ "$disk" = shared ]; then
            drives+=(-device "nvme,drive=$disk,serial=$(state volume_serial "$role")")
        else
            drives+=(-device "virtio-blk-pci,drive=$disk,serial=$disk")
        fi
    done
    timeout 1200 ip netns exec "$netns" \
        qemu-system-x86_64 -accel tcg,thread=multi -cpu max -machine q35 -smp 2 -m 1536 \
        -nodefaults -display none -monitor none -no-reboot -device virtio-rng-pci \
        -netdev "tap,id=vpc,ifname=${tap[$role]},script=no,downscript=no" \
        -device "virtio-net-pci,netdev=vpc,mac=${mac[$role]}" \
        -serial "file:$dir/serial.log" \
        -kernel "$base/vmlinuz" -initrd "$base/initrd.img" \
        -append "root=LABEL=root rw console=ttyS0 systemd.unit=vmtest.target panic=1 quiet" \
        "${drives[@]}" || { tail -50 "$dir/serial.log"; say "$role: QEMU failed"; return 1; }
}
booted=$SECONDS
declare -A vm
for role in "${roles[@]}"; do boot "$role" & vm[$role]=$!; done
failed=0
for role in "${roles[@]}"; do wait "${vm[$role]}" || failed=1; done
say "the VMs ran for $((SECONDS - booted)) s"

# 5. The results, the VMs' and the stack's.
mkdir -p "$repo/.vmtest"
for role in "${roles[@]}"; do
    mkdir -p "$work/results/$role"
    if ! tar -xf "$work/$role/results.img" -C "$work/results/$role" 2>/dev/null; then
        tail -80 "$work/$role/serial.log"
        say "no results came out of the $role VM"
        failed=1
    fi
    cp "$work/$role/serial.log" "$repo/.vmtest/$role-serial.log"
    for file in "$work/results/$role/"*; do
        [ -e "$file" ] && cp "$file" "$repo/.vmtest/$role-$(basename "$file")"
    done
done
kill "$cloud_pid" 2>/dev/null; wait "$cloud_pid" 2>/dev/null || true
cloud_pid=""
cp "$work/state/"*.log "$repo/.vmtest/"
checks="$repo/.vmtest/checks.txt"
cat "$work/results/head/checks.txt" "$work/results/hook/checks.txt" > "$checks" 2>/dev/null || true
echo "$munge_check" >> "$checks"
PYTHONPATH="$repo" "$python" -m tests.vm.cloud check "$work/state" >> "$checks" || true
cat "$checks"
[ -f "$work/results/compute/bootstrap.txt" ] && cat "$work/results/compute/bootstrap.txt"
# The guests' checks, the munge key's and the host's two.
expected=$(( $(grep -cE '^\s*check "' "$here/guest/usr/local/sbin/vmtest-checks") + 3 ))
passed="$(grep -c '^PASS ' "$checks" || true)"
say "$passed of $expected checks passed in $((SECONDS - started)) s (logs in .vmtest/)"
[ "$failed" -eq 0 ] && [ "$passed" -eq "$expected" ]
