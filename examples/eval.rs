//! Runs the default input scanners over JSON-lines corpora and reports how many
//! records were flagged, per file and per category, with false-positive rates on
//! benign records split by language and by length.
//!
//! ```text
//! cargo run --release --example eval -- [--json] PATH...
//! ```
//!
//! Each PATH is a `.jsonl` file or a directory searched for them. A record is one
//! JSON object per line with at least `text`, `label` (`attack` or `benign`) and
//! `category`; `lang` is used where present. A record is *flagged* when the scanner
//! reports a finding other than personal data (injection, jailbreak, encoded
//! instruction, smuggling, credential) that is not only flagged for review; records
//! whose only findings are personal data (which the guard redacts, it does not
//! reject) are counted separately as *redacted*.
//! With `--json`, one JSON object per file:
//! `{"file", "records", "flagged", "redacted", "by_category": {CATEGORY: {"records", "flagged"}}}`
//! (plus `by_lang` and `by_length` for benign files).
//!
//! With `EVAL_DUMP=FILE`, every record's findings (rule, span, action, confidence)
//! are written to FILE, one line per record: two builds that decide alike write
//! the same file (how a change meant to be only faster is checked).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use inference_guard::scan::Scanner;
use inference_guard::{Category, Location};
use serde_json::{Value, json};

#[derive(Default)]
struct Count {
    records: u64,
    flagged: u64,
}

fn files(p: &Path, out: &mut Vec<PathBuf>) {
    if p.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for e in entries {
            files(&e, out);
        }
    } else if p.extension().is_some_and(|e| e == "jsonl") {
        out.push(p.to_owned());
    }
}

fn bucket(len: usize) -> &'static str {
    match len {
        0..100 => "<100B",
        100..=1000 => "100B-1KB",
        _ => ">1KB",
    }
}

fn pct(c: &Count) -> f64 {
    if c.records == 0 {
        0.0
    } else {
        100.0 * c.flagged as f64 / c.records as f64
    }
}

fn main() {
    let mut json_out = false;
    let mut paths = Vec::new();
    for a in std::env::args().skip(1) {
        if a == "--json" {
            json_out = true;
        } else {
            files(Path::new(&a), &mut paths);
        }
    }
    if paths.is_empty() {
        eprintln!("usage: eval [--json] PATH...");
        std::process::exit(2);
    }
    let scanner = Scanner::new();
    let verbose = std::env::var_os("EVAL_SHOW_MISSES").is_some();
    let mut dump = std::env::var_os("EVAL_DUMP").map(|p| {
        std::io::BufWriter::new(std::fs::File::create(p).expect("EVAL_DUMP: cannot create"))
    });
    for path in paths {
        let Ok(text) = std::fs::read_to_string(&path) else {
            eprintln!("{}: cannot read", path.display());
            continue;
        };
        let mut total = Count::default();
        let mut by_cat: BTreeMap<String, Count> = BTreeMap::new();
        let mut by_lang: BTreeMap<String, Count> = BTreeMap::new();
        let mut by_len: BTreeMap<&str, Count> = BTreeMap::new();
        let mut benign = false;
        let mut redacted = 0u64;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let Ok(rec) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let t = rec["text"].as_str().unwrap_or_default();
            let label = rec["label"].as_str().unwrap_or_default();
            let cat = rec["category"].as_str().unwrap_or("unknown").to_owned();
            let findings = scanner.scan_text(t, Location::Message(0));
            if let Some(d) = &mut dump {
                use std::io::Write;
                let line: Vec<String> = findings
                    .iter()
                    .map(|f| {
                        format!(
                            "{} {:?} {} {:.6}",
                            f.rule_id(),
                            f.span(),
                            f.action(),
                            f.confidence()
                        )
                    })
                    .collect();
                writeln!(d, "{}\t{}", path.display(), line.join("; ")).expect("EVAL_DUMP: write");
            }
            // A finding flagged for review (the classifier between its flag and
            // block thresholds, a request to decode something) is a shadow
            // observation, not a detection.
            let flagged = findings.iter().any(|f| {
                *f.category() != Category::PersonalData
                    && f.action() != inference_guard::Action::Flag
            });
            redacted += u64::from(
                !flagged
                    && findings
                        .iter()
                        .any(|f| *f.category() == Category::PersonalData),
            );
            if verbose && ((label == "attack") != flagged) {
                let rules: Vec<&str> = findings.iter().map(|f| f.rule_id()).collect();
                eprintln!(
                    "{} {cat} {rules:?} {:?}",
                    if flagged { "FP" } else { "MISS" },
                    t.chars().take(300).collect::<String>()
                );
            }
            for c in [Some(&mut total), Some(by_cat.entry(cat).or_default())]
                .into_iter()
                .flatten()
            {
                c.records += 1;
                c.flagged += u64::from(flagged);
            }
            if label == "benign" {
                benign = true;
                let lang = rec["lang"].as_str().unwrap_or("n/a").to_owned();
                for c in [
                    by_lang.entry(lang).or_default(),
                    by_len.entry(bucket(t.len())).or_default(),
                ] {
                    c.records += 1;
                    c.flagged += u64::from(flagged);
                }
            }
        }
        let name = path.display().to_string();
        if json_out {
            let cats: serde_json::Map<String, Value> = by_cat
                .iter()
                .map(|(k, c)| {
                    (
                        k.clone(),
                        json!({"records": c.records, "flagged": c.flagged}),
                    )
                })
                .collect();
            let mut o = json!({"file": name, "records": total.records, "flagged": total.flagged, "redacted": redacted, "by_category": cats});
            if benign {
                o["by_lang"] = by_lang
                    .iter()
                    .map(|(k, c)| {
                        (
                            k.clone(),
                            json!({"records": c.records, "flagged": c.flagged}),
                        )
                    })
                    .collect::<serde_json::Map<_, _>>()
                    .into();
                o["by_length"] = by_len
                    .iter()
                    .map(|(k, c)| {
                        (
                            k.to_string(),
                            json!({"records": c.records, "flagged": c.flagged}),
                        )
                    })
                    .collect::<serde_json::Map<_, _>>()
                    .into();
            }
            println!("{o}");
        } else {
            println!(
                "{name}: {} of {} flagged ({:.1}%); {redacted} more with personal data only (redacted, not rejected)",
                total.flagged,
                total.records,
                pct(&total)
            );
            for (k, c) in &by_cat {
                println!(
                    "  {k:<40} {:>5} of {:>5}  {:>5.1}%",
                    c.flagged,
                    c.records,
                    pct(c)
                );
            }
            if benign {
                println!("  false positives by length:");
                for (k, c) in &by_len {
                    println!(
                        "    {k:<10} {:>5} of {:>5}  {:>5.2}%",
                        c.flagged,
                        c.records,
                        pct(c)
                    );
                }
                if by_lang.len() > 1 {
                    println!("  false positives by language:");
                    for (k, c) in &by_lang {
                        println!(
                            "    {k:<10} {:>5} of {:>5}  {:>5.2}%",
                            c.flagged,
                            c.records,
                            pct(c)
                        );
                    }
                }
            }
        }
    }
}
