//! The announcement proof: one definition shared by the laptop's checks and the node
//! scripts' templates. master1 publishes `ca` (hash of `/cacerts`) and
//! `proof = HMAC-SHA256(key = agent_token, msg = "chocoimg/v1|<cluster>|<ca>")`; anyone
//! holding the agent token (nodo1, the laptop) can recompute it, nobody else can forge it.
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The fixed prefix of the proof message; a new scheme gets a new prefix.
pub const PROOF_VERSION: &str = "chocoimg/v1";

/// Hex SHA-256 of the exact bytes `https://<server>:6443/cacerts` returned.
pub fn ca_hash(cacerts: &[u8]) -> String {
    hex::encode(Sha256::digest(cacerts))
}

/// The message that is signed, exactly as the node scripts build it with `printf '%s'`.
pub fn proof_message(cluster: &str, ca_hex: &str) -> String {
    format!("{PROOF_VERSION}|{cluster}|{ca_hex}")
}

/// Hex HMAC-SHA256 keyed with the agent token's ASCII bytes (as `openssl dgst -mac HMAC
/// -macopt key:<token>` does).
pub fn proof(agent_token: &str, cluster: &str, ca_hex: &str) -> String {
    hex::encode(
        mac(agent_token, &proof_message(cluster, ca_hex))
            .finalize()
            .into_bytes(),
    )
}

/// Checks a published proof in constant time.
pub fn verify(agent_token: &str, cluster: &str, ca_hex: &str, published: &str) -> bool {
    check(agent_token, &proof_message(cluster, ca_hex), published)
}

/// The server proof's message: the same claim as the announcement proof's, under its own
/// prefix, so neither proof ever stands for the other.
pub fn server_proof_message(cluster: &str, ca_hex: &str) -> String {
    format!("{PROOF_VERSION}/server|{cluster}|{ca_hex}")
}

/// The server proof an HA server's announcement carries beside `proof` (TXT `sproof`):
/// hex HMAC-SHA256 keyed with the SERVER token. A joining server hands the server token
/// to the member it joins, so it joins only a member that proves it holds that token
/// already; the agent token, on every stick, cannot make this proof.
pub fn server_proof(server_token: &str, cluster: &str, ca_hex: &str) -> String {
    hex::encode(
        mac(server_token, &server_proof_message(cluster, ca_hex))
            .finalize()
            .into_bytes(),
    )
}

/// Checks a published server proof in constant time.
pub fn verify_server_proof(
    server_token: &str,
    cluster: &str,
    ca_hex: &str,
    published: &str,
) -> bool {
    check(
        server_token,
        &server_proof_message(cluster, ca_hex),
        published,
    )
}

/// What a node's bring-up stage announcement claims, and its proof signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageClaim<'a> {
    pub cluster: &'a str,
    pub node: &'a str,
    pub stage: &'a str,
    /// When the node entered the stage, Unix seconds.
    pub since: u64,
    /// Empty unless the stage is `failed`.
    pub reason: &'a str,
}

impl StageClaim<'_> {
    /// The signed message: binding the node, stage, reason and time means a captured
    /// announcement cannot be moved to another node or stage, and an older one replayed
    /// is told by its time. Its own prefix keeps it apart from the server proof's.
    pub fn message(&self) -> String {
        let StageClaim {
            cluster,
            node,
            stage,
            since,
            reason,
        } = self;
        format!("{PROOF_VERSION}/stage|{cluster}|{node}|{stage}|{since}|{reason}")
    }

    /// Hex HMAC-SHA256 of the message, keyed with the agent token (every node has it).
    pub fn proof(&self, agent_token: &str) -> String {
        hex::encode(mac(agent_token, &self.message()).finalize().into_bytes())
    }

    /// Checks a published stage proof in constant time.
    pub fn verify(&self, agent_token: &str, published: &str) -> bool {
        check(agent_token, &self.message(), published)
    }
}

fn mac(key: &str, message: &str) -> Hmac<Sha256> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(message.as_bytes());
    mac
}

