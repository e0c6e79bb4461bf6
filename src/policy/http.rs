//! `[http]`: the HTTP exchange.

use super::*;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Http {
    #[serde(default)]
    pub(super) unknown_fields: Option<String>,
    #[serde(default)]
    pub(super) operator_system_prompt_file: Option<String>,
    #[serde(default)]
    pub(super) pinned_system_prompt_sha256: Vec<String>,
    #[serde(default)]
    public_routes: Vec<String>,
    #[serde(default)]
    pub(super) max_choices: Option<u32>,
    #[serde(default)]
    pub(super) max_body_bytes: Option<usize>,
    #[serde(default)]
    pub(super) prefix: Option<String>,
}

impl Policy {
    /// The HTTP exchange's configuration from the `[http]` section (defaults
    /// without one).
    ///
    /// ```
    /// use inference_guard::policy::Policy;
    /// let p = Policy::from_toml("version = \"1\"\n[identity]\nallow_anonymous = true\n[[grants]]\nprincipals = [\"*\"]\nmodels = [\"m\"]\n[audit]\nsink = \"none\"\n[http]\nunknown_fields = \"strip\"\npublic_routes = [\"GET /v1/models\"]\n")?;
    /// let cfg = p.exchange_config()?;
    /// # let _ = cfg;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// A [`PolicyError`] naming the field whose value cannot be used.
    pub fn exchange_config(&self) -> Result<crate::exchange::ExchangeConfig, PolicyError> {
        use crate::exchange::{ExchangeConfig, UnknownFields};
        let h = &self.http;
        let mut c = ExchangeConfig::default();
        match h.unknown_fields.as_deref() {
            None | Some("refuse") => {}
            Some("strip") => c = c.unknown_fields(UnknownFields::Strip),
            Some(_) => return Err(err("http.unknown_fields", "must be refuse or strip")),
        }
        if let Some(f) = &h.operator_system_prompt_file {
            let path = self.path(f);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                err(
                    "http.operator_system_prompt_file",
                    format!("{}: {e}", path.display()),
                )
            })?;
            c = c.operator_system_prompt(text.trim_end_matches('\n'));
        }
        for (i, d) in h.pinned_system_prompt_sha256.iter().enumerate() {
            if d.len() != 64 || !d.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err(
                    &format!("http.pinned_system_prompt_sha256[{i}]"),
                    "must be 64 hex digits",
                ));
            }
            c = c.pin_system_prompt_digest(d);
        }
        for (i, r) in h.public_routes.iter().enumerate() {
            let Some((m, p)) = r
                .split_once(' ')
                .filter(|(m, p)| !m.is_empty() && p.starts_with('/'))
            else {
                return Err(err(
                    &format!("http.public_routes[{i}]"),
                    "must be 'METHOD /path'",
                ));
            };
            c = c.public_route(m, p.trim());
        }
        if let Some(p) = &h.prefix {
            c = c.prefix(p.clone());
        }
        if let Some(n) = h.max_choices {
            c = c.max_choices(n);
        }
        if let Some(n) = h.max_body_bytes {
            if n == 0 {
                return Err(err("http.max_body_bytes", "must be positive"));
            }
            c = c.max_body_bytes(n);
        }
        Ok(c)
    }
}
