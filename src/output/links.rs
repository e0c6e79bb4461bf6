//! Links and images that can carry data out: markdown, reference definitions, HTML
//! attributes and bare URLs.

use regex::Regex;

use super::tools::url_host;
use crate::finding::{Action, Category, Finding, Location, Severity};

pub(crate) struct Patterns {
    markdown: Regex,
    reference: Regex,
    html: Regex,
    bare: Regex,
}

pub(crate) fn patterns() -> Patterns {
    let re = |p: &str| Regex::new(p).unwrap_or_else(|e| panic!("built-in link pattern: {e}"));
    Patterns {
        markdown: re(
            r#"(!?)\[([^\]\n]{0,512})\]\(\s*<?([^)\s>]*)>?(?:\s+(?:"[^"\n]*"|'[^'\n]*'))?\s*\)"#,
        ),
        reference: re(r"(?m)^[ \t]{0,3}\[[^\]\n]{1,256}\]:[ \t]*<?([^\s>]+)>?"),
        html: re(
            r#"(?i)<\s*(img|image|a|area|source|video|audio|input|track|embed|object|iframe|link)\b[^>]{0,1024}?\b(?:src|href|srcset|poster|data|action|formaction)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))[^>]{0,1024}>?"#,
        ),
        bare: re(r#"(?i)(?:\b(?:https?|ftp)://|\bwww\.)[^\s<>"'`)\]]+"#),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Image,
    Link,
    Bare,
}

fn host_allowed(allow: &[String], host: &str) -> bool {
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
    if query
        .split('&')
        .any(|pair| encoded(pair.split_once('=').map_or(pair, |(_, v)| v)))
    {
        return true;
    }
    let after_host = path.split_once("//").map_or(path, |(_, r)| r);
    after_host
        .split('/')
        .skip(1)
        .any(|seg| seg.len() >= 40 && encoded(seg))
}

/// Text safe to put back in place of a link: no markup characters.
fn plain(text: &str) -> String {
    text.chars()
        .filter(|c| !matches!(c, '<' | '>' | '[' | ']' | '(' | ')' | '`'))
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn judge(
    allow: &[String],
    strict: bool,
    kind: Kind,
    url: &str,
    label: &str,
    span: std::ops::Range<usize>,
    out: &mut Vec<Finding>,
) {
    let compact: String = url
        .chars()
        .filter(|c| !c.is_whitespace() && !c.is_control())
        .collect::<String>()
        .to_ascii_lowercase();
    let replacement = match kind {
        Kind::Bare => "[link removed]".to_owned(),
        _ => plain(label),
    };
    let finding = |rule: &'static str, category: Category, severity: Severity| {
        Finding::new(rule, category, severity, Location::Output, span.clone())
    };
    if ["javascript:", "vbscript:", "livescript:"]
        .iter()
        .any(|s| compact.starts_with(s))
        || compact.starts_with("&#")
    {
        out.push(
            finding("link.script_url", Category::UnsafeMarkup, Severity::High)
                .with_action(Action::Redact)
                .with_replacement(replacement),
        );
        return;
    }
    if compact.starts_with("data:") {
        out.push(
            finding("link.data_url", Category::Exfiltration, Severity::High)
                .with_action(Action::Redact)
                .with_replacement(replacement),
        );
        return;
    }
    let with_scheme;
    let u = if compact.starts_with("www.") {
        with_scheme = format!("http://{url}");
        with_scheme.as_str()
    } else {
        url
    };
    let absolute = compact.starts_with("//") || compact.contains("://");
    let Some(host) = absolute.then(|| url_host(u)).flatten() else {
        return; // relative: same origin as the page that shows the answer
    };
    if host_allowed(allow, host) {
        return;
    }
    let data = data_like(u);
    match kind {
        Kind::Image => out.push(
            finding(
                "link.image_off_allowlist",
                Category::Exfiltration,
                Severity::High,
            )
            .with_action(Action::Redact)
            .with_replacement(replacement),
        ),
        _ if data => out.push(
            finding("link.data_in_url", Category::Exfiltration, Severity::High)
                .with_action(Action::Redact)
                .with_replacement(replacement),
        ),
        _ if strict => out.push(
            finding(
                "link.off_allowlist",
                Category::Exfiltration,
                Severity::Medium,
            )
            .with_action(Action::Redact)
            .with_replacement(replacement),
        ),
        Kind::Link => out.push(finding(
            "link.off_allowlist",
            Category::Exfiltration,
            Severity::Medium,
        )),
        Kind::Bare => {}
    }
}

pub(crate) fn scan(
    p: &Patterns,
    allow: &[String],
    strict: bool,
    text: &str,
    out: &mut Vec<Finding>,
) {
    if !text.contains(['(', '<', ':', '.']) {
        return;
    }
    let mut covered: Vec<std::ops::Range<usize>> = Vec::new();
    for c in p.markdown.captures_iter(text) {
        let (Some(all), Some(url)) = (c.get(0), c.get(3)) else {
            continue;
        };
        let kind = if c.get(1).is_some_and(|m| !m.is_empty()) {
            Kind::Image
        } else {
            Kind::Link
        };
        let label = c.get(2).map_or("", |m| m.as_str());
        judge(allow, strict, kind, url.as_str(), label, all.range(), out);
        covered.push(all.range());
    }
    for c in p.reference.captures_iter(text) {
        let (Some(all), Some(url)) = (c.get(0), c.get(1)) else {
            continue;
        };
        // A reference definition may serve an image: judged as one.
        judge(
            allow,
            strict,
            Kind::Image,
            url.as_str(),
            "",
            all.range(),
            out,
        );
        covered.push(all.range());
    }
    for c in p.html.captures_iter(text) {
        let Some(all) = c.get(0) else { continue };
        let url = c
            .get(2)
            .or_else(|| c.get(3))
            .or_else(|| c.get(4))
            .map_or("", |m| m.as_str());
        let tag = c.get(1).map_or("", |m| m.as_str()).to_ascii_lowercase();
        let kind = if matches!(tag.as_str(), "a" | "area") {
            Kind::Link
        } else {
            Kind::Image
        };
        judge(allow, strict, kind, url, "", all.range(), out);
        covered.push(all.range());
    }
    for m in p.bare.find_iter(text) {
        if covered
            .iter()
            .any(|r| r.start <= m.start() && m.end() <= r.end)
        {
            continue;
        }
        let url = m.as_str().trim_end_matches(['.', ',', ';', ':', '!', '?']);
        judge(
            allow,
            strict,
            Kind::Bare,
            url,
            "",
            m.start()..m.start() + url.len(),
            out,
        );
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