fn check(key: &str, message: &str, published: &str) -> bool {
    let Ok(bytes) = hex::decode(published.trim()) else {
        return false;
    };
    mac(key, message).verify_slice(&bytes).is_ok()
}

/// An agent's K3s node password (`/etc/rancher/node/password`), the same at every
/// build: a re-flashed agent is still the node master1 knows. K3s makes a random one on
/// first start otherwise, and refuses a reinstalled node under the same name until its
/// `<node>.node-password.k3s` secret is deleted by hand. Keyed with the server token,
/// which agents never get, so no agent can compute another's.
pub fn node_password(server_token: &str, cluster: &str, node: &str) -> String {
    let message = format!("{PROOF_VERSION}/node-password|{cluster}|{node}");
    hex::encode(&mac(server_token, &message).finalize().into_bytes()[..16])
}

/// The secure agent join token: the agent refuses a server whose CA hash differs.
pub fn agent_join_token(ca_hex: &str, agent_token: &str) -> String {
    format!("K10{ca_hex}::node:{agent_token}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_passwords_are_stable_and_per_node() {
        let a = node_password("server-token", "c", "nodo1");
        assert_eq!(a, node_password("server-token", "c", "nodo1"));
        assert_eq!(a.len(), 32, "like the 16 random bytes K3s would pick");
        assert_ne!(a, node_password("server-token", "c", "nodo2"));
        assert_ne!(a, node_password("other-token", "c", "nodo1"));
    }

    #[test]
    fn proof_matches_openssl_reference() {
        // printf '%s' 'chocoimg/v1|c|ab' | openssl dgst -sha256 -mac HMAC -macopt key:k
        let p = proof("k", "c", "ab");
        assert_eq!(
            p,
            "322770ebf4d09d42f497c6cfb4b70df7bba2fbe71f8cefed378ecec939bde302"
        );
        assert!(verify("k", "c", "ab", &p));
        assert!(!verify("k2", "c", "ab", &p));
        assert!(!verify("k", "other", "ab", &p));
        assert!(!verify("k", "c", "ab", "zz"));
    }

    #[test]
    fn server_proof_matches_openssl_reference_and_is_not_the_agent_proof() {
        // printf '%s' 'chocoimg/v1/server|c|ab' | openssl dgst -sha256 -mac HMAC -macopt key:k
        let p = server_proof("k", "c", "ab");
        assert_eq!(
            p,
            "a7a9d0b14848024c4b163119da24b86d9df644a149b3a3a9e52eea429b90ce8d"
        );
        assert!(verify_server_proof("k", "c", "ab", &p));
        assert!(!verify_server_proof("k2", "c", "ab", &p));
        assert!(!verify_server_proof("k", "c", "cd", &p));
        // The agent proof, even with the same key, never passes for a server proof.
        assert_ne!(p, proof("k", "c", "ab"));
        assert!(!verify_server_proof("k", "c", "ab", &proof("k", "c", "ab")));
    }

    #[test]
    fn stage_proofs_bind_node_stage_reason_and_time() {
        // printf '%s' 'chocoimg/v1/stage|c|nodo1|joined|1700000000|' |
        //   openssl dgst -sha256 -mac HMAC -macopt key:k
        let claim = StageClaim {
            cluster: "c",
            node: "nodo1",
            stage: "joined",
            since: 1_700_000_000,
            reason: "",
        };
        let p = claim.proof("k");
        assert_eq!(
            p,
            "8e1d5fc9e5b1ad46a918dc0f49026d64da74f0338c6358cde5071dce0f7afdd8"
        );
        assert!(claim.verify("k", &p));
        assert!(!claim.verify("k2", &p));
        for other in [
            StageClaim {
                node: "master1",
                ..claim
            },
            StageClaim {
                stage: "joining",
                ..claim
            },
            StageClaim {
                since: 1_700_000_001,
                ..claim
            },
            StageClaim {
                reason: "x",
                ..claim
            },
        ] {
            assert!(!other.verify("k", &p), "{other:?}");
        }
        // Never the server proof's message: another prefix.
        assert_ne!(p, proof("k", "c", "nodo1"));
    }
}
