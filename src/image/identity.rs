//! What an image says about itself.
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
