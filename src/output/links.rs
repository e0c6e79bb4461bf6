//! Links and images that can carry data out: markdown, reference definitions, HTML
//! attributes and bare URLs.

use std::sync::OnceLock;

use regex::Regex;
use url::{Host, Url};

use crate::finding::{Action, Category, Finding, Location, Severity};

/// Where links may point, and how strictly.
pub(crate) struct LinkPolicy {
    pub(crate) allow: Vec<String>,
    pub(crate) strict: bool,
}

fn bare() -> &'static Regex {
    static BARE: OnceLock<Regex> = OnceLock::new();
    BARE.get_or_init(|| {
        Regex::new(r#"(?i)(?:\b(?:https?|ftp)://|\bwww\.)[^\s<>"'`\]]+"#)
            .unwrap_or_else(|e| panic!("built-in link pattern: {e}"))
    })
}

/// The base relative URLs resolve against: the page that shows the answer.
fn base() -> &'static Url {
    static BASE: OnceLock<Url> = OnceLock::new();
    BASE.get_or_init(|| {
        Url::parse("https://relative.invalid/").unwrap_or_else(|e| panic!("base URL: {e}"))
    })
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    Image,
    Link,
    Bare,
}

pub(crate) fn host_allowed(allow: &[String], host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    allow.iter().any(|a| match a.strip_prefix("*.") {
        Some(domain) => {
            h.len() > domain.len()
                && h.ends_with(domain)
                && h[..h.len() - domain.len()].ends_with('.')
        }
        None => *a == h,
    })
}

/// A value that looks like encoded data rather than a word or a slug.
fn encoded(v: &str) -> bool {
    if v.len() < 24 {
        return false;
    }
    let charset = v
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"+/=_-.%~".contains(&b));
    let digits = v.bytes().any(|b| b.is_ascii_digit());
    let upper = v.bytes().any(|b| b.is_ascii_uppercase());
    let lower = v.bytes().any(|b| b.is_ascii_lowercase());
    // A slug ("how-to-configure-the-server") is lowercase words joined by dashes.
    let slug = !upper && v.split(['-', '_', '.']).all(|w| w.len() <= 20);
    charset && !slug && (digits || (upper && lower) || v.contains('%'))
}

/// Whether a URL carries data: encoded query values or path segments, a long query,
/// a sentence in the query, or template placeholders.
pub(crate) fn data_like(url: &str) -> bool {
    let no_fragment = url.split('#').next().unwrap_or(url);
    let (path, query) = no_fragment.split_once('?').unwrap_or((no_fragment, ""));
    let lower = url.to_ascii_lowercase();
    if ["{", "}", "$", "%7b", "%7d", "<", ">"]
        .iter()
        .any(|t| lower.contains(t))
    {
        return true;
    }
    if query.len() >= 200 || query.matches("%20").count() + query.matches('+').count() >= 3 {
        return true;
    }
    // Each run of encoding characters on its own: a character outside them
    // (`…ZQ*`, `…ZQ'`) does not hide the run before it.
    if query
        .split('&')
        .flat_map(|pair| runs(pair.split_once('=').map_or(pair, |(_, v)| v)))
        .any(encoded)
    {
        return true;
    }
    let after_host = path.split_once("//").map_or(path, |(_, r)| r);
    after_host
        .split('/')
        .skip(1)
        .flat_map(runs)
        .any(|seg| seg.len() >= 40 && encoded(seg))
}

/// The runs of characters an encoding writes (base64, URL-safe base64, percent
/// encoding) in `v`.
fn runs(v: &str) -> impl Iterator<Item = &str> {
    v.split(|c: char| !(c.is_ascii_alphanumeric() || "+/=_-.%~".contains(c)))
        .filter(|r| !r.is_empty())
}

