"""The wire contract between the head node, the compute nodes and the stack: pure values.

What two sides must agree on lives here once, so the operator's template and the head
node's daemons can never drift apart: the events on the cluster queue, the instance
table's keys, and the metric the scale-up alarms read. ``docs/protocol.md`` says the same
in prose, with the lineage's compatibility notes.
"""

from __future__ import annotations

from typing import Any, Final

# The queue (docs/protocol.md, "The cluster queue").
LAUNCH_EVENT: Final = "autoscaling:EC2_INSTANCE_LAUNCH"
TERMINATE_EVENT: Final = "autoscaling:EC2_INSTANCE_TERMINATE"
LAUNCH_ERROR_EVENT: Final = "autoscaling:EC2_INSTANCE_LAUNCH_ERROR"
TERMINATE_ERROR_EVENT: Final = "autoscaling:EC2_INSTANCE_TERMINATE_ERROR"
TEST_EVENT: Final = "autoscaling:TEST_NOTIFICATION"
READY_EVENT: Final = "cfncluster:COMPUTE_READY"
# What ParallelCluster 2.x compute nodes send instead of READY_EVENT.
PARALLELCLUSTER_READY_EVENT: Final = "parallelcluster:COMPUTE_READY"
# This project's own: a compute node's clean shutdown. The lineage never sent it.
LEAVE_EVENT: Final = "cfncluster:COMPUTE_LEAVE"
# What SQS reports as the sender of every message SNS delivers (the SNS service's own
# principal): Auto Scaling's events come from no one else.
SNS_SENDER_ID: Final = "AIDAIT2UOQQY3AUEKVGXU"
# The redrive policy: receives before SQS moves a message to the dead-letter queue. With
# retry_delay's backoff (5 s doubling to retry_backoff_max, 300 s) that is about two hours
# of a failing table or scheduler: an outage is waited out, never dead-lettered.
MAX_RECEIVES: Final = 30


def retry_delay(receive_count: int, cap: int) -> int:
    """Seconds a message that failed its ``receive_count``-th try stays invisible."""
    return int(min(cap, 5 * 2 ** min(receive_count - 1, 20)))


# The ports the nodes talk on (docs/protocol.md, "Ports"): the security groups open these,
# and no others, between the head node and the compute nodes.
SSH_PORT: Final = 22
NFS_PORT: Final = 2049  # NFSv4 needs no other (no portmapper, no mountd)
SLURMCTLD_PORT: Final = 6817
SLURMD_PORT: Final = 6818
# Where srun listens for its steps' I/O (SrunPortRange): on the head node, for jobs
# started there.
SRUN_PORTS: Final = (60001, 63000)
SGE_QMASTER_PORT: Final = 6444
SGE_EXECD_PORT: Final = 6445

# The instance table (docs/protocol.md, "The instance table").
TABLE_KEY: Final = "instanceId"
TABLE_TTL_ATTRIBUTE: Final = "expiresAt"

# The metric (docs/protocol.md, "The pending-work metric and the alarms").
METRIC_NAMESPACE: Final = "cfncluster"
PENDING_METRIC: Final = "pending"
METRIC_DIMENSION: Final = "Stack"


# The head node's node.toml (docs/protocol.md, "The head node's configuration"): the stack
# keeps it in an SSM parameter, and the user data tells the head node which one.
CONFIG_PARAMETER_ENV: Final = "CFNCLUSTER_CONFIG_PARAMETER"


def config_parameter(stack: str) -> str:
    """The SSM parameter that holds a stack's node.toml."""
    return f"/cfncluster/{stack}/node.toml"


def table_definition(name: str) -> dict[str, Any]:
    """CreateTable's parameters: the stack's template and the local playground build the
    table from these, so both have the key the daemons read."""
    return {
        "TableName": name,
        "AttributeDefinitions": [{"AttributeName": TABLE_KEY, "AttributeType": "S"}],
        "KeySchema": [{"AttributeName": TABLE_KEY, "KeyType": "HASH"}],
        "BillingMode": "PAY_PER_REQUEST",
    }
