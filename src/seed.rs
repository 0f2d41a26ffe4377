//! A node's NoCloud seed (`user-data`, `meta-data`), rendered from `templates/` and the
//! plan. Server and agent differ by data, not by copied templates.
use crate::plan::{NodePlan, Plan};
use crate::secrets::Secrets;
use anyhow::Result;

/// One file of a seed, named as it sits at the root of the CIDATA volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedFile {
    pub name: String,
    pub contents: Vec<u8>,
}

/// Everything cloud-init reads off CIDATA for one node.
#[derive(Debug, Clone)]
pub struct Seed {
    pub node: String,
    pub files: Vec<SeedFile>,
}

impl Seed {
    pub fn file(&self, name: &str) -> Option<&SeedFile> {
        self.files.iter().find(|f| f.name == name)
    }
}

/// Renders `node`'s seed. Pure: same plan and secrets, same bytes.
pub fn render(plan: &Plan, secrets: &Secrets, node: &NodePlan) -> Result<Seed> {
    let _ = (plan, secrets);
    anyhow::bail!("seed rendering for {} is not written yet", node.hostname)
}
