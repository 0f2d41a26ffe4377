//! `chocoimg discover`: list the K3s servers announced on the LAN, judged by our proof.
//! Exit 0 when verified servers of our cluster answered (their CA then recorded), 4 when
//! none did, 1 when servers with different CAs answered, 2 when the only CA is not the
//! recorded one.
use crate::cli::{DiscoverArgs, Global};
use crate::cluster::discover::{self, Browse, Choice};
use crate::cluster_ca;
use crate::commands::inputs::{existing_secrets, load_plan_for, record_cluster_ca, timeout_arg};
use crate::errors::{EXIT_FAILURE, EXIT_NOT_FOUND};
use crate::plan::Purpose;

pub fn run(global: &Global, args: &DiscoverArgs) -> anyhow::Result<i32> {
    let plan = load_plan_for(global, Purpose::NoSeeds)?;
    let timeout = timeout_arg(args.timeout)?;
    let secrets = existing_secrets(&plan)?;
    let recorded = cluster_ca::load(&plan)?;
    let mut servers = discover::browse(
        &plan.cluster,
        discover::Keys::of(&plan, &secrets),
        Browse {
            timeout,
            stop_after_verified: args.first.then_some(1),
        },
    )?;
    discover::mark_recorded(&mut servers, recorded.as_deref());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&servers)?);
    } else if !servers.is_empty() {
        print_table(&servers);
    }
    match discover::choose(&servers, &plan.server_names(), recorded.as_deref()) {
        Choice::Cluster {
            ca,
            members,
            notes,
            other_cas,
        } => {
            for note in notes {
                eprintln!("note: {note}");
            }
            // Proof and TLS checked: this CA is the cluster's (refused if another is recorded).
            record_cluster_ca(&plan, &ca)?;
            if plan.server_names().len() > 1 {
                let names: Vec<String> = members
                    .iter()
                    .map(|m| format!("{} ({})", m.instance, m.address))
                    .collect();
                eprintln!(
                    "{} of {} servers verified with the cluster's CA: {}",
                    members.len(),
                    plan.server_names().len(),
                    names.join(", ")
                );
            }
            match other_cas {
                // Listed above; loud, and not a clean exit: the cluster needs a re-flash.
                Some(msg) => {
                    eprintln!("warning: {msg}");
                    Ok(EXIT_FAILURE)
                }
                None => Ok(0),
            }
        }
        // Refuse to guess: listed above, the user picks with --server.
        Choice::Conflict(msg) => {
            eprintln!("{msg}");
            Ok(EXIT_FAILURE)
        }
        Choice::Nothing => {
            eprintln!(
                "{}",
                discover::nothing_found_hint(&plan.cluster, timeout, &servers)
            );
            Ok(EXIT_NOT_FOUND)
        }
    }
}

fn print_table(servers: &[discover::Server]) {
    let rows: Vec<[String; 7]> = servers
        .iter()
        .map(|s| {
            let addr = if s.addresses.is_empty() {
                "(no IPv4)".to_string()
            } else {
                s.addresses
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            // The CA's first 12 hex digits tell two CAs apart; --json has them whole.
            let ca = match (&s.ca, s.ca_recorded) {
                (Some(ca), Some(true)) => format!("{} (recorded)", &ca[..ca.len().min(12)]),
                (Some(ca), _) => ca[..ca.len().min(12)].to_string(),
                (None, _) => String::new(),
            };
            [
                s.instance.clone(),
                addr,
                s.port.to_string(),
                s.cluster.clone().unwrap_or_default(),
                s.k3s.clone().unwrap_or_default(),
                ca,
                s.status(),
            ]
        })
        .collect();
    let header = ["NAME", "ADDRESS", "PORT", "CLUSTER", "K3S", "CA", "STATUS"];
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: [&str; 7]| {
        let mut out = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  "));
            }
        }
        println!("{out}");
    };
    line(header);
    for r in &rows {
        line(r.each_ref().map(|s| s.as_str()));
    }
}
