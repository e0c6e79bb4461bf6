//! Which requests are guarded: decided on the path the router will see.

use super::{Endpoint, ErrorResponse};

/// What the exchange does with a request, decided from its method and raw path.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Route {
    /// A guarded endpoint: run the guard.
    Guard(Endpoint),
    /// Not the guard's business (outside the guarded prefix, or a public route):
    /// hand it to the next service untouched.
    Pass,
    /// Refused before anything else: `400` for an ambiguous encoding, `404` for an
    /// unknown path under the guarded prefix, `405` for another method on an
    /// endpoint.
    Refuse(ErrorResponse),
}

/// Decodes `%XX` escapes of unreserved characters (RFC 3986: `A-Z a-z 0-9 - . _ ~`)
/// and leaves every other escape as it is (upper-cased).
fn decode_unreserved(raw: &str) -> String {
    let b = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (
                crate::codec::hex_digit(b[i + 1]),
                crate::codec::hex_digit(b[i + 2]),
            ) {
                let c = h * 16 + l;
                if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                    out.push(char::from(c));
                } else {
                    out.push('%');
                    out.push(char::from(b[i + 1].to_ascii_uppercase()));
                    out.push(char::from(b[i + 2].to_ascii_uppercase()));
                }
                i += 3;
                continue;
            }
        }
        if b[i] == b'%' {
            // A '%' that starts no escape is written as one, so that decoding never
            // joins it with what follows into a new escape (normalization is
            // idempotent).
            out.push_str("%25");
            i += 1;
            continue;
        }
        // `raw` is a &str: push the whole character starting here.
        let ch = raw[i..].chars().next().unwrap_or('\u{fffd}');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// Decodes every `%XX` escape and reads `\` as `/` (what the most lenient router or
