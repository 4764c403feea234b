# A minimal Debian image from scratch with debootstrap (needs the network and `debootstrap`).

source "amazon-chroot" "debian" {
  from_scratch            = true
  ami_name                = "kiln-debian-${var.suite}-{{timestamp}}"
  ami_description         = "Minimal Debian ${var.suite} (${local.deb_arch}), built by kiln"
  ami_virtualization_type = "hvm"
  ami_architecture        = var.architecture
  ena_support             = true
  sriov_support           = true
  boot_mode               = "uefi-preferred"
  imds_support            = "v2.0"
  root_device_name        = "/dev/xvda"
  root_volume_size        = var.volume_size

  ami_block_device_mappings {
    device_name           = "/dev/xvda"
    volume_type           = "gp3"
    volume_size           = var.volume_size
    delete_on_termination = true
  }

  pre_mount_commands = [
    "parted -s {{.Device}} mklabel gpt mkpart esp fat32 1MiB 129MiB set 1 esp on mkpart root ext4 129MiB 100%",
    "mkfs.vfat -F 32 -n ESP {{.Device}}1",
    "mkfs.ext4 -q -L root {{.Device}}2",
  ]
  mount_partition = "2"

  post_mount_commands = [
    "debootstrap --variant=minbase --arch=${local.deb_arch} ${var.suite} {{.MountPath}} ${var.mirror}",
  ]

  tags = {
    Name  = "kiln-debian-${var.suite}"
    Suite = var.suite
  }
}

build {
  name    = "debian"
  sources = ["source.amazon-chroot.debian"]

  provisioner "shell" {
    environment_vars = ["DEBIAN_FRONTEND=noninteractive"]
    inline = [
      "apt-get update -q",
      "apt-get install -y -q --no-install-recommends linux-image-cloud-${local.deb_arch} systemd-sysv openssh-server",
      "echo 'LABEL=root / ext4 defaults 0 1' > /etc/fstab",
      "apt-get clean",
    ]
  }
}
