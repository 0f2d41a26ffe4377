//! `status`: the seed's cluster states from the K3s API, with the kubeconfig that
//! `fetch-kubeconfig` wrote. Cluster `ready` (API answers, every node Ready), `degraded`
//! (API answers, some node not Ready), `unavailable` (no API); each node `Ready`,
//! `NotReady` or `Unknown` from its `Ready` condition. A cluster of several servers
//! (`mode: ha`) also has a control plane: its Ready servers out of the etcd quorum (a
//! majority); below quorum it is `unavailable` whatever the API still answers. In HA,
//! when the kubeconfig's server does not answer (the very server that died), the other
//! servers are asked with the same credentials and the same CA trust.
use crate::cluster::discover::{self, Browse};
use crate::cluster::k3s_api::{url_host, API_PORT};
use crate::cluster::kubeconfig;
use crate::errors::{EXIT_DEGRADED, EXIT_UNAVAILABLE};
use anyhow::{anyhow, Context, Result};
use serde::Serialize;
use serde_yaml_ng::Value;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterState {
    Ready,
    Degraded,
    Unavailable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum NodeState {
    Ready,
    NotReady,
    Unknown,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub state: NodeState,
    /// False for a profile node the API does not know (not joined yet).
    pub registered: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub state: ClusterState,
    pub server: String,
    pub nodes: Vec<NodeStatus>,
    /// Several servers (`mode: ha`): Ready servers against the quorum.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<ControlPlane>,
    /// Why the API could not be read (only when unavailable).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// HA: the server that answered when the kubeconfig's did not (its name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answered_by: Option<String>,
    /// HA: the servers asked that did not answer, in the order asked.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unanswered: Vec<Unanswered>,
    /// Whether any server answered at all (an HTTP error is an answer): only a server
    /// that does not answer makes another one worth asking.
    #[serde(skip)]
    no_answer: bool,
}

/// A server asked that gave no answer, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Unanswered {
    /// `master1 at https://10.0.0.1:6443`, or the bare URL when its name is not known.
    pub server: String,
    pub why: String,
}

/// A server of the cluster mDNS found: its name and address, and why that address did
/// not prove it holds the CA it announced (only proven ones are asked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtherServer {
    pub name: String,
    pub address: String,
    pub unproven: Option<String>,
}

impl OtherServer {
    fn url(&self) -> String {
        format!("https://{}:{API_PORT}", url_host(&self.address))
    }
}

/// The servers of an etcd cluster: writable while `quorum` (a majority) are up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ControlPlane {
    pub ready: usize,
    pub servers: usize,
    pub quorum: usize,
}

impl ControlPlane {
    fn of(servers: &[String], nodes: &[NodeStatus]) -> Option<ControlPlane> {
        (servers.len() > 1).then(|| ControlPlane {
            ready: servers
                .iter()
                .filter(|s| {
                    nodes
                        .iter()
                        .any(|n| &n.name == *s && n.state == NodeState::Ready)
                })
                .count(),
            servers: servers.len(),
            quorum: servers.len() / 2 + 1,
        })
    }
}

impl Status {
    /// 0 ready, 3 degraded, 4 unavailable.
    pub fn exit_code(&self) -> i32 {
        match self.state {
            ClusterState::Ready => 0,
            ClusterState::Degraded => EXIT_DEGRADED,
            ClusterState::Unavailable => EXIT_UNAVAILABLE,
        }
    }
}

/// How to reach the API: server URL, CA, and the admin's client certificate or token.
#[derive(Clone)]
pub struct ApiAccess {
    pub server: String,
    ca_pem: Vec<u8>,
    identity_pem: Option<Vec<u8>>,
    token: Option<String>,
}

