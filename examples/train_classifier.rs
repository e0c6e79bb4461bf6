//! Trains the built-in prompt-injection and jailbreak classifier, reproducibly.
//!
//! ```text
//! cargo run --release --example train_classifier -- ../shared/corpus [src/scan/classifier.bin]
//! ```
//!
//! Reads the attack and benign sets of the corpus (the encoded-instruction set is
//! left to the decoding rules) and the project's own written attacks and hard
//! negatives (`tests/data/written_attacks.jsonl`, `tests/data/hard_negatives.jsonl`),
//! splits every record by a hash of its text (70% train, 15% validation, 15% test),
//! trains, picks the block threshold at 1% false positives (in every source) and the
//! flag threshold at 5%, among texts of 16 words or more,
//! on the validation split (hard negatives included), prints recall and false
//! positives on the test split by source, category, language and length, and a
//! small precision-recall table, and writes the weights (when a path is given).
//! The same inputs give the same weights.

use std::collections::BTreeMap;
use std::path::Path;

use inference_guard::scan::{Classifier, Example, Trainer};

struct Record {
    text: String,
    attack: bool,
    source: String,
    category: String,
    lang: String,
    split: u8,
    weight: f32,
}

fn fnv(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn read(path: &Path, source: &str, out: &mut Vec<Record>) {
    let Ok(body) = std::fs::read_to_string(path) else {
        eprintln!("skipping {}", path.display());
        return;
    };
    // Hard negatives count more: they look like instructions because they are.
    let hard: f32 = std::env::var("IG_HARD_WEIGHT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5.0);
    let weight = match source {
        "operator_system_prompts" | "hard_negatives" | "garak_latent_contexts_clean" => hard,
        _ => 1.0,
    };
    for line in body.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(text) = v["text"].as_str() else {
            continue;
        };
        let attack = v["label"].as_str() == Some("attack");
        // Split by the text: the same text always lands in the same split.
        let split = match fnv(text) % 20 {
            0..=13 => 0,
            14..=16 => 1,
            _ => 2,
        };
        out.push(Record {
            text: text.to_owned(),
            attack,
            source: source.to_owned(),
            category: v["category"].as_str().unwrap_or("").to_owned(),
            lang: v["lang"].as_str().unwrap_or("en").to_owned(),
            split,
            weight,
        });
    }
}

/// `text` with a typo (two letters swapped, one dropped or one doubled) in about
/// one word in four, chosen by a seeded generator (the same seed gives the same
/// typos).
fn misspell(text: &str, seed: u64) -> String {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = String::with_capacity(text.len());
    for (i, word) in text.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let chars: Vec<char> = word.chars().collect();
        if x % 4 == 0 && chars.len() >= 5 && chars.iter().all(|c| c.is_alphabetic()) {
            let at = 1 + (x >> 8) as usize % (chars.len() - 2);
            let mut c = chars.clone();
            match (x >> 4) % 3 {
                0 => c.swap(at, at + 1),
                1 => {
                    c.remove(at);
                }
                _ => c.insert(at, c[at - 1]),
            }
            out.extend(c);
        } else {
            out.push_str(word);
        }
    }
    out
}

/// Whether `scanner` rejects `text` for injection or jailbreak intent (a finding
/// that only flags for review does not count).
fn rejected(scanner: &inference_guard::scan::Scanner, text: &str) -> bool {
    scanner
        .scan_text(text, inference_guard::Location::Message(0))
        .iter()
        .any(|f| {
            matches!(
                f.category(),
                inference_guard::Category::PromptInjection | inference_guard::Category::Jailbreak
            ) && f.action() != inference_guard::Action::Flag
        })
}

