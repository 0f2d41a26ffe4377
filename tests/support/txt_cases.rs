//! tests/data/txt-cases.json: the one table of TXT records that drives both the laptop's
//! judge and nodo1's (the rule: src/cluster/txt.rs, templates/node/announcement.py).
use chocoimg::proof;

pub struct Case {
    pub name: String,
    /// The verdict both sides must give: verified, foreign-cluster, forged, malformed.
    pub verdict: String,
    /// The TXT strings, as on the wire.
    pub txt: Vec<Vec<u8>>,
}

/// The other CA the table's `{other_ca}` stands for.
pub const OTHER_CA: &[u8] = b"another CA";

/// The table, with our `cluster`, agent `token` and the CA hash `ca` put in.
pub fn cases(cluster: &str, token: &str, ca: &str) -> Vec<Case> {
    let path = super::repo().join("tests/data/txt-cases.json");
    let table: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let other_ca = proof::ca_hash(OTHER_CA);
    let upper = ca.to_uppercase();
    let fills = [
        ("{cluster}", cluster.to_string()),
        ("{ca}", ca.to_string()),
        ("{proof}", proof::proof(token, cluster, ca)),
        ("{CA}", upper.clone()),
        ("{PROOF}", proof::proof(token, cluster, ca).to_uppercase()),
        ("{proof_CA}", proof::proof(token, cluster, &upper)),
        ("{other_ca}", other_ca.clone()),
        ("{other_proof}", proof::proof(token, cluster, &other_ca)),
        ("{forged}", proof::proof("not-the-agent-token", cluster, ca)),
        (
            "{sproof}",
            proof::server_proof("a-server-token", cluster, ca),
        ),
    ];
    let fill = |text: &str| {
        let mut t = text.to_string();
        for (k, v) in &fills {
            t = t.replace(k, v);
        }
        t.into_bytes()
    };
    table["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().unwrap().to_string(),
            verdict: c["verdict"].as_str().unwrap().to_string(),
            txt: c["txt"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| match s.as_str() {
                    Some(text) => fill(text),
                    None => hex::decode(s["hex"].as_str().unwrap()).unwrap(),
                })
                .collect(),
        })
        .collect()
}
