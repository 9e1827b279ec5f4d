//! The data plane's request pipeline in process: `data_plane::run` serving a snapshot built in the test, in front
//! of in-process mock upstreams (`gateway_e2e::pipeline`). No Postgres, no control plane, no prebuilt binary; each
//! test takes about the tokenizer's load. What crosses the planes is in the `e2e` test binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod anthropic;
mod outbound;
mod proxy;
mod rate_limits;
mod resilience;
mod retries;
mod strategies;
mod tools;
