//! Kubernetes label syntax (k8s.io/apimachinery validation: `IsQualifiedName`,
//! `IsValidLabelValue`), checked on the laptop: a label the API server refuses would
//! reach K3s's `node-label` and keep the node from ever registering.

/// Why `key=value` is not a valid Kubernetes label, or None when it is.
pub fn problem(key: &str, value: &str) -> Option<String> {
    key_problem(key)
        .or_else(|| value_problem(value))
        .map(|why| format!("`{key}: {value}` is not a valid Kubernetes label: {why}"))
}

/// A key is `[prefix/]name`: the prefix a DNS subdomain of at most 253 characters.
fn key_problem(key: &str) -> Option<String> {
    let parts: Vec<&str> = key.split('/').collect();
    let (prefix, name) = match parts.as_slice() {
        [name] => (None, *name),
        [prefix, name] => (Some(*prefix), *name),
        _ => return Some("a key has at most one '/' (prefix/name, e.g. example.com/zone)".into()),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            return Some(
                "the prefix before '/' is empty; write example.com/zone, or just zone".into(),
            );
        }
        if prefix.len() > 253 || !is_dns_subdomain(prefix) {
            return Some(format!(
                "the prefix {prefix:?} is not a DNS subdomain (lowercase letters, digits, '-' \
                 and '.', each part starting and ending with a letter or digit, at most 253 \
                 characters, e.g. example.com)"
            ));
        }
    }
    if name.is_empty() {
        return Some("the name after the prefix is empty".into());
    }
    if !is_label_text(name) {
        return Some(format!("the name {name:?} {TEXT_RULE}"));
    }
    None
}

/// A value is empty, or what a name is.
fn value_problem(value: &str) -> Option<String> {
    (!value.is_empty() && !is_label_text(value)).then(|| format!("the value {value:?} {TEXT_RULE}"))
}

const TEXT_RULE: &str = "must have at most 63 characters (letters, digits, '-', '_', '.') \
                         and begin and end with a letter or digit";

/// A label name or a non-empty value: `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, ≤ 63.
fn is_label_text(s: &str) -> bool {
    s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// RFC 1123 subdomain: dot-separated labels of lowercase letters, digits and '-'.
fn is_dns_subdomain(s: &str) -> bool {
    s.split('.').all(|part| {
        !part.is_empty()
            && part.len() <= 63
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !part.starts_with('-')
            && !part.ends_with('-')
    })
}

#[cfg(test)]
mod tests {
    use super::problem;

    #[test]
    fn the_kubernetes_rules() {
        for ok in [
            ("role", "worker"),
            ("role", ""),
            ("example.com/zone", "a.b_c-d"),
            ("topology.kubernetes.io/zone", "living-room"),
            ("A_b.c", "Z9"),
        ] {
            assert_eq!(problem(ok.0, ok.1), None, "{ok:?}");
        }
        let long_prefix = format!("{}.com/zone", "a.".repeat(126));
        for bad in [
            ("a=b/zone", "x"),
            ("Bad_Prefix!/zone", "x"),
            ("a/b/c", "x"),
            ("/zone", "x"),
            ("zone/", "x"),
            ("-a", "x"),
            (long_prefix.as_str(), "x"),
            (&"n".repeat(64), "x"),
            ("role", "-a"),
            ("role", "a-"),
            ("role", &"v".repeat(64)),
            ("role", "a b"),
        ] {
            assert!(problem(bad.0, bad.1).is_some(), "{bad:?}");
        }
    }
}
