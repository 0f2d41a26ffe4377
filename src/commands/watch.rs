//! `chocoimg watch`: one row per profile node, its bring-up stage as the node announces
//! it over mDNS (proof checked), refreshed as announcements change. Exit 0 once every
//! node is up (server `k3s-running`, agents `joined`: both mean Ready in K3s), 1 as soon
//! as a node reports `failed`, 4 on `--timeout`. With several servers (`mode: ha`) it
//! also shows the order the servers came up in.
use crate::bringup::Stage;
use crate::cli::{Global, WatchArgs};
use crate::cluster::watch::{self, Announcement, Change, Ignored, Row, Table};
use crate::commands::inputs::{existing_secrets, load_plan_for, timeout_arg};
use crate::errors::{EXIT_FAILURE, EXIT_NOT_FOUND};
use crate::plan::Purpose;
use anyhow::Result;
use serde_json::json;
use std::io::{IsTerminal, Write};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// How the changes are shown.
enum Output {
    /// A table redrawn in place, with the last few ignored announcements under it.
    Live { drawn: usize, notes: Vec<String> },
    /// One plain line per change (no terminal: a pipe, a log, CI).
    Lines,
    /// One JSON object per line per change.
    Json,
}

pub fn run(global: &Global, args: &WatchArgs) -> Result<i32> {
    let plan = load_plan_for(global, Purpose::NoSeeds)?;
    let timeout = args.timeout.map(timeout_arg).transpose()?;
    let secrets = existing_secrets(&plan)?;
    let mut table = Table::new(plan.nodes.iter().map(|n| (n.hostname.clone(), n.role)));
    let mut out = if args.json {
        Output::Json
    } else if std::io::stdout().is_terminal() {
        Output::Live {
            drawn: 0,
            notes: Vec::new(),
        }
    } else {
        Output::Lines
    };
    let started = Instant::now();
    out.start(&plan.cluster, &table);
    let stopped = watch::browse(
        &plan.cluster,
        &secrets.agent_token,
        timeout.map(|t| started + t),
        |a| {
            let before = join_order(&table);
            if let Some(change) = table.apply(&a) {
                out.change(&table, &change, &a);
                if join_order(&table) != before {
                    out.join_order(&table);
                }
            }
            Ok(!(table.all_up() || table.first_failed().is_some()))
        },
    )?;
    if let Some(row) = table.first_failed() {
        let seen = row.failed().expect("a failed row has its stage");
        out.end("failed", json!({"node": row.node, "reason": seen.reason}));
        eprintln!(
            "{} failed: {} (since {}){}",
            row.node,
            seen.reason.as_deref().unwrap_or("no reason given"),
            clock(seen.since),
            seen.addresses
                .first()
                .map(|a| format!(
                    ".\nIts logs: ssh {}@{a} journalctl -u chocoimg-stage -u {} -u cloud-final",
                    plan.ssh.user,
                    if row.role == crate::profile::Role::Server {
                        "k3s"
                    } else {
                        "k3s-agent -u chocoimg-join"
                    }
                ))
                .unwrap_or_default()
        );
        return Ok(EXIT_FAILURE);
    }
    if !stopped {
        let waiting: Vec<String> = table
            .rows
            .iter()
            .filter(|r| !r.is_up())
            .map(|r| format!("{} ({})", r.node, stage_cell(r)))
            .collect();
        out.end("timeout", json!({"waiting_for": waiting}));
        let seconds = timeout.map(|t| t.as_secs_f64()).unwrap_or_default();
        eprintln!(
            "timed out after {seconds:.0} s; still waiting for {}",
            waiting.join(", ")
        );
        if table.rows.iter().all(|r| r.seen.is_none()) {
            eprintln!(
                "No node was heard at all. Likely causes: the nodes are still installing \
                 Ubuntu (the stages start at the installed system's first boot), this \
                 computer is on another network or Wi-Fi than the nodes (guest network, \
                 VPN, client isolation), or, on macOS, the terminal lacks Local Network \
                 permission (System Settings > Privacy & Security > Local Network)."
            );
        }
        return Ok(EXIT_NOT_FOUND);
    }
    let order = join_order(&table);
    out.end(
        "up",
        if order.is_empty() {
            json!({})
        } else {
            json!({ "join_order": order })
        },
    );
    let summary: Vec<String> = table
        .rows
        .iter()
        .map(|r| format!("{} {}", r.node, stage_cell(r)))
        .collect();
    eprintln!("every node is up and Ready: {}", summary.join(", "));
    if let Some(line) = join_order_line(&table) {
        eprintln!("{line}");
    }
    // With --fetch-kubeconfig the dispatcher runs fetch-kubeconfig next.
    if !args.fetch_kubeconfig {
        eprintln!("next: run `chocoimg fetch-kubeconfig`, then `kubectl get nodes`");
    }
    Ok(0)
}

