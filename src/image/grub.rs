//! The GRUB menu on the stick: a first entry that installs this node unattended (or,
//! on a machine that already holds a chocoimg node, one that stops: see crate::guard),
//! the entry that reinstalls on purpose, then the ISO's own entries, unchanged but for
//! their timeout.
use super::error::ImageError;
use super::identity::Identity;
use super::ubuntu::GRUB_CFG;
use crate::guard;
use minijinja::context;
/// Seconds before the install entry starts by itself.
pub const TIMEOUT_SECS: u32 = 10;

/// The patched menu and what `inspect` reports about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootMenu {
    pub text: String,
    /// The first entry's title.
    pub title: String,
    /// The first entry's `linux` arguments (kernel path and command line).
    pub kernel_line: String,
    /// The entry that installs over an installed node, and its `linux` arguments.
    pub reinstall_title: String,
    pub reinstall_kernel_line: String,
}

/// Renders the menu for `id` from the ISO's `original` grub.cfg. The first original
/// entry gives the kernel and initrd paths (and any arguments, kept).
pub fn render(original: &str, id: &Identity) -> Result<BootMenu, ImageError> {
    let first = first_entry(original).ok_or_else(|| ImageError::GrubLayout {
        detail: "it has no menuentry with a `linux` and an `initrd` line".into(),
    })?;
    let kernel_line = with_words(&first.linux, &["autoinstall"]);
    let reinstall_kernel_line = with_words(&first.linux, &["autoinstall", guard::REINSTALL_ARG]);
    let reinstall_title = guard::reinstall_title(&id.node);
    let title = format!(
        "Install {} ({}) of {} - ERASES the target disk",
        id.node, id.role, id.cluster
    );
    // Our entry comes first. The template sets timeout and default last, so they win
    // whatever the ISO's menu does; its plain `set` lines are dropped only to read clearly.
    let kept: String = original
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            !t.starts_with("set timeout=") && !t.starts_with("set default=")
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let text = crate::templates::environment()
        .get_template("grub.cfg")
        .and_then(|t| {
            t.render(context! {
                chocoimg_version => id.chocoimg_version,
                cluster => id.cluster,
                node => id.node,
                role => id.role,
                timeout => TIMEOUT_SECS,
                title => title,
                kernel_line => kernel_line,
                marker => guard::MARKER,
                reinstall_title => reinstall_title,
                reinstall_kernel_line => reinstall_kernel_line,
                initrd_line => first.initrd,
                original => kept.trim(),
            })
        })
        .map_err(|e| ImageError::GrubLayout {
            detail: format!("rendering templates/grub.cfg: {e}"),
        })?;
    Ok(BootMenu {
        text,
        title,
        kernel_line,
        reinstall_title,
        reinstall_kernel_line,
    })
}

/// What a menu entry boots: the rest of its `linux` and `initrd` lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub title: String,
    pub linux: String,
    pub initrd: String,
}

/// The first `menuentry` that has both a `linux` and an `initrd` line.
pub fn first_entry(cfg: &str) -> Option<Entry> {
    entries(cfg).into_iter().next()
}

/// The entry that reinstalls over an installed node (its kernel gets the guard's
/// argument), if the menu has one.
pub fn reinstall_entry(cfg: &str) -> Option<Entry> {
    entries(cfg).into_iter().find(|e| {
        e.linux
            .split_whitespace()
            .any(|w| w == guard::REINSTALL_ARG)
    })
}

