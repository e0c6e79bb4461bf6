//! The text as a reader sees it, for the credential rules: a key written with a
//! zero-width space, a soft hyphen or a bidirectional control inside, or (in an
//! answer, which is rendered) split by inline markup that shows as nothing between
//! its halves (`AKIA…**REST**`, `` AKIA…`REST` ``, `AKIA…<b></b>REST`), is shown
//! whole, and the rules must see it whole too.

use super::normalize::is_invisible;

/// The first bytes of the UTF-8 encodings of the characters shown as nothing
/// ([`is_invisible`], the normalization's list), searched for before any
/// character is decoded.
const INVISIBLE_LEADS: [u8; 9] = [0xc2, 0xcd, 0xd8, 0xe1, 0xe2, 0xe3, 0xef, 0xf0, 0xf3];

/// The length of the inline markup at `text[i..]` that renders as nothing when it
/// stands inside a word: a run of `*`, `~` or `` ` `` (emphasis, strikethrough,
/// code span), or HTML tags back to back (each on one line, at most 64 bytes).
/// Zero when there is none.
fn markup_len(b: &[u8], i: usize) -> usize {
    match b[i] {
        c @ (b'*' | b'~' | b'`') => b[i..].iter().take_while(|&&x| x == c).count(),
        b'<' => {
            let mut j = i;
            while b.get(j) == Some(&b'<')
                && b.get(j + 1)
                    .is_some_and(|&x| x.is_ascii_alphabetic() || x == b'/' || x == b'!')
            {
                let Some(close) = b[j..]
                    .iter()
                    .take(64)
                    .position(|&x| x == b'>' || x == b'\n')
                else {
                    break;
                };
                if b[j + close] != b'>' || close < 2 {
                    break;
                }
                j += close + 1;
            }
            j - i
        }
        _ => 0,
    }
}

/// `text` without the characters shown as nothing and (with `markup`) without
/// inline markup between two letters or digits, and for each byte of it (and its
/// end) the offset in `text` it comes from; `None` when that is `text` itself (the
/// common case, found with byte searches).
pub(crate) fn view(text: &str, markup: bool) -> Option<(String, Vec<usize>)> {
    let b = text.as_bytes();
    let joins = |i: usize, n: usize| {
        i > 0
            && b[i - 1].is_ascii_alphanumeric()
            && b.get(i + n).is_some_and(u8::is_ascii_alphanumeric)
    };
    // Most markup follows whitespace: the byte before it is tested first.
    let any_markup = markup
        && memchr::memchr3_iter(b'*', b'~', b'`', b)
            .chain(memchr::memchr_iter(b'<', b))
            .any(|i| {
                i > 0 && b[i - 1].is_ascii_alphanumeric() && {
                    let n = markup_len(b, i);
                    n > 0 && joins(i, n)
                }
            });
    let any_invisible = !text.is_ascii()
        && INVISIBLE_LEADS
            .chunks(3)
            .flat_map(|l| memchr::memchr3_iter(l[0], l[1], l[2], b))
            .any(|i| text[i..].chars().next().is_some_and(is_invisible));
    if !any_markup && !any_invisible {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let mut map = Vec::with_capacity(text.len() + 1);
    let mut i = 0;
    while i < b.len() {
        let n = if markup { markup_len(b, i) } else { 0 };
        if n > 0 && joins(i, n) {
            i += n;
            continue;
        }
        let c = text[i..].chars().next().unwrap_or('\0');
        let len = c.len_utf8();
        if !is_invisible(c) {
            out.push(c);
            map.extend(i..i + len);
        }
        i += len;
    }
    map.push(text.len());
    Some((out, map))
}

/// Adds the findings `seen` in a [`view`] of `text` (`map` is its offsets) that
/// no credential or personal-data finding of `out[from..]` covers, with their
/// spans in `text` (from a finding's first character to its last).
pub(crate) fn add_uncovered(
    text: &str,
    map: &[usize],
    seen: Vec<crate::finding::Finding>,
    out: &mut Vec<crate::finding::Finding>,
    from: usize,
) {
    for f in seen {
        let sp = f.span();
        if sp.start >= sp.end || sp.end >= map.len() {
            continue;
        }
        let at = map[sp.start]..crate::finding::ceil_boundary(text, map[sp.end - 1] + 1);
        let covered = out[from..].iter().any(|g| {
            matches!(
                g.category(),
                crate::Category::Secret | crate::Category::PersonalData
            ) && g.span().start <= at.start
                && at.end <= g.span().end
        });
        if !covered {
            out.push(f.with_span(at));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_invisible_character_starts_with_a_searched_byte() {
        for c in (0..=0x10ffff)
            .filter_map(char::from_u32)
            .filter(|&c| is_invisible(c))
        {
            let mut buf = [0; 4];
            let lead = c.encode_utf8(&mut buf).as_bytes()[0];
            assert!(INVISIBLE_LEADS.contains(&lead), "{c:?}");
        }
    }

    #[test]
    fn the_view_drops_what_renders_as_nothing_inside_a_word() {
        for (text, seen) in [
            ("AKIA\u{200b}Z4\u{ad}QW", "AKIAZ4QW"),
            ("ab**cd** ef", "abcd** ef"),
            ("ab`cd` ef", "abcd` ef"),
            ("ab<b></b>cd", "abcd"),
            ("a\u{e0041}b", "ab"),
        ] {
            let (v, map) = view(text, true).unwrap();
            assert_eq!(v, seen);
            assert_eq!(map.len(), v.len() + 1);
            for (k, &at) in map[..v.len()].iter().enumerate() {
                assert_eq!(v.as_bytes()[k], text.as_bytes()[at], "{text:?}");
            }
        }
        // Markup between words, and text without invisible characters, is the
        // text itself.
        for text in [
            "a **bold** word, `code` and <b>tags</b>",
            "2 < 3 and 4 > 1",
            "plain ümlaut text",
            "x*",
            "<",
        ] {
            assert!(view(text, true).is_none(), "{text:?}");
        }
        // Without markup, only the characters shown as nothing go.
        assert!(view("ab**cd**", false).is_none());
        assert_eq!(view("a\u{200b}b**c**", false).unwrap().0, "ab**c**");
    }
}
