//! `chocoimg discover`: list the K3s servers announced on the LAN, judged by our proof.
//! Exit 0 when a verified server of our cluster answered, 4 when none did.
use crate::cli::{DiscoverArgs, Global};
use crate::cluster::discover::{self, Browse, Choice};
use crate::commands::inputs::{existing_secrets, load_plan_for, timeout_arg};
use crate::errors::EXIT_NOT_FOUND;
use crate::plan::Purpose;

pub fn run(global: &Global, args: &DiscoverArgs) -> anyhow::Result<i32> {
    let plan = load_plan_for(global, Purpose::NoSeeds)?;
    let timeout = timeout_arg(args.timeout)?;
    let secrets = existing_secrets(&plan)?;
    let servers = discover::browse(
        &plan.cluster,
        &secrets.agent_token,
        Browse {
            timeout,
            stop_at_first_verified: args.first,
        },
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&servers)?);
    } else if !servers.is_empty() {
        print_table(&servers);
    }
    match discover::choose(&servers, &plan.server().hostname) {
        Choice::One { notes, .. } => {
            for note in notes {
                eprintln!("note: {note}");
            }
            Ok(0)
        }
        // Refuse to guess: listed above, the user picks with --server.
        Choice::Conflict(msg) => {
            eprintln!("{msg}");
            Ok(crate::errors::EXIT_FAILURE)
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
    let rows: Vec<[String; 6]> = servers
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
            let status = s.status();
            [
                s.instance.clone(),
                addr,
                s.port.to_string(),
                s.cluster.clone().unwrap_or_default(),
                s.k3s.clone().unwrap_or_default(),
                status,
            ]
        })
        .collect();
    let header = ["NAME", "ADDRESS", "PORT", "CLUSTER", "K3S", "STATUS"];
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: [&str; 6]| {
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
        line([&r[0], &r[1], &r[2], &r[3], &r[4], &r[5]].map(|s| s.as_str()));
    }
}