/// Every top-level `menuentry` (inside an `if` too) with a `linux` and an `initrd` line.
fn entries(cfg: &str) -> Vec<Entry> {
    let mut found = Vec::new();
    let mut current: Option<Entry> = None;
    let mut depth = 0i32;
    for line in cfg.lines() {
        let t = line.trim();
        if depth == 0 && t.starts_with("menuentry") {
            current = Some(Entry {
                title: entry_title(t),
                linux: String::new(),
                initrd: String::new(),
            });
        }
        if let Some(e) = current.as_mut() {
            let mut words = t.splitn(2, char::is_whitespace);
            match (words.next(), words.next()) {
                (Some("linux" | "linuxefi"), Some(rest)) => e.linux = rest.trim().to_string(),
                (Some("initrd" | "initrdefi"), Some(rest)) => e.initrd = rest.trim().to_string(),
                _ => {}
            }
        }
        depth += t.matches('{').count() as i32 - t.matches('}').count() as i32;
        if depth <= 0 {
            depth = 0;
            if let Some(e) = current.take() {
                if !e.linux.is_empty() && !e.initrd.is_empty() {
                    found.push(e);
                }
            }
        }
    }
    found
}

fn entry_title(line: &str) -> String {
    let rest = line.trim_start_matches("menuentry").trim_start();
    match rest.chars().next() {
        Some(q @ ('"' | '\'')) => rest[1..].split(q).next().unwrap_or("").to_string(),
        _ => rest.split_whitespace().next().unwrap_or("").to_string(),
    }
}

/// Whether a GRUB script hands over to the main menu, `/boot/grub/grub.cfg`
/// (`source` or `configfile`, by absolute path or through `$prefix`).
pub fn goes_on_to_main_menu(cfg: &str) -> bool {
    cfg.lines().any(|line| {
        let mut words = line.split_whitespace();
        let command = words.next();
        let target = words
            .next()
            .unwrap_or("")
            .trim_matches(|c| c == '"' || c == '\'');
        matches!(command, Some("source" | "configfile"))
            && (target.ends_with(GRUB_CFG)
                || target == "$prefix/grub.cfg"
                || target == "${prefix}/grub.cfg")
    })
}

