//! Trains the built-in prompt-injection and jailbreak classifier, reproducibly.
//!
//! ```text
//! cargo run --release --example train_classifier -- ../shared/corpus [src/scan/classifier.bin]
//! ```
//!
//! Reads the attack and benign sets of the corpus (the encoded-instruction set is
//! left to the decoding rules) and the project's own written attacks and hard
//! negatives (`tests/data/written_attacks.jsonl`, `tests/data/hard_negatives.jsonl`),
//! sets 15% aside as a test split (by a hash of the text), and trains one head per
//! category (prompt injection, jailbreak, system-prompt extraction). Thresholds come
//! from out-of-fold scores: the other 85% in five folds by template, each scored by a
//! model trained on the other four; one block threshold for all heads at 1% false
//! positives in every benign source (texts of 16 words or more), the flag threshold
//! at 5%. The final model is trained on the whole 85%. It prints recall and false
//! positives on the test split by source, category, language and length, rules vs
//! classifier vs scanner, a small precision-recall table, and writes the weights
//! (when a path is given). The same inputs give the same weights.
//!
//! Environment: `IG_EPOCHS` (default 10), `IG_HARD_WEIGHT` (hard negatives' weight,
//! default 5), `IG_TEMPLATE_CAP` (records per template, default 8), `IG_DATA` (another
//! directory for the project's two files), `IG_LOAD` (evaluate saved weights instead
//! of training), `IG_SHOW_ERRORS` (print the errors and the calibration's top scores).

use std::collections::BTreeMap;
use std::path::Path;

use inference_guard::Category;
use inference_guard::scan::{Classifier, Example, Level, Trainer};

struct Record {
    text: String,
    attack: bool,
    /// The head an attack trains.
    head: Category,
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
        let category = v["category"].as_str().unwrap_or("");
        let head = if source == "garak_jailbreak" || category.contains("jailbreak") {
            Category::Jailbreak
        } else if source == "sysprompt_extraction" || category.contains("sysprompt") {
            Category::SystemPromptLeak
        } else {
            Category::PromptInjection
        };
        out.push(Record {
            text: text.to_owned(),
            attack,
            head,
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
                Category::PromptInjection
                    | Category::Jailbreak
                    | Category::SystemPromptLeak
                    | Category::ToolCall
            ) && f.action() != inference_guard::Action::Flag
        })
}

/// The template a text belongs to: the line of 40 characters or more with the
/// smallest hash (a min-hash over lines: a document with one planted instruction,
/// behind one task or another, keeps its other lines and so its key), or its
/// first 48 characters when it has no such line.
fn template(text: &str) -> u64 {
    text.lines()
        .map(str::trim)
        .filter(|l| l.chars().count() >= 40)
        .map(|l| fnv(&l.to_lowercase()))
        .min()
        .unwrap_or_else(|| fnv(&text.chars().take(48).collect::<String>().to_lowercase()))
}