/// Reads `context`'s server, CA and credentials from a kubeconfig document.
pub fn access(doc: &Value, context: &str) -> Result<ApiAccess> {
    let find = |list: &str, name: &str| kubeconfig::find_named(doc, list, name).cloned();
    let names: Vec<String> = kubeconfig::named_list(doc, "contexts")
        .filter_map(|e| e.get("name").and_then(Value::as_str).map(String::from))
        .collect();
    let ctx = find("contexts", context).ok_or_else(|| {
        crate::errors::BadInput(format!(
            "the kubeconfig has no context {context:?} (it has: {}); run `chocoimg fetch-kubeconfig` or pass --context",
            if names.is_empty() { "none".to_string() } else { names.join(", ") }
        ))
    })?;
    let field = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(String::from);
    let c = &ctx["context"];
    let cluster_name =
        field(c, "cluster").ok_or_else(|| anyhow!("context {context} names no cluster"))?;
    let user_name = field(c, "user").unwrap_or_default();
    let cluster = find("clusters", &cluster_name)
        .ok_or_else(|| anyhow!("the kubeconfig has no cluster {cluster_name:?}"))?;
    let server = field(&cluster["cluster"], "server")
        .ok_or_else(|| anyhow!("cluster {cluster_name} has no server"))?;
    let ca_pem = kubeconfig::cluster_ca(doc, &cluster_name)?;
    let user = find("users", &user_name)
        .map(|u| u["user"].clone())
        .unwrap_or(Value::Null);
    let b64 =
        |k: &str| kubeconfig::data_field(&user, k).with_context(|| format!("user {user_name}"));
    let identity_pem = match (b64("client-certificate-data")?, b64("client-key-data")?) {
        (Some(mut cert), Some(key)) => {
            cert.push(b'\n');
            cert.extend_from_slice(&key);
            Some(cert)
        }
        _ => None,
    };
    Ok(ApiAccess {
        server,
        ca_pem,
        identity_pem,
        token: field(&user, "token"),
    })
}

