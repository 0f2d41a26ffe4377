//! The one reading of a `_k3s._tcp` TXT record that the laptop and the nodes share. The
//! node's copy is `templates/node/announcement.py`; `tests/data/txt-cases.json` drives
//! both, so the same bytes get the same verdict on either side.
//!
//! RFC 6763 §6: each TXT string is `key=value` or a bare `key`; the key is everything
//! before the first `=`, compared case-insensitively (ASCII); a string with an empty key
//! is ignored. Where §6.4 lets a reader keep the first of two equal keys, here a key we
//! use that appears twice (in any case) makes the whole announcement malformed: two
//! readers picking different copies is how the laptop and nodo1 came to disagree.
use crate::proof;
use serde::Serialize;
use std::collections::BTreeMap;

/// The keys of a server's announcement. `sproof`, an HA server's server proof
/// (`proof::server_proof`), is checked by whoever holds the server token: HA servers
/// (announcement.py) and the laptop in `mode: ha`; agents read it by the rule (twice is
/// malformed) and cannot check it.
pub const SERVER_KEYS: &[&str] = &["txtvers", "cluster", "role", "k3s", "ca", "proof", "sproof"];

/// A TXT record read by the rule: the keys we use, each at most once, UTF-8.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txt {
    /// Lower-case key → value (`None`: a bare key, without `=`).
    values: BTreeMap<String, Option<String>>,
}

/// Why a TXT record is not one we can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("the key {0:?} appears more than once")]
    Duplicate(String),
    #[error("the value of {0:?} is not UTF-8")]
    NotUtf8(String),
}

impl Txt {
    /// Reads `strings` (each one TXT string, as on the wire), keeping the keys in `used`.
    pub fn parse<S: AsRef<[u8]>>(strings: &[S], used: &[&str]) -> Result<Txt, Malformed> {
        let mut values = BTreeMap::new();
        for s in strings {
            let s = s.as_ref();
            let (key, value) = match s.iter().position(|&b| b == b'=') {
                Some(i) => (&s[..i], Some(&s[i + 1..])),
                None => (s, None),
            };
            if key.is_empty() {
                continue;
            }
            let Some(&name) = used.iter().find(|u| u.as_bytes().eq_ignore_ascii_case(key)) else {
                continue;
            };
            let value = match value {
                Some(v) => Some(
                    String::from_utf8(v.to_vec())
                        .map_err(|_| Malformed::NotUtf8(name.to_string()))?,
                ),
                None => None,
            };
            if values.insert(name.to_string(), value).is_some() {
                return Err(Malformed::Duplicate(name.to_string()));
            }
        }
        Ok(Txt { values })
    }

    /// The value of a used key (lower case); `None` when absent or bare.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).and_then(|v| v.as_deref())
    }
}

/// What an announcement's TXT is worth to us.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Our cluster, and the proof checks with our agent token (in `mode: ha`, and the
    /// server proof with our server token).
    Verified,
    /// Another cluster's server (named by its `cluster=`), or no cluster at all.
    ForeignCluster,
    /// Claims our cluster but a proof does not check.
    Forged,
    /// Not readable by the rule (a key we use twice, a value that is not UTF-8).
    Malformed,
}

impl Verdict {
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Verified => "verified",
            Verdict::ForeignCluster => "foreign cluster",
            Verdict::Forged => "forged",
            Verdict::Malformed => "malformed",
        }
    }
}

/// The verdict on one server announcement, with what it announced and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judged {
    pub verdict: Verdict,
    /// Why it is not verified (empty when it is).
    pub why: String,
    pub cluster: Option<String>,
    pub k3s: Option<String>,
    pub ca: Option<String>,
}

