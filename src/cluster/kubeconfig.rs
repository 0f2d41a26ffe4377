//! The kubeconfig document: which file of kubectl's chain holds our context, K3s's
//! admin kubeconfig adopted under the cluster's name, and the merge that keeps every
//! other entry. Pure data; the fetching (HTTPS, SSH, backup, write) is `fetch`.
use anyhow::{anyhow, bail, Result};
use serde_yaml_ng::{Mapping, Value};
use std::path::{Path, PathBuf};

/// The admin kubeconfig K3s writes on the server (root-only).
pub const K3S_KUBECONFIG: &str = "/etc/rancher/k3s/k3s.yaml";

/// The kubeconfig files kubectl merges, in order: `$KUBECONFIG`'s entries, else
/// `~/.kube/config`.
pub fn chain() -> Result<Vec<PathBuf>> {
    if let Some(list) = std::env::var_os("KUBECONFIG") {
        let files: Vec<PathBuf> = std::env::split_paths(&list)
            .filter(|p| !p.as_os_str().is_empty())
            .collect();
        if !files.is_empty() {
            return Ok(files);
        }
    }
    let home = crate::plan::home_dir()
        .ok_or_else(|| anyhow!("HOME is not set; pass --output FILE or set KUBECONFIG"))?;
    Ok(vec![home.join(".kube").join("config")])
}

/// The file of `chain` kubectl would write context `name` to: the first that already
/// defines it (kubectl modifies a stanza where it is defined), else the first that exists,
/// else the last (kubectl's rules for `$KUBECONFIG` with several files).
pub fn destination(chain: &[PathBuf], name: &str) -> PathBuf {
    let defines = |p: &PathBuf| {
        read_kubeconfig(p).is_some_and(|doc| find_named(&doc, "contexts", name).is_some())
    };
    chain
        .iter()
        .find(|p| defines(p))
        .or_else(|| chain.iter().find(|p| p.exists()))
        .or(chain.last())
        .cloned()
        .unwrap_or_default()
}

/// kubectl's current context over `chain`: the first file that sets one wins.
pub fn current_context(chain: &[PathBuf]) -> Option<String> {
    chain.iter().find_map(|p| {
        read_kubeconfig(p)?
            .get("current-context")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty())
            .map(String::from)
    })
}

/// An entry of `existing` named `name` that `ours` (from `adopt`) would replace but that
/// reaches another cluster: a cluster with another CA (or none), a context that uses
/// other entries, a user with no cluster of ours beside it. Described for the message.
pub fn another_clusters_entry(existing: &Value, ours: &Value, name: &str) -> Option<String> {
    let cluster = find_named(existing, "clusters", name);
    let context = find_named(existing, "contexts", name);
    let user = find_named(existing, "users", name);
    let server = |c: &Value| {
        c.get("cluster")
            .and_then(|c| c.get("server"))
            .and_then(Value::as_str)
            .unwrap_or("no server")
            .to_string()
    };
    let our_ca = cluster_ca(ours, name).ok()?;
    let cluster_is_ours = cluster.is_some()
        && cluster_ca(existing, name).is_ok_and(|ca| same_certificates(&ca, &our_ca));
    if let Some(c) = cluster.filter(|_| !cluster_is_ours) {
        let what = match context {
            Some(_) => "context and cluster",
            None => "cluster",
        };
        return Some(format!(
            "a {what} named {name} that reaches {} with another CA",
            server(c)
        ));
    }
    if let Some(ctx) = context {
        let refs = |key: &str| {
            ctx.get("context")
                .and_then(|c| c.get(key))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let (c, u) = (refs("cluster"), refs("user"));
        if c != name || u != name {
            let reaches = find_named(existing, "clusters", &c)
                .map(|e| format!(", which reaches {}", server(e)))
                .unwrap_or_default();
            return Some(format!(
                "a context named {name} that uses cluster {c:?} and user {u:?}{reaches}"
            ));
        }
        if !cluster_is_ours {
            return Some(format!(
                "a context named {name} whose cluster entry is missing"
            ));
        }
    }
    if user.is_some() && !cluster_is_ours {
        return Some(format!(
            "a user named {name} with no cluster of this name beside it"
        ));
    }
    None
}

/// A kubeconfig file's document, or None when it is missing or not YAML.
fn read_kubeconfig(path: &Path) -> Option<Value> {
    serde_yaml_ng::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

pub(crate) fn named_list<'a>(doc: &'a Value, list: &str) -> impl Iterator<Item = &'a Value> {
    doc.get(list)
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
}

/// The entry of `list` (clusters, users, contexts) named `name`.
pub(crate) fn find_named<'a>(doc: &'a Value, list: &str, name: &str) -> Option<&'a Value> {
    named_list(doc, list).find(|e| e.get("name").and_then(Value::as_str) == Some(name))
}