/// Each node's state from `/api/v1/nodes`'s JSON: its `Ready` condition.
pub fn node_states(nodes: &serde_json::Value) -> Vec<(String, NodeState)> {
    let mut out: Vec<(String, NodeState)> = nodes["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| {
            let name = n["metadata"]["name"].as_str()?.to_string();
            let ready = n["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Ready")
                .and_then(|c| c["status"].as_str());
            let state = match ready {
                Some("True") => NodeState::Ready,
                Some("False") => NodeState::NotReady,
                _ => NodeState::Unknown,
            };
            Some((name, state))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Asks the API for its nodes. `expected` (the profile's nodes) that the API does not
/// know count as Unknown and not registered; `servers` (the profile's servers), when
/// more than one, decide the control plane's quorum.
pub fn check(
    api: &ApiAccess,
    expected: &[String],
    servers: &[String],
    timeout: Duration,
) -> Status {
    match list_nodes(api, timeout) {
        Ok(json) => {
            let mut nodes: Vec<NodeStatus> = node_states(&json)
                .into_iter()
                .map(|(name, state)| NodeStatus {
                    name,
                    state,
                    registered: true,
                })
                .collect();
            for name in expected {
                if !nodes.iter().any(|n| &n.name == name) {
                    nodes.push(NodeStatus {
                        name: name.clone(),
                        state: NodeState::Unknown,
                        registered: false,
                    });
                }
            }
            let all_ready = !nodes.is_empty() && nodes.iter().all(|n| n.state == NodeState::Ready);
            let control_plane = ControlPlane::of(servers, &nodes);
            // Below quorum etcd takes no writes: the API's answer is a stale read.
            let state = match control_plane {
                Some(cp) if cp.ready < cp.quorum => ClusterState::Unavailable,
                _ if all_ready => ClusterState::Ready,
                _ => ClusterState::Degraded,
            };
            Status {
                state,
                server: api.server.clone(),
                nodes,
                control_plane,
                error: None,
                answered_by: None,
                unanswered: Vec::new(),
                no_answer: false,
            }
        }
        Err(e) => {
            let nodes: Vec<NodeStatus> = expected
                .iter()
                .map(|name| NodeStatus {
                    name: name.clone(),
                    state: NodeState::Unknown,
                    registered: false,
                })
                .collect();
            Status {
                state: ClusterState::Unavailable,
                server: api.server.clone(),
                control_plane: ControlPlane::of(servers, &nodes),
                nodes,
                no_answer: e.chain().any(|c| {
                    c.downcast_ref::<reqwest::Error>()
                        .is_some_and(|r| r.is_connect() || r.is_timeout())
                }),
                error: Some(format!("{e:#}")),
                answered_by: None,
                unanswered: Vec::new(),
            }
        }
    }
}

/// `check`; and with several servers, when the kubeconfig's server does not answer,
/// the same question to the other servers `others` finds (asked only then), in its order,
/// until one answers. The same CA and client certificate: a server is used only if its
/// TLS chains to the kubeconfig's CA and names its address, as for the kubeconfig's own.
pub fn check_servers(
    api: &ApiAccess,
    expected: &[String],
    servers: &[String],
    timeout: Duration,
    others: impl FnOnce() -> Result<Vec<OtherServer>>,
) -> Status {
    let mut first = check(api, expected, servers, timeout);
    if servers.len() < 2 || !first.no_answer {
        return first;
    }
    let own = api.server.trim_end_matches('/').to_string();
    let found = match others() {
        Ok(found) => found,
        Err(e) => {
            first.error = Some(format!(
                "{}\nNo other server asked: looking for them failed: {e:#}",
                first.error.unwrap_or_default()
            ));
            return first;
        }
    };
    let own_name = found
        .iter()
        .find(|o| o.url() == own)
        .map(|o| format!("{} at {own}", o.name))
        .unwrap_or(own.clone());
    let mut unanswered = vec![Unanswered {
        server: own_name,
        why: first.error.clone().unwrap_or_default(),
    }];
    for other in found.iter().filter(|o| o.url() != own) {
        if let Some(why) = &other.unproven {
            unanswered.push(Unanswered {
                server: format!("{} at {}", other.name, other.url()),
                why: format!("announced over mDNS, not asked: {why}"),
            });
            continue;
        }
        let st = check(
            &ApiAccess {
                server: other.url(),
                ..api.clone()
            },
            expected,
            servers,
            timeout,
        );
        if st.error.is_none() {
            return Status {
                answered_by: Some(other.name.clone()),
                unanswered,
                ..st
            };
        }
        unanswered.push(Unanswered {
            server: format!("{} at {}", other.name, other.url()),
            why: st.error.unwrap_or_default(),
        });
    }
    Status {
        unanswered,
        ..first
    }
}

/// The verified servers mDNS finds within `timeout` (announcement proof and CA checked
/// by `discover::browse`), the profile's `server_names` first in profile order, each
/// address it announced (proven ones first). Whatever CA they announce: the caller's TLS
/// decides.
pub fn servers_by_mdns(
    cluster: &str,
    keys: discover::Keys,
    server_names: &[&str],
    timeout: Duration,
) -> Result<Vec<OtherServer>> {
    // The kubeconfig's server did not answer: the others are all that may.
    let heard = discover::browse(
        cluster,
        keys,
        Browse {
            timeout,
            stop_after_verified: Some(server_names.len().saturating_sub(1).max(1)),
        },
    )?;
    let mut found: Vec<OtherServer> = heard
        .iter()
        .filter(|s| s.verdict == discover::Verdict::Verified)
        .flat_map(|s| {
            s.addresses.iter().map(|a| OtherServer {
                name: s.instance.clone(),
                address: a.to_string(),
                unproven: s.unproven.get(a).cloned(),
            })
        })
        .collect();
    let rank = |n: &str| {
        server_names
            .iter()
            .position(|s| *s == n)
            .unwrap_or(server_names.len())
    };
    found.sort_by(|a, b| {
        let key = |o: &OtherServer| (rank(&o.name), o.name.clone(), o.unproven.is_some());
        (key(a), &a.address).cmp(&(key(b), &b.address))
    });
    found.dedup();
    Ok(found)
}

fn list_nodes(api: &ApiAccess, timeout: Duration) -> Result<serde_json::Value> {
    let mut builder = reqwest::blocking::Client::builder()
        .timeout(timeout)
        .tls_built_in_root_certs(false);
    for cert in reqwest::Certificate::from_pem_bundle(&api.ca_pem)
        .context("reading the kubeconfig's certificate-authority-data")?
    {
        builder = builder.add_root_certificate(cert);
    }
    if let Some(pem) = &api.identity_pem {
        builder = builder.identity(
            reqwest::Identity::from_pem(pem)
                .context("reading the kubeconfig's client certificate")?,
        );
    }
    let client = builder.build().context("building the HTTPS client")?;
    let url = format!("{}/api/v1/nodes", api.server.trim_end_matches('/'));
    let mut req = client.get(&url);
    if let Some(token) = &api.token {
        req = req.bearer_auth(token);
    }
    let resp = req.send().with_context(|| format!("GET {url}"))?;
    let code = resp.status();
    if !code.is_success() {
        return Err(anyhow!("GET {url} answered {code}"));
    }
    let body = resp.bytes().with_context(|| format!("reading {url}"))?;
    serde_json::from_slice(&body).with_context(|| format!("{url} did not answer JSON"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_condition_decides() {
        let json = serde_json::json!({"items": [
            {"metadata": {"name": "nodo1"}, "status": {"conditions": [{"type": "Ready", "status": "False"}]}},
            {"metadata": {"name": "master1"}, "status": {"conditions": [{"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": "True"}]}},
            {"metadata": {"name": "x"}, "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}},
            {"metadata": {"name": "y"}, "status": {}}
        ]});
        assert_eq!(
            node_states(&json),
            vec![
                ("master1".to_string(), NodeState::Ready),
                ("nodo1".to_string(), NodeState::NotReady),
                ("x".to_string(), NodeState::Unknown),
                ("y".to_string(), NodeState::Unknown),
            ]
        );
    }
}
