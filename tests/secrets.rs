//! Credentials and personal data: every supported format planted in prose is found,
//! checksums are validated, placeholders are ignored, and ordinary prose and source
//! code produce no credential findings.

use inference_guard::scan::Scanner;
use inference_guard::{Category, Location};

mod common;

/// A small deterministic generator, so planted values look random but tests repeat.
struct Gen(u64);
impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn s(&mut self, charset: &str, n: usize) -> String {
        let c: Vec<char> = charset.chars().collect();
        (0..n)
            .map(|_| c[(self.next() as usize) % c.len()])
            .collect()
    }
}

const AN: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const UP: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const HEX: &str = "0123456789abcdef";
const B64: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// GitHub and npm tokens checksum the 30 random characters; this crate's API keys
/// checksum the prefix too (`whole`).
fn crc_token(prefix: &str, g: &mut Gen) -> String {
    crc_token_over(prefix, g, false)
}

fn crc_token_over(prefix: &str, g: &mut Gen, whole: bool) -> String {
    const B62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let body = g.s(AN, 30);
    let covered = if whole {
        format!("{prefix}{body}")
    } else {
        body.clone()
    };
    let mut crc = !0u32;
    for b in covered.bytes() {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    let mut v = !crc;
    let mut sum = [b'0'; 6];
    for slot in sum.iter_mut().rev() {
        *slot = B62[(v % 62) as usize];
        v /= 62;
    }
    format!("{prefix}{body}{}", std::str::from_utf8(&sum).unwrap())
}

fn planted(g: &mut Gen) -> Vec<(&'static str, String)> {
    vec![
        (
            "secret.aws_access_key_id",
            format!("AKIA{}", g.s("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16)),
        ),
        (
            "secret.aws_secret_access_key",
            format!("aws_secret_access_key = {}", g.s(B64, 40)),
        ),
        ("secret.google_api_key", format!("AIza{}", g.s(URL, 35))),
        (
            "secret.google_oauth_client_secret",
            format!("GOCSPX-{}", g.s(URL, 28)),
        ),
        (
            "secret.azure_storage_key",
            format!(
                "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={}==",
                g.s(B64, 86)
            ),
        ),
        ("secret.github_token", crc_token("ghp_", g)),
        ("secret.github_token", crc_token("ghs_", g)),
        (
            "secret.github_fine_grained_pat",
            format!("github_pat_{}_{}", g.s(AN, 22), g.s(AN, 59)),
        ),
        ("secret.gitlab_token", format!("glpat-{}", g.s(URL, 20))),
        (
            "secret.openai_api_key",
            format!("sk-proj-{}T3BlbkFJ{}", g.s(URL, 40), g.s(URL, 40)),
        ),
        (
            "secret.anthropic_api_key",
            format!("sk-ant-api03-{}AA", g.s(URL, 93)),
        ),
        (
            "secret.huggingface_token",
            format!(
                "hf_{}",
                g.s("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", 34)
            ),
        ),
        ("secret.replicate_token", format!("r8_{}", g.s(AN, 37))),
        ("secret.groq_api_key", format!("gsk_{}", g.s(AN, 52))),
        ("secret.stripe_key", format!("sk_live_{}", g.s(AN, 24))),
        (
            "secret.stripe_webhook_secret",
            format!("whsec_{}", g.s(AN, 32)),
        ),
        (
            "secret.slack_token",
            format!(
                "xoxb-{}-{}-{}",
                g.s("0123456789", 12),
                g.s("0123456789", 12),
                g.s(AN, 24)
            ),
        ),
        (
            "secret.slack_webhook",
            format!(
                "https://hooks.slack.com/services/T{}/B{}/{}",
                g.s(UP, 10),
                g.s(UP, 10),
                g.s(AN, 24)
            ),
        ),
        ("secret.twilio_api_key", format!("SK{}", g.s(HEX, 32))),
        (
            "secret.sendgrid_api_key",
            format!("SG.{}.{}", g.s(URL, 22), g.s(URL, 43)),
        ),
        ("secret.mailgun_api_key", format!("key-{}", g.s(HEX, 32))),
        ("secret.npm_token", crc_token("npm_", g)),
        (
            "secret.pypi_token",
            format!("pypi-AgEIcHlwaS5vcmc{}", g.s(URL, 60)),
        ),
        (
            "secret.rubygems_api_key",
            format!("rubygems_{}", g.s(HEX, 48)),
        ),
        (
            "secret.docker_hub_pat",
            format!("dckr_pat_{}", g.s(URL, 27)),
        ),
        (
            "secret.jwt",
            format!("eyJhbGciOiJIUzI1NiJ9.eyJ{}.{}", g.s(URL, 40), g.s(URL, 43)),
        ),
        (
            "secret.private_key",
            "-----BEGIN OPENSSH PRIVATE KEY-----".to_owned(),
        ),
        (
            "secret.connection_string_password",
            format!("postgres://app:{}@db.internal:5432/prod", g.s(AN, 16)),
        ),
        (
            "secret.url_password",
            format!("https://deploy:{}@git.internal.net/repo.git", g.s(AN, 14)),
        ),
        (
            "secret.basic_auth_header",
            format!("Authorization: Basic {}", g.s(B64, 24)),
        ),
        ("secret.shopify_token", format!("shpat_{}", g.s(HEX, 32))),
        (
            "secret.telegram_bot_token",
            format!("{}:AA{}", g.s("0123456789", 10), g.s(URL, 33)),
        ),
        (
            "secret.digitalocean_token",
            format!("dop_v1_{}", g.s(HEX, 64)),
        ),
        ("secret.linear_api_key", format!("lin_api_{}", g.s(AN, 40))),
        (
            "secret.postman_api_key",
            format!("PMAK-{}-{}", g.s(HEX, 24), g.s(HEX, 34)),
        ),
        ("secret.vault_token", format!("hvs.{}", g.s(URL, 30))),
        (
            "secret.new_relic_key",
            format!("NRAK-{}", g.s("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", 27)),
        ),
        ("secret.alibaba_access_key", format!("LTAI{}", g.s(AN, 20))),
        (
            "secret.age_secret_key",
            format!(
                "AGE-SECRET-KEY-1{}",
                g.s("QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L", 58)
            ),
        ),
        ("secret.pulumi_token", format!("pul-{}", g.s(HEX, 40))),
        ("secret.supabase_token", format!("sbp_{}", g.s(HEX, 40))),
        ("secret.databricks_token", format!("dapi{}", g.s(HEX, 32))),
        (
            "secret.inference_guard_api_key",
            crc_token_over("igk_", g, true),
        ),
        (
            "secret.generic_assignment",
            format!("db_password = \"{}\"", g.s(AN, 18)),
        ),
        ("pii.email", "maria.jensen@contoso.org".to_owned()),
        ("pii.phone_e164", "+44 20 7946 0958".to_owned()),
        ("pii.payment_card", "4111 1111 1111 1111".to_owned()),
        ("pii.iban", "GB82 WEST 1234 5698 7654 32".to_owned()),
        ("pii.us_ssn", "123-45-6789".to_owned()),
        ("pii.ipv4", "203.0.113.42".to_owned()),
        ("pii.ipv6", "2001:db8:85a3::8a2e:370:7334".to_owned()),
        (
            "pii.bitcoin_address",
            "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa".to_owned(),
        ),
        (
            "pii.bitcoin_bech32",
            "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq".to_owned(),
        ),
        (
            "pii.ethereum_address",
            "0x52908400098527886E0F7030069857D2E4169EE7".to_owned(),
        ),
    ]
}

/// At least 99% of `total` planted values found.
fn assert_found_99(missed: &[String], total: usize) {
    let rate = 1.0 - missed.len() as f64 / total as f64;
    assert!(
        rate >= 0.99,
        "found {:.1}% of {total}; missed: {missed:#?}",
        rate * 100.0
    );
}

#[test]
fn planted_values_of_every_supported_format_are_found() {
    let scanner = Scanner::new();
    let mut missed = Vec::new();
    let mut total = 0;
    for seed in 1..=20u64 {
        let mut g = Gen(seed);
        for (rule, value) in planted(&mut g) {
            total += 1;
            let text = format!("Here is the config we use in staging: {value} (do not share)");
            let found = scanner.scan_text(&text, Location::Message(0));
            let at = text.find(&value).unwrap();
            let within = |s: std::ops::Range<usize>| {
                s.start >= at && s.end <= at + value.len() && s.start < s.end
            };
            let hit = found
                .iter()
                .any(|f| f.rule_id() == rule && within(f.span()));
            if !hit {
                missed.push(format!("{rule}: {value}"));
            }
        }
    }
    assert_found_99(&missed, total);
}

/// The same values with a zero-width space, a soft hyphen or a word joiner inside
/// are found too (the model reads them whole; only the zero-width space was
/// flagged, as smuggling, and the value went to the model), and the finding covers
/// the whole value.
#[test]
fn planted_values_split_by_invisible_characters_are_found() {
    let scanner = Scanner::new();
    let mut missed = Vec::new();
    let mut total = 0;
    for seed in 1..=20u64 {
        let mut g = Gen(seed);
        for (k, (rule, value)) in planted(&mut g).into_iter().enumerate() {
            let mut mid = value.len() / 2;
            while !value.is_char_boundary(mid) {
                mid += 1;
            }
            let split = format!(
                "{}{}{}",
                &value[..mid],
                ["\u{200b}", "\u{ad}", "\u{2060}"][k % 3],
                &value[mid..]
            );
            total += 1;
            let text = format!("Here is the config we use in staging: {split} (do not share)");
            let found = scanner.scan_text(&text, Location::Message(0));
            let at = text.find(&split).unwrap();
            let hit = found.iter().any(|f| {
                f.rule_id() == rule && f.span().start <= at + mid && f.span().end > at + mid
            });
            if !hit {
                missed.push(format!("{rule}: {split:?}"));
            }
        }
    }
    assert_found_99(&missed, total);
}

#[test]
fn checksums_and_placeholders() {
    let scanner = Scanner::new();
    let mut g = Gen(7);
    let good = crc_token("ghp_", &mut g);
    let mut bad = good.clone();
    let last = bad.pop().unwrap();
    bad.push(if last == 'a' { 'b' } else { 'a' });
    let rules = |t: &str| {
        scanner
            .scan_text(t, Location::Output)
            .into_iter()
            .map(|f| f.rule_id().to_owned())
            .collect::<Vec<_>>()
    };
    assert!(rules(&good).contains(&"secret.github_token".to_owned()));
    assert!(
        !rules(&bad).contains(&"secret.github_token".to_owned()),
        "a wrong checksum is not a GitHub token"
    );
    for placeholder in [
        "AKIAIOSFODNN7EXAMPLE",
        "password = \"<your-password>\"",
        "api_key: ${API_KEY}",
        "token = \"xxxxxxxxxxxxxxxx\"",
    ] {
        assert!(
            rules(placeholder).iter().all(|r| !r.starts_with("secret.")),
            "{placeholder}: {:?}",
            rules(placeholder)
        );
    }
    assert!(rules("card 4111 1111 1111 1112").is_empty(), "fails Luhn");
    assert!(
        rules("IBAN GB82 WEST 1234 5698 7654 33").is_empty(),
        "fails mod-97"
    );
    assert!(rules("SSN 666-12-3456").is_empty(), "invalid area");
}

#[test]
fn prose_and_source_code_give_no_credential_findings() {
    let scanner = Scanner::new();
    let mut texts: Vec<String> = Vec::new();
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/corpus/benign/garak_benign_text.jsonl");
    if let Ok(t) = std::fs::read_to_string(&corpus) {
        texts.extend(
            t.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter_map(|v| v["text"].as_str().map(str::to_owned)),
        );
    }
    // Source code: this crate's library sources (not its tests, which plant secrets).
    for entry in [
        "src/guard/mod.rs",
        "src/codec/mod.rs",
        "src/stage.rs",
        "src/openai.rs",
        "src/audit/chain.rs",
        "src/rate_limit/gcra.rs",
        "src/identity/jwt.rs",
        "src/scan/heuristics.rs",
    ] {
        texts.push(
            std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(entry))
                .unwrap(),
        );
    }
    let mut hits = Vec::new();
    for t in &texts {
        for f in scanner.scan_text(t, Location::Message(0)) {
            if *f.category() == Category::Secret {
                hits.push(format!("{}: {:?}", f.rule_id(), &t[f.span()]));
            }
        }
    }
    assert!(
        hits.is_empty(),
        "{} texts; credential findings: {hits:#?}",
        texts.len()
    );
}

mod redaction {
    use inference_guard::scan::{Redaction, Scanner};
    use inference_guard::*;

    fn guard(r: Redaction, content: bool) -> (InferenceGuard, MemorySink) {
        crate::common::audited_guard(|b| {
            b.input_scanner(Scanner::builder().redaction(r).build())
                .audit_content(content);
        })
    }

    fn admitted(r: Redaction, text: &str) -> String {
        let (g, _) = guard(r, false);
        let adm = g
            .check_request(GuardRequest::new("m").with_message(Role::User, text))
            .unwrap();
        let out = adm.request().messages()[0].content().to_owned();
        adm.fail();
        out
    }

    #[test]
    fn each_mode() {
        let t = "card 4111 1111 1111 1111, mail ana@contoso.org";
        assert_eq!(
            admitted(Redaction::mask(), t),
            "card [REDACTED:PAYMENT_CARD], mail [REDACTED:EMAIL]"
        );
        assert_eq!(
            admitted(Redaction::partial(4), t),
            "card ***************1111, mail ************org"
        );
        assert_eq!(admitted(Redaction::remove(), t), "card , mail ");
        let h1 = admitted(Redaction::keyed_hash(&[3; 32]), t);
        assert!(
            h1.starts_with("card [PAYMENT_CARD:") && h1.contains("mail [EMAIL:"),
            "{h1}"
        );
        assert_eq!(
            h1,
            admitted(Redaction::keyed_hash(&[3; 32]), t),
            "stable under one key"
        );
        assert_ne!(h1, admitted(Redaction::keyed_hash(&[4; 32]), t), "keyed");
        assert!(!h1.contains("4111") && !h1.contains("ana@"));
    }

    #[test]
    fn pseudonyms_are_stable_per_request_restored_for_the_caller_and_never_audited() {
        let (g, sink) = guard(Redaction::pseudonymize(), true);
        let req = GuardRequest::new("m")
            .with_message(Role::User, "Email ana@contoso.org and bob@contoso.org")
            .with_message(Role::User, "Again: ana@contoso.org");
        let adm = g.check_request(req).unwrap();
        assert_eq!(
            adm.request().messages()[0].content(),
            "Email <EMAIL_1> and <EMAIL_2>"
        );
        assert_eq!(adm.request().messages()[1].content(), "Again: <EMAIL_1>");
        let out = adm
            .check_response(GuardResponse::new(
                "Done: wrote to <EMAIL_2>, cc <EMAIL_1>.",
            ))
            .unwrap();
        assert_eq!(
            out.response().text(),
            "Done: wrote to bob@contoso.org, cc ana@contoso.org."
        );
        let line = sink.lines().pop().unwrap();
        assert!(
            line.contains("<EMAIL_1>"),
            "the audit keeps the pseudonymized content"
        );
        assert!(!line.contains("contoso.org"), "{line}");
        // Another request numbers afresh.
        let adm = g
            .check_request(GuardRequest::new("m").with_message(Role::User, "bob@contoso.org"))
            .unwrap();
        assert_eq!(adm.request().messages()[0].content(), "<EMAIL_1>");
        adm.fail();
    }
}

#[test]
fn dense_values_are_each_found_once_whatever_the_anchor_windows() {
    // Anchors every ~200 bytes: the windows around them overlap. Each value is one
    // finding with its whole span, not pieces cut at window edges.
    let line = "tel +44 20 7946 0958 and card 4111 1111 1111 1111, mail ana.lopez@northwind-mail.com; \
                filler text to space the anchors out a little more than usual here. ";
    let text = line.repeat(400);
    let findings = Scanner::new().scan_text(&text, Location::Message(0));
    for rule in ["pii.phone_e164", "pii.payment_card", "pii.email"] {
        let spans: Vec<_> = findings
            .iter()
            .filter(|f| f.rule_id() == rule)
            .map(|f| f.span())
            .collect();
        assert_eq!(spans.len(), 400, "{rule}");
        assert!(
            spans.windows(2).all(|w| w[0].end <= w[1].start) || {
                let mut s = spans.clone();
                s.sort_by_key(|r| r.start);
                s.windows(2).all(|w| w[0].end <= w[1].start)
            }
        );
    }
}

#[test]
fn ethereum_addresses_with_a_broken_eip55_checksum_are_not_reported() {
    let found = |t: &str| {
        Scanner::new()
            .scan_text(t, Location::Message(0))
            .iter()
            .any(|f| f.rule_id() == "pii.ethereum_address")
    };
    assert!(found(
        "send it to 0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed today"
    ));
    assert!(found(
        "send it to 0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed today"
    ));
    assert!(!found(
        "send it to 0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD today"
    ));
}

/// Personal data in realistic sentences (signatures, forms, chat; several locales),
/// written for this test (`tests/data/pii.py`): each value must be redacted whole.
#[test]
fn personal_data_in_realistic_sentences_is_redacted() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/pii_sentences.jsonl");
    let scanner = inference_guard::scan::Scanner::new();
    let mut missed = Vec::new();
    let mut total = 0;
    for line in std::fs::read_to_string(path).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let (text, value) = (v["text"].as_str().unwrap(), v["value"].as_str().unwrap());
        total += 1;
        let at = text.find(value).unwrap();
        let covered = scanner
            .scan_text(text, inference_guard::Location::Message(0))
            .iter()
            .filter(|f| *f.category() == inference_guard::Category::PersonalData)
            .any(|f| f.span().start <= at + 1 && f.span().end + 1 >= at + value.len());
        if !covered {
            missed.push(format!("{} {value:?}", v["locale"]));
        }
    }
    println!(
        "personal data: {} of {total} redacted; missed {missed:?}",
        total - missed.len()
    );
    assert!(missed.len() * 20 <= total, "missed {missed:?}");
}
