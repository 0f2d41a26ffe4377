//! Every template chocoimg renders, embedded from `templates/`, and the one minijinja
//! environment that renders them: strict undefined (a missing value is an error, not an
//! empty string), trailing newlines kept, and two filters: `yaml` (serialise, never
//! paste) and `sh` (single-quote for POSIX sh).
use anyhow::{Context, Result};
use std::sync::OnceLock;

/// Each template by its path under `templates/`.
const TEMPLATES: &[(&str, &str)] = &[
    (
        "user-data.yaml",
        include_str!("../templates/user-data.yaml"),
    ),
    (
        "meta-data.yaml",
        include_str!("../templates/meta-data.yaml"),
    ),
    ("grub.cfg", include_str!("../templates/grub.cfg")),
    (
        "installer/guard.sh",
        include_str!("../templates/installer/guard.sh"),
    ),
    ("node/lib.sh", include_str!("../templates/node/lib.sh")),
    (
        "node/ha-server.sh",
        include_str!("../templates/node/ha-server.sh"),
    ),
    (
        "node/avahi-config.sh",
        include_str!("../templates/node/avahi-config.sh"),
    ),
    (
        "node/announce.sh",
        include_str!("../templates/node/announce.sh"),
    ),
    ("node/join.sh", include_str!("../templates/node/join.sh")),
    (
        "node/browse.sh",
        include_str!("../templates/node/browse.sh"),
    ),
    (
        "node/bootstrap.sh",
        include_str!("../templates/node/bootstrap.sh"),
    ),
    (
        "node/chocoimg-bootstrap.service",
        include_str!("../templates/node/chocoimg-bootstrap.service"),
    ),
    (
        "node/chocoimg-bootstrap.timer",
        include_str!("../templates/node/chocoimg-bootstrap.timer"),
    ),
    (
        "node/k3s-server-dropin.conf",
        include_str!("../templates/node/k3s-server-dropin.conf"),
    ),
    ("node/stage.sh", include_str!("../templates/node/stage.sh")),
    (
        "node/chocoimg-stage.service",
        include_str!("../templates/node/chocoimg-stage.service"),
    ),
    (
        "node/chocoimg-stage.timer",
        include_str!("../templates/node/chocoimg-stage.timer"),
    ),
    (
        "node/chocoimg-announce.service",
        include_str!("../templates/node/chocoimg-announce.service"),
    ),
    (
        "node/chocoimg-announce.timer",
        include_str!("../templates/node/chocoimg-announce.timer"),
    ),
    (
        "node/chocoimg-join.service",
        include_str!("../templates/node/chocoimg-join.service"),
    ),
    (
        "node/chocoimg-join.timer",
        include_str!("../templates/node/chocoimg-join.timer"),
    ),
    (
        "node/k3s-agent-dropin.conf",
        include_str!("../templates/node/k3s-agent-dropin.conf"),
    ),
    (
        "node/avahi-daemon-dropin.conf",
        include_str!("../templates/node/avahi-daemon-dropin.conf"),
    ),
    ("node/sudoers", include_str!("../templates/node/sudoers")),
    (
        "node/chocoimg-boot.tmpfiles",
        include_str!("../templates/node/chocoimg-boot.tmpfiles"),
    ),
];

/// The environment, built once per process.
pub fn environment() -> &'static minijinja::Environment<'static> {
    static ENV: OnceLock<minijinja::Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.set_keep_trailing_newline(true);
        // minijinja would JSON-escape `*.yaml` by name; the `yaml` filter does the quoting.
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        // `{% include "lib.sh" %}` in node/x.sh means node/lib.sh: names are relative to
        // the including template's folder.
        env.set_path_join_callback(|name, parent| match parent.rsplit_once('/') {
            Some((dir, _)) if !name.contains('/') => format!("{dir}/{name}").into(),
            _ => name.into(),
        });
        env.add_filter("yaml", yaml_filter);
        env.add_filter("sh", |v: String| sh_quote(&v));
        for (name, source) in TEMPLATES {
            env.add_template(name, source)
                .expect("the embedded templates are valid");
        }
        env
    })
}

/// Renders `templates/<name>` with `ctx`.
pub fn render(name: &str, ctx: minijinja::Value) -> Result<String> {
    environment()
        .get_template(name)
        .and_then(|t| t.render(ctx))
        .with_context(|| format!("rendering templates/{name}"))
}

/// Single-quotes a value for POSIX sh.
pub fn sh_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// Serialises a value as YAML for the slot after `key:` (the template puts no space
/// there): scalars inline after one space, collections as a block on the following lines
/// indented by `indent` spaces.
fn yaml_filter(value: minijinja::Value, indent: usize) -> Result<String, minijinja::Error> {
    let text = serde_yaml_ng::to_string(&value).map_err(|e| {
        minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string())
    })?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    let is_block = value.kind() == minijinja::value::ValueKind::Map
        || value.kind() == minijinja::value::ValueKind::Seq;
    if !is_block || text == "{}" || text == "[]" {
        return Ok(format!(" {text}"));
    }
    let pad = " ".repeat(indent);
    let mut out = String::new();
    for line in text.lines() {
        out.push('\n');
        if !line.is_empty() {
            out.push_str(&pad);
        }
        out.push_str(line);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(sh_quote("a'b"), r"'a'\''b'");
        assert_eq!(sh_quote(""), "''");
    }

    #[test]
    fn every_template_is_embedded_once() {
        let names: std::collections::BTreeSet<_> = TEMPLATES.iter().map(|(n, _)| n).collect();
        assert_eq!(names.len(), TEMPLATES.len());
        assert!(environment().get_template("node/lib.sh").is_ok());
    }
}
