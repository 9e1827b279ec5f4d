//! The gateway's policy engine, shared by both planes and free of IO.
//!
//! The control plane uses it to validate what governance teams write and to dry-run requests; the data plane
//! uses it to compile snapshots and route requests. Because both call the same code, a policy the control plane
//! accepted cannot fail to compile in a data plane for a reason the control plane could have seen.
//!
//! - [`config`]: the resource types and cross-resource integrity rules.
//! - [`validate`]: per-resource validation with field-located errors.
//! - [`fields`]: the limits of every written field (lengths, ranges, money) and their OpenAPI schemas.
//! - [`facts`]: what routing and policies know of a request and of the caller's key.
//! - [`cel_decls`]: the CEL environment's declarations (variables, fields, scopes, what an expression reads).
//! - [`cel_env`]: the one CEL environment, compile-time checked.
//! - `cel_native`: native evaluation of the common policy shapes, falling back to the interpreter.
//! - [`routing`]: policy matching, constraints, candidate ordering.
//! - [`tool_schema`]: JSON Schema compilation for tool arguments.
//! - [`tool_policy`]: tool policies (who may declare which tools) and tool-call validation.
//! - [`guardrail`]: guardrails (content safety, data protection): detectors compiled once, scanning and redaction.
//! - [`guardrail_classifier`]: guardrails' external classifiers (moderation, webhook): settings, bodies, verdicts.
//! - [`base_url`]: backend URL normalisation, the SSRF allowlist and the always-refused addresses.
//! - [`secret_ref`]: which environment variables a backend's secret reference may name.
//! - [`budget_period`]: UTC calendar budget periods.
//! - [`tokens`]: prompt-token estimates with a real tokenizer.

pub mod aws_secret;
pub mod base_url;
pub mod budget_period;
mod cel_check;
pub mod cel_decls;
pub mod cel_env;
pub mod cel_limits;
mod cel_native;
pub mod config;
pub mod facts;
pub mod fields;
pub mod google_secret;
pub mod guardrail;
pub mod guardrail_classifier;
mod guardrail_detectors;
pub mod guardrail_spec;
pub mod routing;
pub mod secret_ref;
pub mod tokens;
pub mod tool_policy;
pub mod tool_schema;
pub mod validate;
