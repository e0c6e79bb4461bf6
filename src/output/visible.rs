//! The credential rules over an answer as a reader sees it (see
//! `scan::visible`).

use crate::Location;
use crate::finding::Finding;
use crate::scan::Scanner;

/// The credential and personal-data rules over `text` and, when it differs, over
/// what a reader sees of it (`scan::visible::view`, with inline markup): a finding
/// there that none in `text` covers is added with its span in `text`.
pub(crate) fn scan_leaks(s: &Scanner, text: &str, at: Location, out: &mut Vec<Finding>) {
    let seen = crate::scan::visible::view(text, true);
    scan_leaks_in(s, text, seen.as_ref(), at, out);
}

/// [`scan_leaks`] with the view of `text` at hand (`None`: the text itself).
pub(crate) fn scan_leaks_in(
    s: &Scanner,
    text: &str,
    seen: Option<&(String, Vec<usize>)>,
    at: Location,
    out: &mut Vec<Finding>,
) {
    let from = out.len();
    s.scan_leaks(text, at, out);
    let Some((view, map)) = seen else {
        return;
    };
    let mut found = Vec::new();
    s.scan_leaks(view, at, &mut found);
    crate::scan::visible::add_uncovered(text, map, found, out, from);
}