/// The bytes of a `*-data` field (base64 in the kubeconfig), or None when `entry` has
/// no such field.
pub fn data_field(entry: &Value, key: &str) -> Result<Option<Vec<u8>>> {
    use base64::Engine;
    let Some(s) = entry.get(key).and_then(Value::as_str) else {
        return Ok(None);
    };
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map(Some)
        .map_err(|e| anyhow!("{key} is not base64: {e}"))
}

/// The PEM bytes of cluster `name`'s `certificate-authority-data`.
pub fn cluster_ca(doc: &Value, name: &str) -> Result<Vec<u8>> {
    let cluster =
        find_named(doc, "clusters", name).ok_or_else(|| anyhow!("no cluster named {name:?}"))?;
    let key = "certificate-authority-data";
    data_field(&cluster["cluster"], key)?.ok_or_else(|| anyhow!("no {key}"))
}

/// True when both PEM texts hold the same certificates (by DER, order ignored).
pub fn same_certificates(a: &[u8], b: &[u8]) -> bool {
    fn ders(pem: &[u8]) -> Option<Vec<Vec<u8>>> {
        use rustls_pki_types::pem::{self, SectionKind};
        let mut cursor = std::io::Cursor::new(pem);
        let mut out = Vec::new();
        loop {
            match pem::from_buf(&mut cursor) {
                Ok(Some((SectionKind::Certificate, der))) => out.push(der),
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return None,
            }
        }
        out.sort();
        (!out.is_empty()).then_some(out)
    }
    matches!((ders(a), ders(b)), (Some(x), Some(y)) if x == y)
}

/// K3s's kubeconfig with `default` renamed to `name` and the server set to `server_url`:
/// exactly one cluster, user and context, all named `name`.
pub fn adopt(k3s: &Value, name: &str, server_url: &str) -> Result<Value> {
    let mut cluster = find_named(k3s, "clusters", "default")
        .and_then(|c| c.get("cluster"))
        .cloned()
        .ok_or_else(|| anyhow!("{K3S_KUBECONFIG} has no cluster named default"))?;
    cluster
        .as_mapping_mut()
        .ok_or_else(|| anyhow!("the cluster entry is not a mapping"))?
        .insert("server".into(), server_url.into());
    let user = find_named(k3s, "users", "default")
        .and_then(|u| u.get("user"))
        .cloned()
        .ok_or_else(|| anyhow!("{K3S_KUBECONFIG} has no user named default"))?;
    let entry = |key: &str, body: Value| {
        let mut m = Mapping::new();
        m.insert("name".into(), name.into());
        m.insert(key.into(), body);
        Value::Mapping(m)
    };
    let mut ctx = Mapping::new();
    ctx.insert("cluster".into(), name.into());
    ctx.insert("user".into(), name.into());
    let mut doc = Mapping::new();
    doc.insert("apiVersion".into(), "v1".into());
    doc.insert("kind".into(), "Config".into());
    doc.insert(
        "clusters".into(),
        Value::Sequence(vec![entry("cluster", cluster)]),
    );
    doc.insert("users".into(), Value::Sequence(vec![entry("user", user)]));
    doc.insert(
        "contexts".into(),
        Value::Sequence(vec![entry("context", Value::Mapping(ctx))]),
    );
    doc.insert("current-context".into(), name.into());
    doc.insert("preferences".into(), Value::Mapping(Mapping::new()));
    Ok(Value::Mapping(doc))
}