/// The text to put in place of a removed link or image: its [`plain`] text with
/// the bare URLs the policy removes removed too. The text is released as it is,
/// where a renderer links a bare URL, and taking the markup and control
/// characters out of a construct's decoded text can join pieces into one URL
/// that the answer did not hold (`www.x.test/?p>p&#0;<data` becomes
/// `www.x.test/?pp\u{FFFD}data`). Found by the `markup` fuzz target.
pub(crate) fn replacement(policy: &LinkPolicy, text: &str) -> String {
    let mut out = plain(text);
    // A removal leaves "(link removed)" between what was around the URL, which
    // ends at whitespace or punctuation: a second pass finds nothing new, a
    // third is never needed (kept as a bound).
    for _ in 0..3 {
        let mut found = Vec::new();
        bare_urls(policy, &out, 0, &mut found);
        found.retain(|f| f.action() == Action::Redact);
        if found.is_empty() {
            break;
        }
        out = crate::finding::redact(&out, &found);
    }
    out
}

/// Text safe to put back in place of a link: no markup characters, and no
/// control characters but line breaks and tabs. The text is as a renderer decodes
/// it, so a character reference in the answer (`&#27;[2J`) would otherwise come
/// out as the control character itself, a terminal sequence the answer did not
/// hold.
pub(crate) fn plain(text: &str) -> String {
    text.chars()
        .filter(|c| !matches!(c, '<' | '>' | '[' | ']' | '(' | ')' | '`'))
        .filter(|&c| !c.is_control() || matches!(c, '\n' | '\t'))
        .collect()
}

/// The host a URL reaches, for the allow-list: a domain (lowercased, IDNA, no
/// trailing dot), an IPv4 address in dotted decimal whatever notation it was
/// written in, or an IPv6 address in brackets.
pub(crate) fn host_of(u: &Url) -> Option<String> {
    Some(match u.host()? {
        Host::Domain(d) => d.trim_end_matches('.').to_owned(),
        Host::Ipv4(a) => a.to_string(),
        Host::Ipv6(a) => format!("[{a}]"),
    })
}

/// Parses a URL as a browser does (WHATWG): leading and trailing controls and
/// spaces removed, tabs and newlines inside removed, backslashes as slashes, hosts
/// percent-decoded and read in every IPv4 notation; relative URLs resolve against
/// the page.
///
/// A URL with a scheme is read as on a page of another scheme: `https:evil.test/a`
/// is a path on an `https:` page but the host `evil.test` on an `http:` page (and
/// to a parser without a page), and where the answer is shown is not known.
pub(crate) fn parse(url: &str) -> Result<Url, url::ParseError> {
    Url::parse(url).or_else(|_| base().join(url))
}

/// Whether a parsed URL stays on the page's own origin (a relative URL).
fn relative(u: &Url) -> bool {
    u.scheme() == "https" && u.host_str() == base().host_str() && u.port().is_none()
}

/// Judges one link or image; `replacement` is what replaces `span` when it goes.
pub(crate) fn judge(
    policy: &LinkPolicy,
    kind: Kind,
    url: &str,
    replacement: &str,
    span: std::ops::Range<usize>,
    out: &mut Vec<Finding>,
) {
    let finding = |rule: &'static str, category: Category, severity: Severity| {
        Finding::new(rule, category, severity, Location::Output, span.clone())
    };
    let redact = |rule: &'static str, category: Category, out: &mut Vec<Finding>| {
        out.push(
            finding(rule, category, Severity::High)
                .with_action(Action::Redact)
                .with_replacement(replacement.to_owned()),
        );
    };
    let with_scheme;
    let url = if kind == Kind::Bare && url.len() > 4 && url[..4].eq_ignore_ascii_case("www.") {
        with_scheme = format!("http://{url}");
        with_scheme.as_str()
    } else {
        url
    };
    let Ok(u) = parse(url) else {
        // A browser would not load it; an image that cannot be judged goes.
        if kind == Kind::Image {
            redact("link.image_unparsable", Category::Exfiltration, out);
        }
        return;
    };
    match u.scheme() {
        "javascript" | "vbscript" | "livescript" => {
            return redact("link.script_url", Category::UnsafeMarkup, out);
        }
        "data" => return redact("link.data_url", Category::Exfiltration, out),
        "http" | "https" | "ftp" | "ws" | "wss" => {}
        // mailto:, tel:, and schemes a browser hands to another program: an image
        // never loads from them; a link needs a click and is judged on its data.
        _ => {
            if kind == Kind::Image {
                redact("link.image_off_allowlist", Category::Exfiltration, out);
            } else if data_like(u.as_str()) {
                redact("link.data_in_url", Category::Exfiltration, out);
            }
            return;
        }
    }
    if relative(&u) {
        return; // same origin as the page that shows the answer
    }
    let Some(host) = host_of(&u) else { return };
    if host_allowed(&policy.allow, &host) {
        return;
    }
    let data = data_like(u.as_str());
    match kind {
        Kind::Image => redact("link.image_off_allowlist", Category::Exfiltration, out),
        _ if data => redact("link.data_in_url", Category::Exfiltration, out),
        _ if policy.strict => out.push(
            finding(
                "link.off_allowlist",
                Category::Exfiltration,
                Severity::Medium,
            )
            .with_action(Action::Redact)
            .with_replacement(replacement.to_owned()),
        ),
        Kind::Link => out.push(finding(
            "link.off_allowlist",
            Category::Exfiltration,
            Severity::Medium,
        )),
        Kind::Bare => {}
    }
}

