# The head-node and compute AMIs: Debian 12 with cfncluster-node installed by install.sh.
#
#   make dist && packer build -var 'ami_regions=["eu-west-1"]' packer/cfncluster-node.pkr.hcl
#
# Run from the repository's root: the images are baked from dist/ (`make dist`).

variable "region" {
  type        = string
  default     = "us-east-1"
  description = "where the images are built"
}

variable "ami_regions" {
  type        = list(string)
  default     = []
  description = "other regions the images are copied to"
}

variable "instance_type" {
  type    = string
  default = "c5.large"
}

variable "source_ami_name" {
  type        = string
  default     = "debian-12-amd64-*"
  description = "the newest AMI of this name (and owner) is the base"
}

variable "source_ami_owner" {
  type        = string
  default     = "136693071363"
  description = "Debian's AWS account"
}

variable "version" {
  type    = string
  default = "0.1.0"
}

locals {
  stamp = formatdate("YYYYMMDD-hhmm", timestamp())
}

source "amazon-ebs" "debian" {
  region        = var.region
  ami_regions   = var.ami_regions
  instance_type = var.instance_type
  ssh_username  = "admin"

  source_ami_filter {
    filters = {
      name                = var.source_ami_name
      architecture        = "x86_64"
      virtualization-type = "hvm"
      root-device-type    = "ebs"
    }
    owners      = [var.source_ami_owner]
    most_recent = true
  }

  tags = {
    "cfncluster-node:version" = var.version
  }
}

build {
  source "source.amazon-ebs.debian" {
    name     = "head-node"
    ami_name = "cfncluster-node-head-${var.version}-${local.stamp}"
  }

  source "source.amazon-ebs.debian" {
    name     = "compute"
    ami_name = "cfncluster-node-compute-${var.version}-${local.stamp}"
  }

  provisioner "file" {
    source      = "dist/"
    destination = "/tmp/cfncluster-node"
  }

  provisioner "shell" {
    only   = ["amazon-ebs.head-node"]
    inline = ["sudo bash /tmp/cfncluster-node/install.sh --role head --from /tmp/cfncluster-node"]
  }

  provisioner "shell" {
    only   = ["amazon-ebs.compute"]
    inline = ["sudo bash /tmp/cfncluster-node/install.sh --role compute --from /tmp/cfncluster-node"]
  }
}
