//! What an image says about itself.
use crate::plan::{NodePlan, Plan};
use serde::{Deserialize, Serialize};

/// What an image says about itself: `/chocoimg.json` on CIDATA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub cluster: String,
    pub node: String,
    /// `server` or `agent`.
    pub role: String,
    pub k3s_version: String,
    pub ubuntu_release: String,
    pub chocoimg_version: String,
}

impl Identity {
    /// What `node`'s image says about itself.
    pub fn new(plan: &Plan, node: &NodePlan) -> Identity {
        Identity {
            cluster: plan.cluster.clone(),
            node: node.hostname.clone(),
            role: node.role.to_string(),
            k3s_version: plan.k3s.version.clone(),
            ubuntu_release: plan.ubuntu.release.clone(),
            chocoimg_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}