/// True when `s` is 64 lower-case hex digits, as `sha256sum` and the proof print them.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The secrets an announcement is checked with.
#[derive(Debug, Clone, Copy)]
pub struct Keys<'a> {
    pub agent_token: &'a str,
    /// `mode: ha`: the server token, and then the server proof (`sproof`) must check too.
    /// The agent token is on every stick; a holder of it alone (a lost nodo1 stick) can
    /// announce a CA of its own with a valid agent proof, and recording that CA would
    /// leave every later server build waiting for it.
    pub server_token: Option<&'a str>,
}

impl<'a> Keys<'a> {
    /// The agent proof only: a single-server cluster (its server announces no `sproof`).
    pub fn agent(agent_token: &'a str) -> Keys<'a> {
        Keys {
            agent_token,
            server_token: None,
        }
    }

    /// What the plan's servers announce: with `mode: ha`, the server proof too.
    pub fn of(plan: &crate::plan::Plan, secrets: &'a crate::secrets::Secrets) -> Keys<'a> {
        Keys {
            agent_token: &secrets.agent_token,
            server_token: (plan.mode == crate::profile::Mode::Ha)
                .then_some(secrets.server_token.as_str()),
        }
    }
}

/// Why an announcement with a valid agent proof is forged when the server proof is
/// missing or wrong (as the HA servers' announcement.py says it).
pub const NO_SERVER_PROOF: &str = "its server proof does not check with this cluster's \
    server token: it may hold the agent token only (a lost or copied stick), so its CA is \
    neither used nor recorded";

/// Judges a server announcement's TXT strings against our cluster and `keys`.
pub fn judge<S: AsRef<[u8]>>(strings: &[S], cluster: &str, keys: Keys) -> Judged {
    let agent_token = keys.agent_token;
    let txt = match Txt::parse(strings, SERVER_KEYS) {
        Ok(t) => t,
        Err(e) => {
            return Judged {
                verdict: Verdict::Malformed,
                why: e.to_string(),
                cluster: None,
                k3s: None,
                ca: None,
            }
        }
    };
    let (verdict, why) = if txt.get("cluster") != Some(cluster) {
        (
            Verdict::ForeignCluster,
            "it announces another cluster".into(),
        )
    } else if txt.get("txtvers") != Some("1") || txt.get("role") != Some("server") {
        (
            Verdict::Forged,
            "not a txtvers=1 role=server announcement".to_string(),
        )
    } else {
        match (txt.get("ca"), txt.get("proof")) {
            (Some(ca), Some(p))
                if is_sha256_hex(ca)
                    && is_sha256_hex(p)
                    && proof::verify(agent_token, cluster, ca, p) =>
            {
                match (keys.server_token, txt.get("sproof")) {
                    (None, _) => (Verdict::Verified, String::new()),
                    (Some(server_token), Some(sp))
                        if is_sha256_hex(sp)
                            && proof::verify_server_proof(server_token, cluster, ca, sp) =>
                    {
                        (Verdict::Verified, String::new())
                    }
                    (Some(_), _) => (Verdict::Forged, NO_SERVER_PROOF.to_string()),
                }
            }
            _ => (
                Verdict::Forged,
                "its proof does not check with this cluster's agent token".to_string(),
            ),
        }
    };
    Judged {
        verdict,
        why,
        cluster: txt.get("cluster").map(str::to_string),
        k3s: txt.get("k3s").map(str::to_string),
        ca: txt.get("ca").map(str::to_string),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Moved from discover.rs (the judge now reads TXT strings).
    #[test]
    fn judges_ours_foreign_and_forged() {
        let ca = proof::ca_hash(b"ca");
        let good = proof::proof("tok", "c1", &ca);
        let base = |proof: &str, cluster: &str| {
            vec![
                "txtvers=1".to_string(),
                format!("cluster={cluster}"),
                "role=server".into(),
                "k3s=v1.28.15+k3s1".into(),
                format!("ca={ca}"),
                format!("proof={proof}"),
            ]
        };
        let verdict = |txt: &[String], token: &str| judge(txt, "c1", Keys::agent(token)).verdict;
        assert_eq!(verdict(&base(&good, "c1"), "tok"), Verdict::Verified);
        assert_eq!(verdict(&base(&good, "c1"), "other"), Verdict::Forged);
        assert_eq!(verdict(&base("00", "c1"), "tok"), Verdict::Forged);
        assert_eq!(verdict(&base(&good, "c2"), "tok"), Verdict::ForeignCluster);
        let mut no_role = base(&good, "c1");
        no_role.remove(2);
        assert_eq!(verdict(&no_role, "tok"), Verdict::Forged);
        assert_eq!(verdict(&[], "tok"), Verdict::ForeignCluster);
    }

    /// `mode: ha`: a valid agent proof is not enough, the server proof must check too.
    #[test]
    fn ha_needs_the_server_proof() {
        let ca = proof::ca_hash(b"ca");
        let txt = |extra: &[String]| {
            let mut t = vec![
                "txtvers=1".to_string(),
                "cluster=c1".into(),
                "role=server".into(),
                format!("ca={ca}"),
                format!("proof={}", proof::proof("tok", "c1", &ca)),
            ];
            t.extend_from_slice(extra);
            t
        };
        let ha = Keys {
            agent_token: "tok",
            server_token: Some("stok"),
        };
        let good = format!("sproof={}", proof::server_proof("stok", "c1", &ca));
        assert_eq!(
            judge(&txt(std::slice::from_ref(&good)), "c1", ha).verdict,
            Verdict::Verified
        );
        for bad in [
            vec![],
            vec![format!(
                "sproof={}",
                proof::server_proof("other", "c1", &ca)
            )],
            vec![format!("sproof={}", proof::proof("stok", "c1", &ca))],
            vec!["sproof".to_string()],
        ] {
            let j = judge(&txt(&bad), "c1", ha);
            assert_eq!(j.verdict, Verdict::Forged, "{bad:?}");
            assert!(j.why.contains("agent token only"), "{}", j.why);
        }
        // Single-server: no server proof announced, none needed.
        assert_eq!(
            judge(&txt(&[]), "c1", Keys::agent("tok")).verdict,
            Verdict::Verified
        );
        // The server proof never rescues a wrong agent proof.
        assert_eq!(
            judge(
                &txt(&[good]),
                "c1",
                Keys {
                    agent_token: "x",
                    ..ha
                }
            )
            .verdict,
            Verdict::Forged
        );
    }

    #[test]
    fn duplicates_of_keys_we_do_not_use_are_ignored() {
        let t = Txt::parse(&["a=1", "A=2", "cluster=c"], SERVER_KEYS).unwrap();
        assert_eq!(t.get("cluster"), Some("c"));
        assert_eq!(
            Txt::parse(&["Cluster=1", "cLUSTER=2"], SERVER_KEYS),
            Err(Malformed::Duplicate("cluster".into()))
        );
    }

    proptest::proptest! {
        #![proptest_config(crate::fuzz::config())]

        /// Issue 8 item 15: any TXT strings get a verdict, never a panic, and the same
        /// verdict in any order (the rule does not depend on which copy comes first).
        #[test]
        fn fuzz_judge_any_strings_in_any_order(
            strings in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
                    proptest::sample::select(vec![
                        b"cluster=c1".to_vec(), b"CLUSTER=evil".to_vec(), b"txtvers=1".to_vec(),
                        b"role=server".to_vec(), b"ca=".to_vec(), b"proof".to_vec(), b"=x".to_vec(),
                    ]),
                ],
                0..12,
            ),
            seed in proptest::prelude::any::<u64>(),
        ) {
            let judged = judge(&strings, "c1", Keys::agent("tok"));
            let mut shuffled = strings.clone();
            let n = shuffled.len();
            for i in 0..n {
                shuffled.swap(i, (seed as usize).wrapping_add(i * 7) % n);
            }
            proptest::prop_assert_eq!(judge(&shuffled, "c1", Keys::agent("tok")).verdict, judged.verdict);
        }
    }
}
