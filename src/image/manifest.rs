//! The build record beside each image: every input's SHA-256, so a stick can be traced
//! back to exactly what went into it (what the seed kept in OpenTofu's state).
use crate::artifacts::Fetched;
use crate::plan::{NodePlan, Plan};
use crate::seed::Seed;
use serde::Serialize;
use std::path::PathBuf;

#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    /// What the image says about itself (also on its CIDATA as chocoimg.json).
    #[serde(flatten)]
    pub identity: super::Identity,
    /// UTC, RFC 3339.
    pub built_at: String,
    pub image: Input,
    pub profile: Input,
    pub iso: Input,
    pub payload: Vec<Named>,
    pub seed: Vec<Named>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Input {
    pub path: PathBuf,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Named {
    /// The file's name on the CIDATA volume.
    pub name: String,
    pub sha256: String,
}

impl Manifest {
    pub fn new(
        plan: &Plan,
        node: &NodePlan,
        seed: &Seed,
        fetched: &Fetched,
        built: &super::Built,
    ) -> Manifest {
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        Manifest {
            identity: super::Identity::new(plan, node),
            built_at: now,
            image: Input {
                path: built.image.clone(),
                sha256: built.sha256.clone(),
            },
            profile: Input {
                path: plan.profile_path.clone(),
                sha256: plan.profile_sha256.clone(),
            },
            iso: Input {
                path: fetched.iso.clone(),
                sha256: fetched.iso_sha256.clone(),
            },
            payload: fetched
                .payload
                .iter()
                .map(|p| Named {
                    name: p.name.clone(),
                    sha256: p.sha256.clone(),
                })
                .collect(),
            seed: seed
                .files
                .iter()
                .map(|f| Named {
                    name: f.name.clone(),
                    sha256: crate::fsutil::sha256_hex(&f.contents),
                })
                .collect(),
        }
    }
}
