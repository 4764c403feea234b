//! Fields of Packer's other Amazon builders (`amazon-ebs` and friends) that real templates carry
//! into `amazon-chroot` sources, each with what to do instead: an unknown-field error that says
//! why the chroot builder has no such thing.

/// Fields of amazon-ebs and other builders that users copy into chroot templates by mistake.
pub const FOREIGN_FIELDS: &[(&str, &str)] = &[
    (
        "instance_type",
        "amazon-chroot builds on the builder instance itself and launches no instance; remove it",
    ),
    (
        "ssh_username",
        "amazon-chroot has no communicator (provisioners run in a chroot); remove it",
    ),
    (
        "ssh_password",
        "amazon-chroot has no communicator; remove it",
    ),
    (
        "ssh_private_key_file",
        "amazon-chroot has no communicator; remove it",
    ),
    (
        "ssh_keypair_name",
        "amazon-chroot has no communicator; remove it",
    ),
    (
        "ssh_timeout",
        "amazon-chroot has no communicator; remove it",
    ),
    (
        "ssh_interface",
        "amazon-chroot has no communicator; remove it",
    ),
    (
        "winrm_username",
        "amazon-chroot has no communicator; remove it",
    ),
    (
        "communicator",
        "amazon-chroot has no communicator; remove it",
    ),
    (
        "subnet_id",
        "amazon-chroot launches no instance, so it has no subnet; remove it",
    ),
    ("vpc_id", "amazon-chroot launches no instance; remove it"),
    (
        "security_group_id",
        "amazon-chroot launches no instance; remove it",
    ),
    (
        "security_group_ids",
        "amazon-chroot launches no instance; remove it",
    ),
    (
        "associate_public_ip_address",
        "amazon-chroot launches no instance; remove it",
    ),
    (
        "iam_instance_profile",
        "amazon-chroot launches no instance; remove it",
    ),
    ("user_data", "amazon-chroot launches no instance; remove it"),
    (
        "user_data_file",
        "amazon-chroot launches no instance; remove it",
    ),
    (
        "spot_price",
        "amazon-chroot launches no instance; remove it",
    ),
    (
        "launch_block_device_mappings",
        "this is an amazon-ebs field; for chroot use ami_block_device_mappings with root_device_name",
    ),
    (
        "run_tags",
        "amazon-chroot launches no instance; use root_volume_tags for the build volume",
    ),
    (
        "shutdown_behavior",
        "amazon-chroot launches no instance; remove it",
    ),
];