impl Output {
    fn start(&mut self, cluster: &str, table: &Table) {
        match self {
            Output::Json => {}
            Output::Lines => {
                let nodes: Vec<&str> = table.rows.iter().map(|r| r.node.as_str()).collect();
                println!(
                    "watching the bring-up of cluster {cluster}: {} (not seen yet)",
                    nodes.join(", ")
                );
            }
            Output::Live { .. } => self.redraw(table),
        }
    }

    fn change(&mut self, table: &Table, change: &Change, a: &Announcement) {
        match (self, change) {
            (Output::Json, Change::Row(i)) => {
                let r = &table.rows[*i];
                let seen = r.seen.as_ref().expect("a changed row was seen");
                line(&json!({
                    "event": "stage",
                    "node": r.node,
                    "role": r.role,
                    "stage": seen.stage,
                    "reason": seen.reason,
                    "since": seen.since,
                    "since_utc": clock(seen.since),
                    "addresses": seen.addresses,
                    "verdict": "verified",
                }));
            }
            (Output::Json, Change::Ignored(why)) => {
                let mut v = serde_json::to_value(a).expect("announcements serialise");
                v["event"] = json!("ignored");
                // `why`: the kind (forged, replayed, ...); `detail`: the judge's words.
                if let Some(detail) = v.as_object_mut().and_then(|o| o.remove("why")) {
                    v["detail"] = detail;
                }
                v["why"] = json!(why);
                line(&v);
            }
            (Output::Lines, Change::Row(i)) => {
                let r = &table.rows[*i];
                println!(
                    "{}  {}  {}  since {}",
                    r.node,
                    stage_cell(r),
                    address_cell(r),
                    since_cell(r)
                );
            }
            (Output::Lines, Change::Ignored(why)) => println!("{}", ignored_note(*why, a)),
            (out @ Output::Live { .. }, change) => {
                if let (Output::Live { notes, .. }, Change::Ignored(why)) = (&mut *out, change) {
                    notes.push(ignored_note(*why, a));
                    let keep = notes.len().saturating_sub(3);
                    notes.drain(..keep);
                }
                out.redraw(table);
            }
        }
    }

    /// The servers' join order changed (`mode: ha`).
    fn join_order(&mut self, table: &Table) {
        match self {
            Output::Json => line(&json!({
                "event": "join-order",
                "servers": table.join_order().iter().map(|r| {
                    let since = r.seen.as_ref().map(|s| s.since).unwrap_or_default();
                    json!({"node": r.node, "since": since, "since_utc": clock(since)})
                }).collect::<Vec<_>>(),
            })),
            Output::Lines => {
                if let Some(l) = join_order_line(table) {
                    println!("{l}");
                }
            }
            // The table shows it under the rows.
            Output::Live { .. } => self.redraw(table),
        }
    }

    fn end(&mut self, result: &str, details: serde_json::Value) {
        if let Output::Json = self {
            let mut v = details;
            v["event"] = json!("end");
            v["result"] = json!(result);
            line(&v);
        }
    }

