//! The floor for the shared store (feature `redis`): one way to connect to Redis
//! and one mapping of its errors, for the rate limiter, the identity stores and the
//! abuse monitor.

use std::time::Duration;

use redis::aio::ConnectionManager;

use crate::error::{Error, ErrorKind};

pub(crate) fn redis_err(what: &'static str) -> impl FnOnce(redis::RedisError) -> Error {
    // The message names the kind of failure only: a Redis error can echo the URL.
    move |e| Error::new(ErrorKind::Backend, format!("{what}: redis {:?}", e.kind()))
}

/// A connection manager to `url` whose calls fail after `timeout` (one retry).
pub(crate) async fn connect(url: &str, timeout: Duration) -> Result<ConnectionManager, Error> {
    let client = redis::Client::open(url).map_err(redis_err("redis url"))?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_response_timeout(timeout)
        .set_connection_timeout(timeout)
        .set_number_of_retries(1);
    client
        .get_connection_manager_with_config(config)
        .await
        .map_err(redis_err("connect"))
}
