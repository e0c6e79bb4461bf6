//! The crate's layers, read from its own source: every `crate::` path from one
//! top-level module to another points to the same floor or one below, and no two
//! modules reach each other through any chain. A new arrow upwards fails here,
//! with the file that drew it.
//!
//! The floors, from the bottom (a module may use its own floor and those below):
//!
//! 0. vocabulary: `codec` (hex, base62, CRC-32, strict JSON, JWS segments), `clock`,
//!    `decision`, `error`, `finding`, `id`, `principal`, `request`, `response`,
//!    `record` (the audit event and its parts), `step`, `openai` (wire types),
//!    `store` (the Redis connection), `cache` (bounded maps keyed per caller);
//! 1. the stage traits: `stage`;
//! 2. the stages and what observes them: `identity`, `authz`, `rate_limit`, `scan`,
//!    `output`, `audit`, `respond`, `receipt`, `inventory`, `builtin`,
//!    `telemetry`, `otel`;
//! 3. the pipeline: `guard` (with its streams);
//! 4. what wraps the pipeline: `exchange`, `tower`;
//! 5. configuration from a file: `policy`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const FLOORS: &[&[&str]] = &[
    &[
        "codec",
        "clock",
        "decision",
        "error",
        "finding",
        "id",
        "principal",
        "request",
        "response",
        "record",
        "step",
        "openai",
        "store",
        "cache",
    ],
    &["stage"],
    &[
        "identity",
        "authz",
        "rate_limit",
        "scan",
        "output",
        "audit",
        "respond",
        "receipt",
        "inventory",
        "builtin",
        "telemetry",
        "otel",
    ],
    &["guard"],
    &["exchange", "tower"],
    &["policy"],
];

fn floor(module: &str) -> Option<usize> {
    FLOORS.iter().position(|f| f.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`src/guard/stream.rs` → `guard`).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_owned()
}

/// The code of a file without its comments (doc comments included: an intra-doc
/// link is not a dependency).
fn code(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The modules a piece of code names: `crate::x` and `use crate::{x, y::z}`.
fn targets(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find("};").unwrap_or(group.len());
            let mut depth = 0;
            let mut start = true;
            for (j, c) in group[..end].char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if c.is_whitespace() => {}
                    _ if start && depth == 0 => {
                        out.insert(ident(&group[j..]));
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            out.insert(ident(rest));
        }
    }
    out
}

/// The crate root's re-exports (`pub use guard::{InferenceGuard, ..}` in lib.rs):
/// `crate::InferenceGuard` is an arrow to `guard`.
fn root_names(src: &Path) -> BTreeMap<String, String> {
    let lib = code(&std::fs::read_to_string(src.join("lib.rs")).unwrap());
    let mut names = BTreeMap::new();
    for stmt in lib.split(';') {
        let Some(rest) = stmt.trim().strip_prefix("pub use ") else {
            continue;
        };
        let Some((module, items)) = rest.split_once("::") else {
            continue;
        };
        for item in items.split([',', '{', '}']) {
            let item = item.trim();
            if !item.is_empty() {
                names.insert(item.to_owned(), module.trim().to_owned());
            }
        }
    }
    names
}

fn arrows() -> BTreeMap<String, BTreeMap<String, PathBuf>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let root = root_names(&src);
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut arrows: BTreeMap<String, BTreeMap<String, PathBuf>> = BTreeMap::new();
    for file in files {
        let from = module_of(&src, &file);
        if from == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for to in targets(&code(&text)) {
            let to = root.get(&to).cloned().unwrap_or(to);
            if to != from && !to.is_empty() {
                arrows
                    .entry(from.clone())
                    .or_default()
                    .entry(to)
                    .or_insert_with(|| file.clone());
            }
        }
    }
    arrows
}

#[test]
fn every_module_has_a_floor() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let unplaced: BTreeSet<String> = files
        .iter()
        .map(|f| module_of(&src, f))
        .filter(|m| m != "lib" && floor(m).is_none())
        .collect();
    assert!(
        unplaced.is_empty(),
        "modules with no floor in tests/architecture.rs: {unplaced:?}"
    );
}

#[test]
fn every_arrow_points_down() {
    let mut up = Vec::new();
    for (from, tos) in arrows() {
        let Some(f) = floor(&from) else { continue };
        for (to, file) in tos {
            let t = floor(&to).unwrap_or_else(|| panic!("{} names crate::{to}", file.display()));
            if t > f {
                up.push(format!(
                    "{from} (floor {f}) -> {to} (floor {t}) in {}",
                    file.display()
                ));
            }
        }
    }
    assert!(up.is_empty(), "arrows pointing up:\n{}", up.join("\n"));
}

#[test]
fn no_module_reaches_itself() {
    let arrows = arrows();
    for start in arrows.keys() {
        // Depth-first from each module: reaching it again is a cycle.
        let mut stack: Vec<(String, Vec<String>)> = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((m, path)) = stack.pop() {
            for next in arrows.get(&m).map(|t| t.keys()).into_iter().flatten() {
                let mut p = path.clone();
                p.push(next.clone());
                assert!(next != start, "cycle: {}", p.join(" -> "));
                if seen.insert(next.clone()) {
                    stack.push((next.clone(), p));
                }
            }
        }
    }
}

/// The reader finds what it should: a sanity check on the parser itself, so that the
/// tests above cannot pass by reading nothing.
#[test]
fn the_reader_sees_the_arrows_it_should() {
    let t = targets(&code(
        "use crate::{a, b::{C, D}, e::f};\nlet x = crate::g::h();\n// crate::comment\n",
    ));
    assert_eq!(
        t.into_iter().collect::<Vec<_>>(),
        ["a", "b", "e", "g"].map(String::from)
    );
    let arrows = arrows();
    assert!(arrows["guard"].contains_key("stage"));
    assert!(arrows["audit"].contains_key("record"));
    assert!(arrows["policy"].contains_key("guard"));
    let root = root_names(Path::new(env!("CARGO_MANIFEST_DIR")).join("src").as_path());
    assert_eq!(root["InferenceGuard"], "guard");
    assert_eq!(root["redact"], "finding");
}