/// proxy on the way might do). Invalid UTF-8 after decoding is replaced.
fn decode_all(raw: &str) -> String {
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (
                crate::codec::hex_digit(b[i + 1]),
                crate::codec::hex_digit(b[i + 2]),
            ) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'\\' { b'/' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes dot segments, repeated slashes and a trailing slash.
fn normalize_segments(path: &str) -> String {
    let mut segs: Vec<&str> = Vec::new();
    for s in path.split('/') {
        match s {
            "" | "." => {}
            ".." => {
                segs.pop();
            }
            s => segs.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segs {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// The path a router that decodes unreserved escapes, merges slashes and resolves
/// dot segments would route: `/v1//chat/./completions/` is `/v1/chat/completions`.
///
/// ```
/// use inference_guard::exchange::normalize_path;
/// assert_eq!(normalize_path("/v1//chat/./completions/"), "/v1/chat/completions");
/// assert_eq!(normalize_path("/v1/chat/%63ompletions"), "/v1/chat/completions");
/// assert_eq!(normalize_path("/v1/a/../embeddings"), "/v1/embeddings");
/// assert_eq!(normalize_path("/v1%2Fembeddings"), "/v1%2Fembeddings"); // '/' stays encoded
/// ```
pub fn normalize_path(raw: &str) -> String {
    let raw = raw.split(['?', '#']).next().unwrap_or("");
    normalize_segments(&decode_unreserved(raw))
}

/// The route decision; see [`ExchangeConfig`](super::ExchangeConfig) for the modes.
pub(super) fn decide(
    method: &str,
    raw_path: &str,
    prefix: &str,
    guard_prefix: bool,
    public: &[(String, String)],
) -> Route {
    let raw = raw_path.split(['?', '#']).next().unwrap_or("");
    let normalized = normalize_segments(&decode_unreserved(raw));
    // The most lenient reading anyone on the way might make: every escape decoded,
    // backslashes as slashes, case folded.
    let lenient = normalize_segments(&decode_all(raw)).to_ascii_lowercase();
    let in_scope = |p: &str| {
        Endpoint::from_normalized(p).is_some()
            || (guard_prefix && under(p, &prefix.to_ascii_lowercase()))
    };
    if in_scope(&lenient) && (raw.contains(['%', '\\']) || normalized != lenient) {
        // What the guard and the router see must be one path: an escape, a
        // backslash or a case difference that could change the route is refused.
        return Route::Refuse(ErrorResponse::new(
            400,
            "ambiguous_path",
            "the request path is encoded ambiguously",
        ));
    }
    let endpoint = Endpoint::from_normalized(&normalized);
    if let Some(e) = endpoint {
        if !method.eq_ignore_ascii_case("POST") {
            return Route::Refuse(
                ErrorResponse::new(405, "method_not_allowed", "this endpoint accepts POST only")
                    .with_header("allow", "POST"),
            );
        }
        return Route::Guard(e);
    }
    let public_route = public
        .iter()
        .any(|(m, p)| m.eq_ignore_ascii_case(method) && *p == normalized);
    if public_route {
        return Route::Pass;
    }
    if guard_prefix && (under(&normalized, prefix) || under(&lenient, &prefix.to_ascii_lowercase()))
    {
        return Route::Refuse(ErrorResponse::new(
            404,
            "unknown_endpoint",
            "no such endpoint",
        ));
    }
    Route::Pass
}

fn under(path: &str, prefix: &str) -> bool {
    prefix == "/"
        || path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(method: &str, path: &str) -> Route {
        decide(
            method,
            path,
            "/v1",
            true,
            &[("GET".to_owned(), "/v1/models".to_owned())],
        )
    }

    fn status(r: &Route) -> u16 {
        match r {
            Route::Refuse(e) => e.status(),
            Route::Guard(_) => 0,
            Route::Pass => 1,
        }
    }

    #[test]
    fn endpoints_are_guarded_by_their_normalized_path() {
        for p in [
            "/v1/chat/completions",
            "/v1/chat/completions/",
            "//v1/chat/completions",
            "/v1//chat///completions",
            "/v1/./chat/completions",
            "/v1/x/../chat/completions",
            "/chat/completions",
            "/v1/chat/completions?x=1",
            "/api/v1/chat/completions",
        ] {
            assert_eq!(d("POST", p), Route::Guard(Endpoint::ChatCompletions), "{p}");
        }
        assert_eq!(
            d("POST", "/v1/embeddings"),
            Route::Guard(Endpoint::Embeddings)
        );
        assert_eq!(
            d("post", "/v1/completions"),
            Route::Guard(Endpoint::Completions)
        );
    }

    #[test]
    fn encodings_that_could_change_the_route_are_refused() {
        for p in [
            "/v1/chat/%63ompletions",
            "/v1/chat%2Fcompletions",
            "/v1%2fchat/completions",
            "/v1/chat\\completions",
            "/v1/chat/completions%00",
            "/V1/Chat/Completions",
            "/v1/%2e%2e/v1/embeddings",
            "/%76%31/models",
        ] {
            assert_eq!(status(&d("POST", p)), 400, "{p}");
        }
    }

    #[test]
    fn other_methods_and_unknown_paths_under_the_prefix_are_refused() {
        assert_eq!(status(&d("GET", "/v1/chat/completions")), 405);
        assert_eq!(status(&d("PUT", "/v1/embeddings")), 405);
        assert_eq!(status(&d("POST", "/v1/responses")), 404);
        assert_eq!(status(&d("POST", "/v1/models")), 404);
        assert_eq!(status(&d("GET", "/v1")), 404);
        assert_eq!(d("GET", "/v1/models"), Route::Pass);
        assert_eq!(d("GET", "/v1/models/"), Route::Pass);
        assert_eq!(d("GET", "/healthz"), Route::Pass);
        assert_eq!(d("GET", "/v10/x"), Route::Pass);
        // Without the prefix mode, unknown paths pass (the endpoints stay guarded).
        assert_eq!(
            decide("POST", "/v1/responses", "/v1", false, &[]),
            Route::Pass
        );
        assert_eq!(
            status(&decide("POST", "/v1/chat/%63ompletions", "/v1", false, &[])),
            400
        );
    }

    #[test]
    fn decoding_is_total() {
        for p in ["%", "%4", "%zz", "/%e2%82", "/\u{e9}%", "/a%2", ""] {
            let _ = d("POST", p);
            let _ = normalize_path(p);
        }
        assert_eq!(normalize_path("/a%7eb"), "/a~b");
        // Found by fuzzing: a stray '%' must not join a decoded character into a new
        // escape on a second pass.
        for p in ["/%%e%444", "/%%41", "/%%%", "/a%2"] {
            let n = normalize_path(p);
            assert_eq!(normalize_path(&n), n, "{p}");
        }
        assert_eq!(normalize_path("/a%2fb"), "/a%2Fb");
    }
}
