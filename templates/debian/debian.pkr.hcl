# A minimal bootable Debian image from scratch with debootstrap (needs the network, `debootstrap`,
# `mkfs.vfat` and `mcopy`): GPT with an EFI system partition, the cloud kernel, a standalone GRUB
# at the removable-media path (no NVRAM entry needed, as on EC2) that finds the root file system by
# its label, a serial console, DHCP on every Ethernet interface. The EFI partition is written with
# mtools, so the builder's kernel needs no FAT support. `kiln build --backend loop --boot-test templates/debian` proves it boots
# under UEFI (OVMF) before the AMI is registered.

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
      "apt-get install -y -q --no-install-recommends linux-image-cloud-${local.deb_arch} systemd-sysv udev openssh-server grub-efi-${local.deb_arch}-bin grub2-common curl",
      "printf 'LABEL=root / ext4 defaults 0 1\\nLABEL=ESP /boot/efi vfat umask=0077,nofail 0 2\\n' > /etc/fstab",
      "echo debian > /etc/hostname",
      "printf '[Match]\\nName=en* eth*\\n\\n[Network]\\nDHCP=yes\\n' > /etc/systemd/network/80-dhcp.network",
      "systemctl enable systemd-networkd",
      "mkdir -p /etc/default/grub.d",
      "printf 'GRUB_DEVICE=LABEL=root\\nGRUB_DISABLE_LINUX_UUID=true\\nGRUB_TIMEOUT=1\\nGRUB_CMDLINE_LINUX=\"console=tty0 console=ttyS0,115200\"\\nGRUB_TERMINAL=\"console serial\"\\n' > /etc/default/grub.d/kiln.cfg",
      "mkdir -p /boot/grub",
      "update-grub",
      "printf 'insmod part_gpt\\ninsmod ext2\\nsearch --no-floppy --label root --set=root\\nconfigfile ($root)/boot/grub/grub.cfg\\n' > /tmp/grub-embed.cfg",
      "mkdir -p /boot/efi/EFI/BOOT",
      "grub-mkstandalone -O ${local.grub_target} -o /boot/efi/EFI/BOOT/${local.efi_binary} 'boot/grub/grub.cfg=/tmp/grub-embed.cfg'",
      "rm /tmp/grub-embed.cfg",
      # The instance's SSH key for root from the instance metadata service with an IMDSv2 token,
      # as cloud-init does on larger images: imds_support = "v2.0" registers the AMI for
      # IMDSv2-only instances (kiln's image lint, check imds-client, wants such a reader).
      "cat > /usr/local/sbin/imds-ssh-key <<'SCRIPT'",
      "#!/bin/sh",
      "set -eu",
      "imds=http://169.254.169.254/latest",
      "token=$(curl -fsS -m 5 --retry 5 --retry-connrefused -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' $imds/api/token)",
      "key=$(curl -fsS -m 5 -H \"X-aws-ec2-metadata-token: $token\" $imds/meta-data/public-keys/0/openssh-key)",
      "install -d -m 700 /root/.ssh",
      "echo \"$key\" > /root/.ssh/authorized_keys",
      "chmod 600 /root/.ssh/authorized_keys",
      "SCRIPT",
      "chmod 755 /usr/local/sbin/imds-ssh-key",
      "printf '[Unit]\\nDescription=SSH key from the instance metadata (IMDSv2)\\nAfter=systemd-networkd.service\\n\\n[Service]\\nType=oneshot\\nExecStart=/usr/local/sbin/imds-ssh-key\\n\\n[Install]\\nWantedBy=multi-user.target\\n' > /etc/systemd/system/imds-ssh-key.service",
      "systemctl enable imds-ssh-key",
      "apt-get clean",
    ]
  }

  # The EFI system partition, written from the host without mounting it.
  provisioner "shell-local" {
    inline = [
      "mmd -i {{.Device}}1 ::/EFI ::/EFI/BOOT",
      "mcopy -i {{.Device}}1 {{.MountPath}}/boot/efi/EFI/BOOT/${local.efi_binary} ::/EFI/BOOT/",
    ]
  }
}
