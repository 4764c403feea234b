# A tiny image built from nothing: a GPT disk with one ext4 partition holding a statically linked
# busybox. Needs no network, so the tests and the demo build it everywhere (Debian: busybox-static).

variable "image_name" {
  type        = string
  default     = "kiln-busybox"
  description = "Prefix of the AMI name."
}

variable "volume_size" {
  type    = number
  default = 1
  validation {
    condition     = var.volume_size >= 1
    error_message = "The volume must be at least 1 GiB."
  }
}

locals {
  stamp = formatdate("YYYYMMDD-hhmmss", timestamp())
}

source "amazon-chroot" "busybox" {
  from_scratch            = true
  ami_name                = "${var.image_name}-${local.stamp}"
  ami_description         = "busybox from scratch, built by kiln"
  ami_virtualization_type = "hvm"
  ena_support             = true
  root_device_name        = "/dev/xvda"
  root_volume_size        = var.volume_size
  copy_files              = []

  ami_block_device_mappings {
    device_name           = "/dev/xvda"
    volume_type           = "gp3"
    delete_on_termination = true
  }

  pre_mount_commands = [
    "sfdisk --quiet {{.Device}} <<'PARTS'\nlabel: gpt\n,,L\nPARTS",
    "mkfs.ext4 -q -L root {{.Device}}1",
  ]

  post_mount_commands = [
    "mkdir -p {{.MountPath}}/bin {{.MountPath}}/sbin {{.MountPath}}/etc {{.MountPath}}/proc {{.MountPath}}/sys {{.MountPath}}/dev {{.MountPath}}/tmp {{.MountPath}}/root {{.MountPath}}/usr/bin {{.MountPath}}/usr/sbin",
    "cp /bin/busybox {{.MountPath}}/bin/busybox",
    "chroot {{.MountPath}} /bin/busybox --install -s",
  ]

  chroot_mounts = [
    ["proc", "proc", "/proc"],
    ["sysfs", "sysfs", "/sys"],
    ["bind", "/dev", "/dev"],
  ]

  tags = {
    Name    = "${var.image_name}"
    Base    = "scratch"
    BuiltBy = "kiln"
  }
}

build {
  sources = ["source.amazon-chroot.busybox"]

  provisioner "shell" {
    inline = [
      "echo 'kiln busybox' > /etc/motd",
      "echo 'root:x:0:0:root:/root:/bin/sh' > /etc/passwd",
    ]
  }

  provisioner "file" {
    source      = "${path.root}/files/busybox/issue"
    destination = "/etc/issue"
  }

  post-processor "manifest" {
    output = "busybox-manifest.json"
  }
}