/// Trains a model on `records`: benign records weigh as much in total as attacks,
/// and every record comes twice more with typos, so that a misspelt
/// "iunstructions" still reads as what it is (the character n-grams carry it).
fn train_on(records: &[&Record], epochs: usize) -> Classifier {
    // Templated attacks (one document with hundreds of planted instructions, one
    // preamble with many requests) count as at most `cap` records per template
    // (see `template`), so that the model learns the instructions rather than the
    // documents they were planted in.
    let cap: f32 = std::env::var("IG_TEMPLATE_CAP")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8.0);
    let mut groups: BTreeMap<u64, f32> = BTreeMap::new();
    for r in records.iter().filter(|r| r.attack) {
        *groups.entry(template(&r.text)).or_default() += 1.0;
    }
    let weight = |r: &Record| {
        if r.attack {
            r.weight * (cap / groups[&template(&r.text)]).min(1.0)
        } else {
            r.weight
        }
    };
    let (pos, neg): (f32, f32) = records.iter().fold((0.0, 0.0), |(p, n), r| {
        if r.attack {
            (p + weight(r), n)
        } else {
            (p, n + weight(r))
        }
    });
    let scale = if neg > 0.0 { pos / neg } else { 1.0 };
    let mut train: Vec<Example> = records
        .iter()
        .map(|r| {
            if r.attack {
                Example::attack(r.text.clone(), r.head.clone()).weight(weight(r))
            } else {
                Example::benign(r.text.clone()).weight(r.weight * scale)
            }
        })
        .collect();
    let typos: Vec<Example> = train
        .iter()
        .enumerate()
        .flat_map(|(k, e)| {
            [1u64, 2].map(|round| {
                let mut t = e.clone();
                t.text = misspell(&e.text, (k as u64) * 3 + round);
                t.weight(e.weight * 0.5)
            })
        })
        .collect();
    train.extend(typos);
    eprintln!(
        "training on {} records ({} attacks), benign weight x{scale:.2}",
        train.len(),
        train.iter().filter(|e| e.attack).count()
    );
    Trainer::default().epochs(epochs).train(&train)
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
    // The project's own data (IG_DATA: another directory with the same two files).
    let data = std::env::var_os("IG_DATA").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data"),
        std::path::PathBuf::from,
    );
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
    let epochs = std::env::var("IG_EPOCHS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    // Thresholds from out-of-fold scores: the records outside the test split in
    // five folds (by another hash of the text), each scored by a model trained on
    // the other four, so that calibration sees every benign record outside the
    // test split, scored by a model that did not learn it. The heads are trained on
    // balanced classes, so their probabilities share a scale: one block threshold
    // for all of them (the most sure head against it), chosen so that at most 1% of
    // every benign source (or one record, in a small one) is blocked; the flag
    // threshold at 5% of all benign records. Texts of fewer than 16 words are left
    // to the rules by the scanner: they do not count.
    let long = |r: &&Record| r.text.split_whitespace().count() >= 16;
    // Folds by template (see `template`): templated records (one document
    // with several planted instructions, one jailbreak preamble with several
    // requests, a clean document and its attacked copies) share a fold, so that an
    // out-of-fold score is a score on a document the model has not seen, as on
    // other sources.
    let fold = |r: &Record| (template(&r.text) >> 24) % 5;
    let mut validation: Vec<(&Record, f32)> = Vec::new();
    let loaded = std::env::var("IG_LOAD")
        .ok()
        .map(|p| Classifier::from_bytes(&std::fs::read(p).expect("read")).expect("weights"));
    for k in (0..5).filter(|_| loaded.is_none()) {
        let rest: Vec<&Record> = records
            .iter()
            .filter(|r| r.split != 2 && fold(r) != k)
            .collect();
        let m = train_on(&rest, epochs);
        validation.extend(
            records
                .iter()
                .filter(|r| r.split != 2 && fold(r) == k && !r.attack)
                .filter(long)
                .map(|r| {
                    let p = m.probabilities(&r.text);
                    (r, p.into_iter().map(|(_, p)| p).fold(0.0f32, f32::max))
                }),
        );
    }
    let all: Vec<&Record> = records.iter().filter(|r| r.split != 2).collect();
    let model = loaded.clone().unwrap_or_else(|| train_on(&all, epochs));
    let heads: Vec<Category> = model.categories().cloned().collect();
    // The threshold just above the k-th highest of `scores`.
    let above = |mut scores: Vec<f32>, k: usize| -> f32 {
        scores.sort_by(|a, b| b.total_cmp(a));
        scores.get(k).map_or(0.0, |s| (s + 1e-6).min(1.0))
    };
    if std::env::var_os("IG_SHOW_ERRORS").is_some() {
        let mut top = validation.clone();
        top.sort_by(|a, b| b.1.total_cmp(&a.1));
        let mut shown: BTreeMap<&str, usize> = BTreeMap::new();
        for (r, p) in top.iter().filter(|(r, _)| {
            let n = shown.entry(r.source.as_str()).or_default();
            *n += 1;
            *n <= 4
        }) {
            let head: String = r.text.chars().take(160).collect();
            println!("calibration {p:.4} {} {head:?}", r.source);
        }
    }
    // Every source with 100 records or more is held to 1% on its own; smaller
    // ones (where one record is several percent) are held to it together.
    let mut sizes: BTreeMap<&str, usize> = BTreeMap::new();
    for (r, _) in &validation {
        *sizes.entry(&r.source).or_default() += 1;
    }
    let mut sources: BTreeMap<&str, Vec<f32>> = BTreeMap::new();
    // Except the clean contexts: they are the documents the garak injection set
    // plants its instructions in (hundreds of attacked copies of each), so out of
    // fold their scores measure how well the model memorised those documents, not
    // false positives on documents it has not seen; they count on the test split,
    // where the model has learnt them as benign, like any other source.
    for (r, p) in validation
        .iter()
        .filter(|(r, _)| r.source != "garak_latent_contexts_clean")
    {
        let group = if sizes[r.source.as_str()] >= 100 {
            r.source.as_str()
        } else {
            "smaller sources"
        };
        sources.entry(group).or_default().push(*p);
    }
    let pooled = validation
        .iter()
        .filter(|(r, _)| r.source != "garak_latent_contexts_clean")
        .map(|(_, p)| *p)
        .collect::<Vec<_>>();
    let mut block = above(pooled.clone(), pooled.len() / 100);
    for (source, scores) in sources {
        let allowed = (scores.len() as f64 * 0.01).floor().max(1.0) as usize;
        println!("  calibration: {source}: {} records", scores.len());
        let t = above(scores, allowed);
        if t > block {
            println!("  source {source} raises the block threshold to {t:.4}");
            block = t;
        }
    }
    let flag = above(pooled.clone(), pooled.len() * 5 / 100).min(block);
    let (flag, block) = (vec![flag; heads.len()], vec![block; heads.len()]);
    let mut model = model;
    for (h, c) in heads.iter().enumerate().filter(|_| loaded.is_none()) {
        model = model
            .with_category_thresholds(c, flag[h], block[h])
            .expect("thresholds");
        println!(
            "validation: {} benign; {}: block at {:.4}, flag at {:.4}",
            validation.len(),
            c.as_str(),
            block[h],
            flag[h]
        );
    }
    let model = model;
    // The test split.
    let test: Vec<(&Record, f32, bool)> = records
        .iter()
        .filter(|r| r.split == 2)
        .map(|r| {
            let s = model.score(&r.text);
            (r, s.probability, s.level == Level::Block)
        })
        .collect();
    if std::env::var_os("IG_SHOW_ERRORS").is_some() {
        for (r, s, hit) in &test {
            if *hit != r.attack {
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
    for (r, _, hit) in &test {
        let hit = *hit;
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
    for (r, s, hit) in &test {
        let rh = rule_hit(&r.text);
        let e = table.entry((r.attack, r.source.clone())).or_default();
        e[0] += 1;
        e[1] += usize::from(rh);
        e[2] += usize::from(*hit);
        let both = rejects(&r.text);
        e[3] += usize::from(both);
        if std::env::var_os("IG_SHOW_ERRORS").is_some() && both != r.attack {
            let ids: Vec<String> = combined
                .scan_text(&r.text, inference_guard::Location::Message(0))
                .iter()
                .map(|f| format!("{}:{:?}", f.rule_id(), f.action()))
                .collect();
            let head: String = r.text.chars().take(120).collect();
            println!(
                "combined {} {:.3} {} {ids:?} {head:?}",
                if r.attack { "FN" } else { "FP" },
                s,
                r.source
            );
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
    println!("(the deciding head's probability against one threshold for all heads)");
    for t in [0.3f32, 0.5, 0.7, 0.8, 0.9, 0.95] {
        let tp = test.iter().filter(|(r, s, _)| r.attack && *s >= t).count();
        let fp = test.iter().filter(|(r, s, _)| !r.attack && *s >= t).count();
        let pos = test.iter().filter(|(r, _, _)| r.attack).count();
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