    /// Redraws the table over the previous one (cursor up, clear to the end).
    fn redraw(&mut self, table: &Table) {
        let Output::Live { drawn, notes } = self else {
            return;
        };
        let header = ["NODE", "ROLE", "STAGE", "ADDRESS", "SINCE"];
        let rows: Vec<[String; 5]> = table
            .rows
            .iter()
            .map(|r| {
                [
                    r.node.clone(),
                    r.role.to_string(),
                    stage_cell(r),
                    address_cell(r),
                    since_cell(r),
                ]
            })
            .collect();
        let mut widths = header.map(str::len);
        for r in &rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.len());
            }
        }
        let mut text = String::new();
        let mut push = |cells: [&str; 5]| {
            let mut l = String::new();
            for (c, w) in cells.iter().zip(widths) {
                l.push_str(&format!("{c:<w$}  "));
            }
            text.push_str(l.trim_end());
            text.push('\n');
        };
        push(header);
        for r in &rows {
            push([&r[0], &r[1], &r[2], &r[3], &r[4]].map(String::as_str));
        }
        if let Some(l) = join_order_line(table) {
            text.push_str(&l);
            text.push('\n');
        }
        for n in notes.iter() {
            text.push_str(n);
            text.push('\n');
        }
        let mut stdout = std::io::stdout().lock();
        if *drawn > 0 {
            let _ = write!(stdout, "\x1b[{}A\x1b[J", *drawn);
        }
        let _ = stdout.write_all(text.as_bytes());
        let _ = stdout.flush();
        *drawn = text.lines().count();
    }
}

/// The servers that are up, in the order they came up (empty with one server).
fn join_order(table: &Table) -> Vec<String> {
    table.join_order().iter().map(|r| r.node.clone()).collect()
}

/// `servers up, in join order: master1 (2026-...Z), master2 (...) (2 of 3)`, or None
/// with one server.
fn join_order_line(table: &Table) -> Option<String> {
    let servers = table
        .rows
        .iter()
        .filter(|r| r.role == crate::profile::Role::Server)
        .count();
    if servers < 2 {
        return None;
    }
    let up: Vec<String> = table
        .join_order()
        .iter()
        .map(|r| {
            let since = r.seen.as_ref().map(|s| s.since).unwrap_or_default();
            format!("{} ({})", r.node, clock(since))
        })
        .collect();
    Some(if up.is_empty() {
        format!("servers up, in join order: none yet (0 of {servers})")
    } else {
        format!(
            "servers up, in join order: {} ({} of {servers})",
            up.join(", "),
            up.len()
        )
    })
}

/// One JSON line, flushed at once (a script reads it as it comes).
fn line(v: &serde_json::Value) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{v}");
    let _ = stdout.flush();
}

fn stage_cell(r: &Row) -> String {
    match &r.seen {
        None => "not seen yet".into(),
        Some(s) => match &s.reason {
            Some(reason) if s.stage == Stage::Failed => format!("failed: {reason}"),
            _ => s.stage.as_str().into(),
        },
    }
}

fn address_cell(r: &Row) -> String {
    match &r.seen {
        Some(s) if !s.addresses.is_empty() => s
            .addresses
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(","),
        _ => "-".into(),
    }
}

fn since_cell(r: &Row) -> String {
    match &r.seen {
        None => "-".into(),
        Some(s) => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let ago = match now.saturating_sub(s.since) {
                0..=9 => "just now".to_string(),
                n @ 10..=119 => format!("{n} s ago"),
                n => format!("{} min ago", n / 60),
            };
            format!("{} ({ago})", clock(s.since))
        }
    }
}

/// The node's time in UTC, e.g. `2026-11-28T09:12:03Z`.
fn clock(unix: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

fn ignored_note(why: Ignored, a: &Announcement) -> String {
    let from = match a.addresses.first() {
        Some(addr) => format!("{} at {addr}", a.instance),
        None => a.instance.clone(),
    };
    let claim = match (&a.node, &a.cluster) {
        (Some(node), Some(cluster)) => format!("{node} of {cluster} is {}", a.stage_text()),
        _ => "a malformed stage".into(),
    };
    format!("ignored ({}): {from} claims {claim}", why.label())
}
