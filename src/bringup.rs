//! The bring-up stages a node announces over mDNS: one definition shared by the node
//! scripts' templates (`templates/node/stage.sh`) and the laptop's `chocoimg watch`
//! (`cluster::watch`). The proof over them is in [`crate::proof::StageClaim`].
//!
//! On the wire: DNS-SD type `_chocoimg-node._tcp`, instance = the node's hostname, port 0
//! (nothing listens: the record is the message), TXT `txtvers=1`, `cluster`, `node`,
//! `stage`, `since` (Unix seconds the node entered the stage), `reason` (only with
//! `failed`), `proof`.
use crate::profile::Role;
use serde::Serialize;

/// The DNS-SD service type every node publishes its stage under.
pub const SERVICE_TYPE: &str = "_chocoimg-node._tcp.local.";
/// The longest reason a `failed` stage carries (one TXT string holds 255 bytes).
pub const MAX_REASON: usize = 100;

/// Where a node is in its bring-up, in the order a node goes through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// The installed system's first boot: cloud-init is setting the node up.
    FirstBoot,
    /// K3s's install script is running (from the stick's verified binary).
    InstallingK3s,
    /// Server: K3s is installed (HA: started, by cluster-init or on its etcd data), its API
    /// does not yet say this node is Ready.
    StartingK3s,
    /// Agent: looking for a verified master1 on the LAN. HA server: no verified member
    /// found yet, and not the one to start the cluster (or still in its browse window).
    WaitingForServer,
    /// Agent: the join is written and k3s-agent started; not Ready yet. HA server: joining
    /// a member (one learner at a time), not Ready yet.
    Joining,
    /// Server: K3s runs and its API says this node is Ready.
    K3sRunning,
    /// Agent: master1's API says this node is Ready.
    Joined,
    /// Something the node cannot get past by itself; the reason says what.
    Failed,
}

impl Stage {
    pub const ALL: [Stage; 8] = [
        Stage::FirstBoot,
        Stage::InstallingK3s,
        Stage::StartingK3s,
        Stage::WaitingForServer,
        Stage::Joining,
        Stage::K3sRunning,
        Stage::Joined,
        Stage::Failed,
    ];

    /// The name on the wire and in the node scripts.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::FirstBoot => "first-boot",
            Stage::InstallingK3s => "installing-k3s",
            Stage::StartingK3s => "starting-k3s",
            Stage::WaitingForServer => "waiting-for-server",
            Stage::Joining => "joining",
            Stage::K3sRunning => "k3s-running",
            Stage::Joined => "joined",
            Stage::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// The stage in which a node of `role` is up: in the cluster, and Ready.
    pub fn up_for(role: Role) -> Stage {
        match role {
            Role::Server => Stage::K3sRunning,
            Role::Agent => Stage::Joined,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_names_round_trip() {
        for s in Stage::ALL {
            assert_eq!(Stage::parse(s.as_str()), Some(s));
        }
        let mut sorted = Stage::ALL;
        sorted.sort();
        assert_eq!(sorted, Stage::ALL, "ALL lists the stages in their order");
    }
}
