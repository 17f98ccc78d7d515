"""cfncluster-node: the daemons of an elastic HPC cluster's head node on AWS."""

__version__ = "0.1.0"
