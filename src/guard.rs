//! The reinstall guard: a stick left in never wipes an installed node. The install
//! leaves a marker on the node's root filesystem; the stick's GRUB menu looks for it
//! before anything starts (and then makes "stop" its first entry), and the installer's
//! first early-command looks again before any disk is touched. Only the menu's
//! reinstall entry, chosen at the keyboard, puts the kernel argument that lets it pass.
use anyhow::Result;

/// The marker, on the installed root filesystem: a GRUB environment block (GRUB's
/// `load_env` reads it without running anything from the disk) naming the node.
pub const MARKER: &str = "/etc/chocoimg/node.env";
/// The kernel argument of the reinstall entry; without it the installer stops.
pub const REINSTALL_ARG: &str = "chocoimg.reinstall";

/// The title of the menu entry that reinstalls `node`.
pub fn reinstall_title(node: &str) -> String {
    format!("Reinstall {node} - ERASES the disk")
}

/// The late-commands that leave the marker on the installed system. `grub-editenv`
/// (the installed system always has it) writes the block GRUB reads. Names are RFC 1123
/// labels (the plan checks them): nothing here needs quoting.
pub fn late_commands(cluster: &str, node: &str, role: &str) -> Vec<String> {
    let dir = MARKER.rsplit_once('/').map_or("/", |(d, _)| d);
    vec![
        format!("mkdir -p /target{dir}"),
        format!(
            "curtin in-target --target=/target -- grub-editenv {MARKER} set \
             chocoimg_cluster={cluster} chocoimg_node={node} chocoimg_role={role}"
        ),
    ]
}

/// The installer's guard, a shell script run as `sh -c` by subiquity (before storage).
pub fn early_command(node: &str) -> Result<String> {
    crate::templates::render(
        "installer/guard.sh",
        minijinja::context! {
            marker => MARKER,
            reinstall_arg => REINSTALL_ARG,
            reinstall_title => reinstall_title(node),
            node => node,
        },
    )
}
