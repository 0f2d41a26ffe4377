//! `chocoimg status`: cluster ready/degraded/unavailable and each node, from the K3s API.
//! Exit 0 ready, 3 degraded, 4 unavailable (1 error, 2 bad input). With several servers
//! it shows the control plane: Ready servers out of the etcd quorum, and when the
//! kubeconfig's server does not answer it asks the others mDNS finds (verified).
use crate::cli::{Global, StatusArgs};
use crate::cluster::kubeconfig;
use crate::cluster::status::{self, ClusterState};
use crate::commands::inputs::{existing_secrets, load_plan_for};
use crate::plan::Purpose;
use anyhow::Context;
use std::time::Duration;

pub fn run(global: &Global, args: &StatusArgs) -> anyhow::Result<i32> {
    // The profile names the context and the nodes to expect; with --context it is optional.
    let plan = match &args.context {
        Some(_) => load_plan_for(global, Purpose::NoSeeds).ok(),
        None => Some(load_plan_for(global, Purpose::NoSeeds)?),
    };
    let context = match (&args.context, &plan) {
        (Some(c), _) => c.clone(),
        (None, Some(p)) => p.cluster.clone(),
        (None, None) => unreachable!("the plan is loaded when no context is given"),
    };
    let expected: Vec<String> = plan
        .iter()
        .flat_map(|p| p.nodes.iter().map(|n| n.hostname.clone()))
        .collect();
    let servers: Vec<String> = plan
        .iter()
        .flat_map(|p| {
            p.nodes
                .iter()
                .filter(|n| n.role == crate::profile::Role::Server)
        })
        .map(|n| n.hostname.clone())
        .collect();
    let path = match &args.kubeconfig {
        Some(p) => p.clone(),
        None => kubeconfig::destination(&kubeconfig::chain()?, &context),
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(crate::errors::BadInput(format!(
                "no kubeconfig at {}; run `chocoimg fetch-kubeconfig` first, or pass --kubeconfig FILE",
                path.display()
            ))
            .into())
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text)
        .with_context(|| format!("{} is not a kubeconfig", path.display()))?;
    let api = status::access(&doc, &context)
        .with_context(|| format!("reading context {context} of {}", path.display()))?;
    // HA: the other servers, only if the kubeconfig's is down; a short browse.
    let others = || {
        let plan = plan
            .as_ref()
            .expect("several servers come from the profile");
        let secrets = existing_secrets(plan)?;
        status::servers_by_mdns(
            &plan.cluster,
            crate::cluster::discover::Keys::of(plan, &secrets),
            &plan.server_names(),
            Duration::from_secs(4),
        )
    };
    let st = status::check_servers(&api, &expected, &servers, Duration::from_secs(10), others);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&st)?);
    } else {
        let state = match st.state {
            ClusterState::Ready => "ready",
            ClusterState::Degraded => "degraded",
            ClusterState::Unavailable => "unavailable",
        };
        println!("cluster {context}: {state} (API {})", st.server);
        if let Some(name) = &st.answered_by {
            let silent: Vec<String> = st
                .unanswered
                .iter()
                .map(|u| format!("{} did not answer ({})", u.server, u.why))
                .collect();
            println!("  asked {name} at {}: {}", st.server, silent.join("; "));
            eprintln!(
                "the kubeconfig ({}) still names a server that does not answer: `chocoimg fetch-kubeconfig` points it at one that does",
                path.display()
            );
        }
        if let Some(cp) = &st.control_plane {
            println!(
                "  control plane: {}/{} servers Ready (quorum {})",
                cp.ready, cp.servers, cp.quorum
            );
        }
        let width = st.nodes.iter().map(|n| n.name.len()).max().unwrap_or(0);
        for n in &st.nodes {
            let note = if n.registered {
                ""
            } else {
                "  (not registered with the API)"
            };
            println!("  {:<width$}  {:?}{note}", n.name, n.state);
        }
        if let Some(cp) = st
            .control_plane
            .filter(|cp| cp.ready < cp.quorum && st.error.is_none())
        {
            eprintln!(
                "only {} of {} servers are Ready and etcd needs {}: the cluster takes no writes until another server is back (if two are lost for good: `k3s server --cluster-reset` on the survivor)",
                cp.ready, cp.servers, cp.quorum
            );
        }
        if let Some(err) = &st.error {
            let who = if servers.len() > 1 {
                "a server"
            } else {
                "master1"
            };
            let tried: String = st
                .unanswered
                .iter()
                .map(|u| format!("\n  {}: {}", u.server, u.why))
                .collect();
            if tried.is_empty() {
                eprintln!("the K3s API did not answer: {err}");
            } else {
                eprintln!("no server of the cluster answered:{tried}");
                if st.unanswered.len() == 1 {
                    eprintln!("no other server of the cluster announced itself over mDNS with a valid proof");
                }
            }
            eprintln!("Is {who} on and K3s running? Its address may have changed: `chocoimg fetch-kubeconfig` refreshes it.");
        }
    }
    Ok(st.exit_code())
}
