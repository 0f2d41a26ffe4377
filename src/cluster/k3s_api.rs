//! K3s's unauthenticated API endpoints, asked before anything is trusted: `/cacerts`
//! (whose hash the announcement pins) and a TLS handshake that proves an address holds
//! the announced CA's key. Below both `discover` and `fetch`, which use them.
use anyhow::{bail, Context, Result};
use std::time::Duration;

/// K3s's API port.
pub const API_PORT: u16 = 6443;

/// An address as a URL host (IPv6 in brackets).
pub fn url_host(address: &str) -> String {
    if address.contains(':') && !address.starts_with('[') {
        format!("[{address}]")
    } else {
        address.to_string()
    }
}

/// GET `/cacerts` without trusting anything yet: its hash is what we check.
pub fn get_cacerts(address: &str) -> Result<Vec<u8>> {
    let url = format!("https://{}:{API_PORT}/cacerts", url_host(address));
    let client = reqwest::blocking::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(10))
        .build()
        .context("building the HTTPS client")?;
    let resp = client
        .get(&url)
        .send()
        .with_context(|| format!("fetching {url} (is K3s running on that machine?)"))?;
    if !resp.status().is_success() {
        bail!("{url} answered {}", resp.status());
    }
    Ok(resp
        .bytes()
        .with_context(|| format!("reading {url}"))?
        .to_vec())
}

/// Checks that `address` serves the CA whose hash is `ca_hex` at `/cacerts`, and
/// completes TLS on 6443 with that CA as the only root. The name is not checked: K3s's
/// certificate may not name an address DHCP gave master1 since K3s started; holding the
/// CA's key is the proof (nodo1's announcement.py checks the same way).
pub fn prove_address(address: &str, ca_hex: &str) -> Result<(), Unproven> {
    let cacerts = get_cacerts(address).map_err(|e| Unproven::NoAnswer(format!("{e:#}")))?;
    let served = crate::proof::ca_hash(&cacerts);
    if served != ca_hex {
        return Err(Unproven::OtherCa(served));
    }
    let no_chain = |e: String| Unproven::NoChain(e);
    let roots = reqwest::Certificate::from_pem_bundle(&cacerts)
        .map_err(|_| no_chain("its /cacerts is not PEM certificates".into()))?;
    let mut client = reqwest::blocking::Client::builder()
        .tls_built_in_root_certs(false)
        .danger_accept_invalid_hostnames(true)
        .timeout(Duration::from_secs(5));
    for root in roots {
        client = client.add_root_certificate(root);
    }
    let url = format!("https://{}:{API_PORT}/ping", url_host(address));
    client
        .build()
        .map_err(|e| no_chain(format!("building the HTTPS client: {e}")))?
        .get(&url)
        .send()
        .map_err(|e| {
            no_chain(
                std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| e.to_string()),
            )
        })?;
    Ok(())
}

/// Why an address did not prove it holds the announced CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unproven {
    /// Nothing (or no K3s) answers at `/cacerts`.
    NoAnswer(String),
    /// `/cacerts` is another CA (its hash).
    OtherCa(String),
    /// The TLS handshake does not chain to the CA: a copied `/cacerts`.
    NoChain(String),
}

impl Unproven {
    /// The reason, naming the instance that announced `ca`.
    pub fn describe(&self, instance: &str, ca: &str) -> String {
        match self {
            Unproven::NoAnswer(e) => e.clone(),
            Unproven::OtherCa(served) => format!(
                "the CA it serves at /cacerts (sha256 {served}) is not the one {instance} \
                 announced ({ca})"
            ),
            Unproven::NoChain(e) => format!(
                "its TLS on {API_PORT} does not chain to the CA {instance} announced \
                 (a copied announcement?): {e}"
            ),
        }
    }
}