fn bucket(len: usize) -> &'static str {
    match len {
        0..100 => "<100B",
        100..1000 => "100B-1KB",
        1000..4000 => "1-4KB",
        _ => ">4KB",
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let corpus = args.next().unwrap_or_else(|| "../shared/corpus".to_owned());
    let out = args.next();
    let corpus = Path::new(&corpus);
    let mut records = Vec::new();
    for (dir, files) in [
        (
            "attacks",
            &[
                "garak_jailbreak",
                "garak_prompt_injection",
                "garak_output_exfil_xss",
                "sysprompt_extraction",
            ][..],
        ),
        (
            "benign",
            &[
                "chatterbot_en_user_turns",
                "chatterbot_multilingual_user_turns",
                "garak_benign_text",
                "garak_latent_contexts_clean",
                "operator_system_prompts",
            ][..],
        ),
    ] {
        for f in files {
            read(
                &corpus.join(dir).join(format!("{f}.jsonl")),
                f,
                &mut records,
            );
        }
    }
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    read(
        &data.join("written_attacks.jsonl"),
        "written_attacks",
        &mut records,
    );
    read(
        &data.join("hard_negatives.jsonl"),
        "hard_negatives",
        &mut records,
    );
    // Balance the classes: benign records weigh as much in total as attacks.
    let (pos, neg): (f32, f32) =
        records
            .iter()
            .filter(|r| r.split == 0)
            .fold((0.0, 0.0), |(p, n), r| {
                if r.attack {
                    (p + r.weight, n)
                } else {
                    (p, n + r.weight)
                }
            });
    let scale = if neg > 0.0 { pos / neg } else { 1.0 };
    let mut train: Vec<Example> = records
        .iter()
        .filter(|r| r.split == 0)
        .map(|r| Example {
            text: r.text.clone(),
            attack: r.attack,
            weight: if r.attack { r.weight } else { r.weight * scale },
        })
        .collect();
    // Each record twice more with typos, so that a misspelt "iunstructions" still
    // reads as what it is (the character n-grams carry it).
    let typos: Vec<Example> = train
        .iter()
        .enumerate()
        .flat_map(|(k, e)| {
            [1u64, 2].map(|round| Example {
                text: misspell(&e.text, (k as u64) * 3 + round),
                attack: e.attack,
                weight: e.weight * 0.5,
            })
        })
        .collect();
    train.extend(typos);
    eprintln!(
        "training on {} records ({} attacks), benign weight x{scale:.2}",
        train.len(),
        train.iter().filter(|e| e.attack).count()
    );
    let epochs = std::env::var("IG_EPOCHS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let model = Trainer::default().epochs(epochs).train(&train);
    let score = |r: &Record| model.score(&r.text).probability;
    // Thresholds on the validation split: at most 1% (block) and 2% (flag) of its
    // benign records score at or above them.
    // Texts of fewer than 16 words are left to the rules by the scanner: they do
    // not count for the thresholds.
    let long = |r: &&Record| r.text.split_whitespace().count() >= 16;
    let mut benign: Vec<f32> = records
        .iter()
        .filter(|r| r.split == 1 && !r.attack)
        .filter(long)
        .map(score)
        .collect();
    benign.sort_by(|a, b| b.total_cmp(a));
    let at_fpr = |fpr: f64| -> f32 {
        let k = ((benign.len() as f64) * fpr).floor() as usize;
        // Just above the k-th highest benign score.
        benign.get(k).map_or(0.5, |s| (s + 1e-6).min(1.0))
    };
    // And no source may exceed 1% (or one record, in a small one) at the block
    // threshold: the pooled rate is dominated by short chit-chat.
    let mut block = at_fpr(0.01);
    let mut by_source: BTreeMap<&str, Vec<f32>> = BTreeMap::new();
    for r in records
        .iter()
        .filter(|r| r.split == 1 && !r.attack)
        .filter(long)
    {
        by_source.entry(&r.source).or_default().push(score(r));
    }
    for (source, mut scores) in by_source {
        scores.sort_by(|a, b| b.total_cmp(a));
        let allowed = ((scores.len() as f64) * 0.01).floor().max(1.0) as usize;
        if let Some(s) = scores.get(allowed) {
            if *s + 1e-6 > block {
                println!(
                    "  source {source} raises the block threshold to {:.4}",
                    s + 1e-6
                );
                block = (s + 1e-6).min(1.0);
            }
        }
    }
    let flag = at_fpr(0.05).min(block);
    let model = model.with_thresholds(flag, block).expect("thresholds");
    println!(
        "validation: {} benign; block at {block:.4} (1% FPR, every source), flag at {flag:.4} (5% FPR)",
        benign.len()
    );
    // The test split.
    let test: Vec<(&Record, f32)> = records
        .iter()
        .filter(|r| r.split == 2)
        .map(|r| (r, model.score(&r.text).probability))
        .collect();
    if std::env::var_os("IG_SHOW_ERRORS").is_some() {
        for (r, s) in &test {
            if (*s >= block) != r.attack {
                let head: String = r.text.chars().take(160).collect();
                println!(
                    "{} {:.3} {} {:?}",
                    if r.attack { "FN" } else { "FP" },
                    s,
                    r.source,
                    head
                );
            }
        }
    }
    let mut groups: BTreeMap<(bool, String), (usize, usize)> = BTreeMap::new();
    for (r, s) in &test {
        let hit = *s >= block;
        for key in [
            format!("source {}", r.source),
            format!("category {}", r.category),
            format!("lang {}", r.lang),
            format!("length {}", bucket(r.text.len())),
        ] {
            let e = groups.entry((r.attack, key)).or_default();
            e.0 += 1;
            e.1 += usize::from(hit);
        }
    }
    println!("\ntest split at the block threshold");
    for attack in [true, false] {
        println!(
            "{}",
            if attack {
                "\nrecall (attacks)"
            } else {
                "\nfalse positives (benign)"
            }
        );
        for ((a, key), (n, hit)) in &groups {
            if *a == attack {
                println!(
                    "  {key:<60} {hit:>5}/{n:<5} {:>6.1}%",
                    100.0 * *hit as f64 / (*n).max(1) as f64
                );
            }
        }
    }
    // The rules on their own, and the combination the scanner uses: the classifier
    // blocks at its threshold; rule families that fire decide a text the
    // classifier puts at or above its flag threshold.
    let rules = inference_guard::scan::Scanner::builder()
        .classifier(None)
        .build();
    // The scanner as it ships with these weights: what "combined" reports.
    let combined = inference_guard::scan::Scanner::builder()
        .classifier(Some(model.clone()))
        .build();
    let rejects = |t: &str| rejected(&combined, t);
    let rule_hit = |t: &str| rejected(&rules, t);
    let mut table: BTreeMap<(bool, String), [usize; 4]> = BTreeMap::new();
    for (r, s) in &test {
        let rh = rule_hit(&r.text);
        let e = table.entry((r.attack, r.source.clone())).or_default();
        e[0] += 1;
        e[1] += usize::from(rh);
        e[2] += usize::from(*s >= block);
        e[3] += usize::from(rejects(&r.text));
    }
    if std::env::var_os("IG_GATES").is_some() {
        for gate in [0.0f32, 0.01, 0.03, 0.05, 0.08, flag] {
            let mut line = format!("  gate {gate:.3}:");
            for src in [
                "garak_jailbreak",
                "operator_system_prompts",
                "hard_negatives",
                "chatterbot_en_user_turns",
            ] {
                let rows: Vec<_> = test.iter().filter(|(r, _)| r.source == src).collect();
                let hit = rows
                    .iter()
                    .filter(|(r, s)| *s >= block || (*s >= gate && rule_hit(&r.text)))
                    .count();
                line.push_str(&format!(
                    " {src} {:.1}%",
                    100.0 * hit as f64 / rows.len().max(1) as f64
                ));
            }
            println!("{line}");
        }
    }
    println!("\ntest split by source: rules alone, classifier alone, the scanner with both");
    for ((attack, source), [n, r, c, both]) in &table {
        let pct = |k: &usize| 100.0 * *k as f64 / (*n).max(1) as f64;
        println!(
            "  {:<7} {source:<40} n={n:<5} rules {:>5.1}%  classifier {:>5.1}%  combined {:>5.1}%",
            if *attack { "attack" } else { "benign" },
            pct(r),
            pct(c),
            pct(both)
        );
    }
    println!("\nprecision-recall on the test split (threshold: precision, recall, FPR)");
    for t in [0.3f32, 0.5, 0.7, 0.8, 0.9, 0.95, flag, block] {
        let tp = test.iter().filter(|(r, s)| r.attack && *s >= t).count();
        let fp = test.iter().filter(|(r, s)| !r.attack && *s >= t).count();
        let pos = test.iter().filter(|(r, _)| r.attack).count();
        let neg = test.len() - pos;
        println!(
            "  {t:.4}: {:.3} {:.3} {:.4}",
            tp as f64 / (tp + fp).max(1) as f64,
            tp as f64 / pos.max(1) as f64,
            fp as f64 / neg.max(1) as f64
        );
    }
    if let Some(path) = out {
        std::fs::write(&path, model.to_bytes()).expect("write the weights");
        eprintln!("wrote {path}");
    }
    let _ = Classifier::builtin;
}