/// Merges `ours` (from `adopt`) into `existing`: every other entry kept as it was, ours
/// replaced in place or appended; current-context set only when `set_current`.
pub fn merge(
    existing: Option<Value>,
    ours: &Value,
    name: &str,
    set_current: bool,
) -> Result<Value> {
    let mut doc = match existing {
        None => {
            let mut m = Mapping::new();
            m.insert("apiVersion".into(), "v1".into());
            m.insert("kind".into(), "Config".into());
            m.insert("preferences".into(), Value::Mapping(Mapping::new()));
            m
        }
        Some(Value::Mapping(m)) => m,
        Some(Value::Null) => Mapping::new(),
        Some(_) => bail!("the existing kubeconfig is not a mapping; fix or move it"),
    };
    for list in ["clusters", "users", "contexts"] {
        let mine = find_named(ours, list, name)
            .cloned()
            .ok_or_else(|| anyhow!("internal: no {list} entry {name}"))?;
        let entries = doc
            .entry(list.into())
            .or_insert_with(|| Value::Sequence(Vec::new()));
        if entries.is_null() {
            *entries = Value::Sequence(Vec::new());
        }
        let seq = entries
            .as_sequence_mut()
            .ok_or_else(|| anyhow!("`{list}` in the existing kubeconfig is not a list"))?;
        match seq
            .iter_mut()
            .find(|e| e.get("name").and_then(Value::as_str) == Some(name))
        {
            Some(slot) => *slot = mine,
            None => seq.push(mine),
        }
    }
    if set_current {
        doc.insert("current-context".into(), name.into());
    }
    Ok(Value::Mapping(doc))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k3s_yaml() -> Value {
        serde_yaml_ng::from_str(
            "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: Q0E=\n    server: https://127.0.0.1:6443\n  name: default\ncontexts:\n- context:\n    cluster: default\n    user: default\n  name: default\ncurrent-context: default\nkind: Config\npreferences: {}\nusers:\n- name: default\n  user:\n    client-certificate-data: Q0VSVA==\n    client-key-data: S0VZ\n",
        )
        .unwrap()
    }

    #[test]
    fn adopt_renames_and_points_at_master1() {
        let ours = adopt(&k3s_yaml(), "c1", "https://10.0.0.5:6443").unwrap();
        let s = serde_yaml_ng::to_string(&ours).unwrap();
        assert!(!s.contains("default"), "{s}");
        assert!(!s.contains("127.0.0.1"), "{s}");
        assert_eq!(cluster_ca(&ours, "c1").unwrap(), b"CA");
        assert_eq!(
            find_named(&ours, "clusters", "c1").unwrap()["cluster"]["server"],
            "https://10.0.0.5:6443"
        );
    }

    #[test]
    fn merge_keeps_others_and_replaces_ours() {
        let existing: Value = serde_yaml_ng::from_str(
            "apiVersion: v1\nkind: Config\ncurrent-context: work\nclusters:\n- name: work\n  cluster: {server: https://work:6443}\n- name: c1\n  cluster: {server: https://old:6443}\nusers:\n- name: work\n  user: {token: t}\ncontexts:\n- name: work\n  context: {cluster: work, user: work}\nextensions: []\n",
        )
        .unwrap();
        let ours = adopt(&k3s_yaml(), "c1", "https://10.0.0.5:6443").unwrap();
        let merged = merge(Some(existing.clone()), &ours, "c1", false).unwrap();
        assert_eq!(merged["current-context"], "work");
        assert_eq!(merged["clusters"].as_sequence().unwrap().len(), 2);
        assert_eq!(merged["clusters"][0], existing["clusters"][0]);
        assert_eq!(
            merged["clusters"][1]["cluster"]["server"],
            "https://10.0.0.5:6443"
        );
        assert_eq!(merged["users"].as_sequence().unwrap().len(), 2);
        assert_eq!(merged["contexts"][1]["name"], "c1");
        assert!(merged.get("extensions").is_some());
        let switched = merge(Some(existing), &ours, "c1", true).unwrap();
        assert_eq!(switched["current-context"], "c1");
    }

    /// kubectl's rules for `$KUBECONFIG` with several files.
    #[test]
    fn destination_follows_kubectl_rules() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        let ctx = |name: &str, current: &str| {
            format!("apiVersion: v1\nkind: Config\ncurrent-context: {current}\ncontexts:\n- name: {name}\n  context: {{cluster: {name}, user: {name}}}\n")
        };
        std::fs::write(p("work"), ctx("work", "work")).unwrap();
        std::fs::write(p("ours"), ctx("c1", "")).unwrap();
        // Created in the first file that exists, never in a missing one ahead of it.
        let chain = vec![p("missing"), p("work")];
        assert_eq!(destination(&chain, "c1"), p("work"));
        assert_eq!(current_context(&chain).as_deref(), Some("work"));
        // Modified where it is defined.
        let chain = vec![p("work"), p("ours")];
        assert_eq!(destination(&chain, "c1"), p("ours"));
        // No file at all: the last one.
        let chain = vec![p("missing"), p("missing2")];
        assert_eq!(destination(&chain, "c1"), p("missing2"));
        assert_eq!(current_context(&chain), None);
        assert_eq!(current_context(&[p("ours")]), None);
    }

    #[test]
    fn certificates_compare_by_der() {
        let pem = "-----BEGIN CERTIFICATE-----\nAAEC\n-----END CERTIFICATE-----\n";
        let other = "-----BEGIN CERTIFICATE-----\nAAED\n-----END CERTIFICATE-----\n";
        assert!(same_certificates(pem.as_bytes(), pem.trim_end().as_bytes()));
        assert!(!same_certificates(pem.as_bytes(), other.as_bytes()));
        assert!(!same_certificates(b"", b""));
    }
}
