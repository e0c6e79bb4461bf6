//! `[audit]` and `[receipts]`: where records go and how answers are signed.

use super::*;

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(super) enum SinkKind {
    Stdout,
    Jsonl,
    Chained,
    None,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Audit {
    pub(super) sink: SinkKind,
    #[serde(default)]
    pub(super) path: Option<String>,
    #[serde(default)]
    pub(super) signing_key_file: Option<String>,
    #[serde(default)]
    pub(super) kid: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Receipts {
    pub(super) signing_key_file: String,
    pub(super) kid: String,
    #[serde(default)]
    pub(super) ttl_secs: Option<u64>,
}

impl Policy {
    /// `[receipts]`: the receipt signer.
    pub(super) fn receipts(&self, b: &mut GuardBuilder) -> Result<(), PolicyError> {
        if let Some(r) = &self.receipts {
            let path = self.path(&r.signing_key_file);
            let der = std::fs::read(&path).map_err(|e| {
                err(
                    "receipts.signing_key_file",
                    format!("{}: {e}", path.display()),
                )
            })?;
            let key = AuditSigningKey::from_pkcs8(r.kid.clone(), &der)
                .map_err(|e| caused("receipts.signing_key_file", e))?;
            let mut signer = ReceiptSigner::new(key);
            if let Some(t) = r.ttl_secs {
                signer = signer.ttl(Duration::from_secs(t));
            }
            b.receipts(signer);
        }
        Ok(())
    }

    pub(super) fn audit(&self, b: &mut GuardBuilder) -> Result<(), PolicyError> {
        let a = &self.audit;
        match a.sink {
            SinkKind::None => {
                b.audit_sink(NoopSink);
            }
            SinkKind::Stdout => {
                b.audit_sink(JsonLinesSink::new(std::io::stdout()));
            }
            SinkKind::Jsonl => {
                let path = a
                    .path
                    .as_deref()
                    .ok_or_else(|| err("audit.path", "required for sink = \"jsonl\""))?;
                let path = self.path(path);
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| err("audit.path", format!("{}: {e}", path.display())))?;
                b.audit_sink(JsonLinesSink::new(f));
            }
            SinkKind::Chained => {
                let path = a
                    .path
                    .as_deref()
                    .ok_or_else(|| err("audit.path", "required for sink = \"chained\""))?;
                let key_file = a.signing_key_file.as_deref().ok_or_else(|| {
                    err("audit.signing_key_file", "required for sink = \"chained\"")
                })?;
                let key_path = self.path(key_file);
                let der = std::fs::read(&key_path).map_err(|e| {
                    err(
                        "audit.signing_key_file",
                        format!("{}: {e}", key_path.display()),
                    )
                })?;
                let key = AuditSigningKey::from_pkcs8(
                    a.kid.clone().unwrap_or_else(|| "audit".into()),
                    &der,
                )
                .map_err(|e| caused("audit.signing_key_file", e))?;
                let sink = ChainedLogSink::create(self.path(path), key)
                    .map_err(|e| caused("audit.path", e))?;
                b.audit_sink(sink);
            }
        }
        Ok(())
    }
}
