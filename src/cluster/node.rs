//! The node side of discovery, rendered into each node's seed: Avahi's configuration,
//! master1's announce service, nodo1's join service and timer.
use crate::plan::{NodePlan, Plan};
use crate::secrets::Secrets;

/// A file the installed system gets on first boot (cloud-init `write_files`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFile {
    pub path: String,
    /// Octal permissions as cloud-init takes them, e.g. "0644".
    pub permissions: String,
    pub content: String,
}

/// What discovery adds to a node's first boot.
#[derive(Debug, Clone, Default)]
pub struct NodeSetup {
    pub files: Vec<NodeFile>,
    /// Shell commands run once on first boot, after K3s is installed (in order).
    pub first_boot: Vec<String>,
}

/// The discovery pieces for `node`, by role.
pub fn setup(plan: &Plan, secrets: &Secrets, node: &NodePlan) -> anyhow::Result<NodeSetup> {
    let _ = (plan, secrets, node);
    Ok(NodeSetup::default())
}
