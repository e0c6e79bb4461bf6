//! An OpenAI-compatible gateway on axum with every guard on: `POST
//! /v1/chat/completions` (streamed or not), `/v1/completions`, `/v1/embeddings`,
//! `GET /v1/models` and `GET /healthz`.
//!
//! ```text
//! cargo run --example axum_gateway --features axum,policy
//! cargo run --example axum_gateway --features axum,policy -- issue-key KEY_ID PRINCIPAL [SCOPE...]
//! ```
//!
//! Environment: `GUARD_ADDR` (listen address, default `127.0.0.1:8080`; port 0 for
//! any), `GUARD_POLICY` (a policy file; without it, a demo policy with printed demo
//! keys), `UPSTREAM_URL` (an OpenAI-compatible server to proxy to, over plain HTTP;
//! `UPSTREAM_API_KEY` for its key; without it, the embedded demo model),
//! `GUARD_DISABLED=1` (no guard, for load comparisons), `GUARD_MAX_BODY_BYTES`,
//! `GUARD_READ_TIMEOUT_MS`, `DEMO_LATENCY_MS`. See `gateway_common` for the demo
//! model's prompts.

#[path = "gateway_common/mod.rs"]
mod common;

use std::net::SocketAddr;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("issue-key") {
        return common::issue_key(&args[1..]);
    }
    let cfg = common::config().await?;
    let router = common::axum_app::router(&cfg);
    let listener = tokio::net::TcpListener::bind(&cfg.addr).await?;
    common::banner("axum_gateway", &listener.local_addr()?, &cfg);
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