/// `extra` words go before `---` (arguments after it are the installed system's), each
/// once.
fn with_words(linux: &str, extra: &[&str]) -> String {
    let words: Vec<&str> = linux.split_whitespace().collect();
    let split = words
        .iter()
        .position(|w| *w == "---")
        .unwrap_or(words.len());
    let mut out: Vec<&str> = words[..split].to_vec();
    out.extend(extra.iter().filter(|w| !words.contains(w)));
    out.extend(&words[split..]);
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const UBUNTU: &str = "set timeout=30\n\nloadfont unicode\n\nmenuentry \"Try or Install Ubuntu Server\" {\n\tset gfxpayload=keep\n\tlinux\t/casper/vmlinuz  ---\n\tinitrd\t/casper/initrd\n}\nmenuentry \"Ubuntu Server with the HWE kernel\" {\n\tset gfxpayload=keep\n\tlinux\t/casper/hwe-vmlinuz  ---\n\tinitrd\t/casper/hwe-initrd\n}\n";

    fn id() -> Identity {
        Identity {
            cluster: "chocolandiadc-mvp".into(),
            node: "master1".into(),
            role: "server".into(),
            k3s_version: "v1.28.15+k3s1".into(),
            ubuntu_release: "22.04.5".into(),
            chocoimg_version: "0.1.0".into(),
        }
    }

    #[test]
    fn first_entry_installs_unattended_and_originals_follow() {
        let m = render(UBUNTU, &id()).unwrap();
        assert_eq!(m.kernel_line, "/casper/vmlinuz autoinstall ---");
        assert!(m.title.contains("ERASES") && m.title.contains("master1"));
        assert!(m.text.contains("set timeout=10\n"));
        assert!(!m.text.contains("set timeout=30"));
        assert!(!m.text.contains("console=ttyS0"));
        let ours = m.text.find(&m.title).unwrap();
        let theirs = m.text.find("Try or Install Ubuntu Server").unwrap();
        assert!(ours < theirs);
        assert!(m.text.contains("/casper/hwe-vmlinuz  ---"));
        let again = first_entry(&m.text).unwrap();
        assert_eq!(again.title, m.title);
        assert_eq!(again.initrd, "/casper/initrd");
    }

    #[test]
    fn the_menu_ends_with_our_timeout_and_default_whatever_the_iso_sets() {
        let odd = UBUNTU.replace(
            "set timeout=30\n",
            "if [ x = x ]; then\n  timeout=-1\nfi\nset  default=1\n",
        );
        let m = render(&odd, &id()).unwrap();
        let lines: Vec<&str> = m.text.trim_end().lines().collect();
        assert_eq!(
            lines[lines.len() - 2..],
            ["set default=0", "set timeout=10"]
        );
    }

    #[test]
    fn autoinstall_goes_before_the_separator_once() {
        let auto = |l| with_words(l, &["autoinstall"]);
        assert_eq!(auto("/k quiet --- x"), "/k quiet autoinstall --- x");
        assert_eq!(auto("/k"), "/k autoinstall");
        assert_eq!(auto("/k autoinstall ---"), "/k autoinstall ---");
        assert_eq!(
            with_words("/k autoinstall ---", &["autoinstall", "chocoimg.reinstall"]),
            "/k autoinstall chocoimg.reinstall ---"
        );
    }

    #[test]
    fn only_the_reinstall_entry_passes_the_guard() {
        let m = render(UBUNTU, &id()).unwrap();
        assert_eq!(m.reinstall_title, "Reinstall master1 - ERASES the disk");
        assert_eq!(
            m.reinstall_kernel_line,
            "/casper/vmlinuz autoinstall chocoimg.reinstall ---"
        );
        assert!(!m.kernel_line.contains(guard::REINSTALL_ARG));
        let again = reinstall_entry(&m.text).unwrap();
        assert_eq!(again.title, m.reinstall_title);
        assert_eq!(again.linux, m.reinstall_kernel_line);
        // The stop entry comes first in the menu and boots nothing.
        let stop = m.text.find("menuentry \"Stop: ").unwrap();
        assert!(stop < m.text.find(&m.title).unwrap());
        assert!(m
            .text
            .contains(&format!("--set=chocoimg_disk {}", guard::MARKER)));
        assert!(reinstall_entry(UBUNTU).is_none());
    }

    #[test]
    fn an_efi_menu_must_go_on_to_the_main_menu() {
        let ubuntu = "insmod part_acorn\ninsmod part_gpt\nsource /boot/grub/grub.cfg\n";
        assert!(goes_on_to_main_menu(ubuntu));
        assert!(goes_on_to_main_menu("configfile \"$prefix/grub.cfg\"\n"));
        assert!(goes_on_to_main_menu("source ($root)/boot/grub/grub.cfg\n"));
        assert!(!goes_on_to_main_menu("insmod part_gpt\n"));
        assert!(!goes_on_to_main_menu(
            "menuentry \"Install\" {\n\tlinux /casper/vmlinuz\n}\n# source /boot/grub/grub.cfg\n"
        ));
        assert!(!goes_on_to_main_menu(
            "source /boot/grub/x86_64-efi/other.cfg\n"
        ));
    }

    #[test]
    fn a_menu_without_a_kernel_is_refused() {
        assert!(matches!(
            render("set timeout=5\n", &id()),
            Err(ImageError::GrubLayout { .. })
        ));
    }

    #[test]
    fn the_menu_fits_the_block_of_the_22_04_5_menu_with_long_names() {
        // Ubuntu 22.04.5's grub.cfg is 574 bytes and owns one 2048-byte block; the
        // ISO's menu cannot grow past it (names of 63 characters do not fit: build says so).
        let original = format!("{UBUNTU}{}\n", "#".repeat(574 - UBUNTU.len() - 1));
        let mut long = id();
        long.node = "n".repeat(24);
        long.cluster = "c".repeat(24);
        let m = render(&original, &long).unwrap();
        assert!(m.text.len() <= 2048, "{} bytes", m.text.len());
    }
}
