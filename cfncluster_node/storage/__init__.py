"""Head-node storage: look at the block devices, plan what is missing, then apply it.

The planner is pure and cautious: a device that holds a filesystem, a partition table or
a RAID superblock is never formatted. Running setup twice plans nothing the second time.
"""


class StorageError(Exception):
    """Storage cannot be set up; the message names the device and what to check."""