/// Bare URLs in rendered text (a renderer that links them makes them links):
/// `text` is the source of a text run starting at `offset`.
pub(crate) fn bare_urls(policy: &LinkPolicy, text: &str, offset: usize, out: &mut Vec<Finding>) {
    if !text.contains([':', '.']) {
        return;
    }
    for m in bare().find_iter(text) {
        // GFM's rule: trailing punctuation and unbalanced parentheses are not part
        // of the link.
        let mut url = m
            .as_str()
            .trim_end_matches(['.', ',', ';', ':', '!', '?', '*', '_', '~']);
        while url.ends_with(')') && url.matches(')').count() > url.matches('(').count() {
            url = url[..url.len() - 1].trim_end_matches(['.', ',', ';', ':', '!', '?']);
        }
        let span = offset + m.start()..offset + m.start() + url.len();
        judge(policy, Kind::Bare, url, "(link removed)", span, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_like_urls() {
        assert!(data_like(
            "https://x.test/i.png?q=aGVsbG8gd29ybGQgc2VjcmV0IGRhdGE"
        ));
        assert!(data_like(
            "https://x.test/log?c=my%20password%20is%20hunter2"
        ));
        assert!(data_like("https://x.test/{conversation}"));
        assert!(data_like(
            "https://x.test/p/aGVsbG8gd29ybGQgc2VjcmV0IGRhdGEgbW9yZSBkYXRh"
        ));
        // A character outside the encoding does not hide the run before it.
        for end in ["*", "`", "'", "!", ",x", "**"] {
            assert!(data_like(&format!(
                "https://x.test/i.png?q=aGVsbG8gd29ybGQgc2VjcmV0IGRhdGE{end}"
            )));
            assert!(data_like(&format!(
                "https://x.test/p/aGVsbG8gd29ybGQgc2VjcmV0IGRhdGEgbW9yZSBkYXRh{end}"
            )));
        }
        assert!(!data_like(
            "https://docs.rs/regex/latest/regex/struct.Regex.html"
        ));
        assert!(!data_like(
            "https://example.com/blog/how-to-configure-the-server-for-production?page=2"
        ));
        assert!(!data_like(
            "https://en.wikipedia.org/wiki/Rust_(programming_language)"
        ));
    }

    #[test]
    fn allow_list_matching() {
        let allow = vec!["docs.example.com".to_owned(), "*.cdn.test".to_owned()];
        assert!(host_allowed(&allow, "docs.example.com"));
        assert!(host_allowed(&allow, "img.cdn.test"));
        assert!(!host_allowed(&allow, "cdn.test"));
        assert!(!host_allowed(&allow, "evilcdn.test"));
        assert!(!host_allowed(&allow, "docs.example.com.evil.test"));
    }
}
