# Variables of the minimal Debian image (a companion file: kiln loads every *.pkr.hcl of the directory).

variable "suite" {
  type    = string
  default = "bookworm"
}

variable "mirror" {
  type    = string
  default = "http://deb.debian.org/debian"
}

variable "volume_size" {
  type    = number
  default = 4
}

variable "architecture" {
  type    = string
  default = "x86_64"
  validation {
    condition     = contains(["x86_64", "arm64"], var.architecture)
    error_message = "The architecture must be x86_64 or arm64."
  }
}

locals {
  deb_arch    = lookup({ x86_64 = "amd64", arm64 = "arm64" }, var.architecture, "amd64")
  grub_target = lookup({ x86_64 = "x86_64-efi", arm64 = "arm64-efi" }, var.architecture, "x86_64-efi")
  efi_binary  = lookup({ x86_64 = "BOOTX64.EFI", arm64 = "BOOTAA64.EFI" }, var.architecture, "BOOTX64.EFI")
}
