//! `[identity]`: API keys, JWT verifiers, anonymous callers.

use super::*;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Identity {
    #[serde(default)]
    pub(super) allow_anonymous: bool,
    #[serde(default)]
    pub(super) api_key_prefix: Option<String>,
    #[serde(default)]
    pub(super) api_key_secret_env: Option<String>,
    #[serde(default)]
    pub(super) api_key_secret_file: Option<String>,
    #[serde(default)]
    pub(super) api_keys: Vec<KeySpec>,
    #[serde(default)]
    pub(super) jwt: Vec<JwtSpec>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KeySpec {
    pub(super) id: String,
    pub(super) principal: String,
    #[serde(default)]
    pub(super) tenant: Option<String>,
    #[serde(default)]
    pub(super) scopes: Vec<String>,
    pub(super) digest: String,
    /// Unix seconds.
    #[serde(default)]
    pub(super) created: Option<u64>,
    /// Unix seconds.
    #[serde(default)]
    pub(super) expires: Option<u64>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct JwtSpec {
    pub(super) issuer: String,
    pub(super) audience: String,
    pub(super) jwks_file: String,
    #[serde(default)]
    pub(super) max_lifetime_secs: Option<u64>,
}

impl Policy {
    pub(super) fn identity(
        &self,
        b: &mut GuardBuilder,
        shared: Option<&Shared>,
    ) -> Result<(), PolicyError> {
        #[cfg(not(feature = "redis"))]
        let _ = shared;
        let id = &self.identity;
        if id.allow_anonymous {
            b.allow_anonymous();
        }
        let mut auth = Authenticator::new();
        for (i, j) in id.jwt.iter().enumerate() {
            let field = format!("identity.jwt[{i}]");
            if id.jwt[..i].iter().any(|o| o.issuer == j.issuer) {
                return Err(err(&format!("{field}.issuer"), "the same issuer twice"));
            }
            let path = self.path(&j.jwks_file);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                err(
                    &format!("{field}.jwks_file"),
                    format!("{}: {e}", path.display()),
                )
            })?;
            let keys =
                KeySet::from_jwks(&text).map_err(|e| caused(&format!("{field}.jwks_file"), e))?;
            let mut v = JwtVerifier::builder();
            v.issuer(j.issuer.clone())
                .audience(j.audience.clone())
                .keys(keys);
            if let Some(s) = j.max_lifetime_secs {
                v.max_lifetime(Duration::from_secs(s));
            }
            #[cfg(feature = "redis")]
            if let Some(replay) = shared.and_then(|s| s.replay.clone()) {
                let open = self
                    .redis
                    .as_ref()
                    .is_some_and(|r| r.fail_open.contains(&SharedUse::Replay));
                v.shared_replay_cache(replay).replay_fail_open(open);
            }
            auth = auth.jwt(v.build().map_err(|e| caused(&field, e))?);
        }
        if id.api_keys.is_empty() && id.jwt.is_empty() {
            if !id.allow_anonymous {
                return Err(err(
                    "identity",
                    "no api_keys and no jwt issuers: nobody could call (set allow_anonymous to mean it)",
                ));
            }
            return Ok(());
        }
        if id.api_keys.is_empty() {
            b.identity(auth);
            return Ok(());
        }
        let secret = secret(
            "identity.api_key_secret",
            id.api_key_secret_env.as_ref(),
            id.api_key_secret_file.as_deref().map(|f| self.path(f)),
        )?;
        let store = InMemoryKeyStore::new();
        let format = ApiKeyFormat::new(id.api_key_prefix.as_deref().unwrap_or("igk"))
            .map_err(|e| caused("identity.api_key_prefix", e))?;
        let keys = ApiKeys::new(&secret, format, store.clone())
            .map_err(|e| caused("identity.api_key_secret", e))?;
        for (i, k) in id.api_keys.iter().enumerate() {
            let field = format!("identity.api_keys[{i}]");
            let mut p = Principal::builder(k.principal.clone(), CredentialKind::ApiKey);
            if let Some(t) = &k.tenant {
                p = p.tenant(t.clone());
            }
            for s in &k.scopes {
                p = p.scope(s.clone());
            }
            let at =
                |s: u64| crate::clock::wall_time(SystemTime::UNIX_EPOCH, Duration::from_secs(s));
            store.insert(ApiKeyRecord::from_digest(
                k.id.clone(),
                p.build(),
                hex32(&format!("{field}.digest"), &k.digest)?,
                k.created.map_or_else(SystemTime::now, at),
                k.expires.map(at),
            ));
        }
        #[cfg(feature = "redis")]
        if let Some(rev) = shared.and_then(|s| s.revocations.as_ref()) {
            let checked = ApiKeys::new(
                &secret,
                ApiKeyFormat::new(id.api_key_prefix.as_deref().unwrap_or("igk"))
                    .map_err(|e| caused("identity.api_key_prefix", e))?,
                rev.checked(store),
            )
            .map_err(|e| caused("identity.api_key_secret", e))?;
            drop(keys);
            b.identity(auth.api_keys(checked));
            return Ok(());
        }
        b.identity(auth.api_keys(keys));
        Ok(())
    }
}
