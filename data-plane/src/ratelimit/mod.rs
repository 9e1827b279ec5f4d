//! Rate limits: per API key and per backend, each data plane enforcing its share of every limit in fixed windows
//! aligned to the wall clock, so that the fleet's shares bound each window (`docs/rate-limits.md`).
//!
//! - [`window`]: the fixed window, a plane's share of a limit, OpenAI's header formats (pure, the clock injected).
//! - [`limiter`]: the state shared by requests (`RateLimiter`) and one request's charges (`RequestRates`).
//!
//! Below `spend/` (whose record settles a request's tokens when it ends) and above `openai/` (the refusal's shape).

pub mod limiter;
pub mod window;
