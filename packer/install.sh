#!/bin/bash
# Installs cfncluster-node on a machine image. Packer runs it on the instance it bakes
# (packer/cfncluster-node.pkr.hcl); `make vmtest` runs it in the test VM's root
# filesystem, so the image under test is installed exactly as the AMIs are.
#
#   install.sh --role head|compute --from DIR [--no-packages]
#   install.sh --role head|compute --list-packages
#   install.sh --role head|compute --list-debconf
#
# DIR is what `make dist` builds: wheels/ (the project and every dependency, so pip needs
# no index), systemd/ and this script. --no-packages: the Debian packages are already in.
# Running it again upgrades in place.
set -euo pipefail

role="" from="" packages=yes list=""
while [ $# -gt 0 ]; do
    case "$1" in
        --role) role="$2"; shift 2 ;;
        --from) from="$2"; shift 2 ;;
        --no-packages) packages=no; shift ;;
        --list-packages) list=packages; shift ;;
        --list-debconf) list=debconf; shift ;;
        *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

prefix=/opt/cfncluster-node
case "$role" in
    # The head node runs slurmctld or SGE's qmaster, exports the shared volume and builds
    # the scratch RAID; on every node, iptables keeps the users' jobs from the metadata
    # service.
    head) unit=cfncluster-node.service
          debs="python3 python3-venv slurmctld slurm-client munge gridengine-master gridengine-client mdadm e2fsprogs xfsprogs nfs-kernel-server nvme-cli iptables" ;;
    # A compute node mounts the shared volumes and builds its own scratch RAID; slurmd
    # puts jobs in cgroups through systemd's D-Bus API.
    compute) unit=cfncluster-compute.service
          debs="python3 python3-venv slurmd slurm-client munge nfs-common mdadm e2fsprogs xfsprogs nvme-cli dbus iptables" ;;
    *) echo "install.sh: --role head or --role compute" >&2; exit 2 ;;
esac
# The answers the packages' questions get (debconf-set-selections lines): no SGE cell
# for the baking host's name, which may not even resolve there; the head node's
# bootstrap makes the cell at boot.
debconf() {
    for package in gridengine-common gridengine-client gridengine-master; do
        echo "$package shared/gridengineconfig boolean false"
    done
}
case "$list" in
    packages) echo "$debs"; exit 0 ;;
    debconf) debconf; exit 0 ;;
esac
[ -d "$from/wheels" ] || { echo "install.sh: $from/wheels not found: run make dist" >&2; exit 2; }

if [ "$packages" = yes ]; then
    debconf | debconf-set-selections
    # Nothing starts while the image is baked: each daemon starts at boot, configured by
    # the node's bootstrap for its cluster.
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $debs
fi
if [ "$role" = head ]; then
    # Started by the bootstrap of an SGE cluster only, and never before it: a qmaster at
    # boot would serve a cell that is not this cluster's yet.
    systemctl disable --quiet gridengine-master 2>/dev/null || true
fi

python3 -m venv "$prefix"
"$prefix/bin/pip" install --quiet --no-index --find-links "$from/wheels" --upgrade cfncluster-node
install -m 0644 "$from/systemd/$unit" /etc/systemd/system/
mkdir -p /etc/cfncluster
# Enabled, but it waits for its config: the stack's user data writes it, then starts it.
systemctl enable "$unit"
echo "install.sh: cfncluster-node $("$prefix/bin/cfncluster-node" --version) installed as $unit"
