//! The credential rules over an answer as a reader sees it (see
//! `scan::visible`).

use crate::Location;
use crate::finding::Finding;
use crate::scan::Scanner;

/// The credential and personal-data rules over `text` and, when it differs, over
/// what a reader sees of it (`scan::visible::view`): a finding there that no finding in `text`
/// covers is added with its span in `text` (from its first character to its last).
pub(crate) fn scan_leaks(s: &Scanner, text: &str, at: Location, out: &mut Vec<Finding>) {
    let from = out.len();
    s.scan_leaks(text, at, out);
    let Some((view, map)) = crate::scan::visible::view(text, true) else {
        return;
    };
    let mut seen = Vec::new();
    s.scan_leaks(&view, at, &mut seen);
    for f in seen {
        let sp = f.span();
        if sp.start >= sp.end || sp.end > view.len() {
            continue;
        }
        let at = map[sp.start]..map[sp.end - 1] + 1;
        let at = at.start..crate::finding::ceil_boundary(text, at.end);
        let covered = out[from..]
            .iter()
            .any(|g| g.span().start <= at.start && at.end <= g.span().end);
        if !covered {
            out.push(f.with_span(at));
        }
    }
}
