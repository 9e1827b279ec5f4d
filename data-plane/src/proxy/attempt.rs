//! The attempts of one request: its candidates in order, failing over on connection errors, timeouts, 5xx and 429
//! (never after the first byte of a response reached the client), each answer turned into ours by its provider,
//! metered, and, when the request declared tools, validated and re-asked for while the tool policy allows. A route
//! policy's `retries` bounds the attempts and its `timeout_ms` the whole request (see [`RouteLimits`]).

use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use futures_util::future::Either;
use policy_engine::config::BackendSpec;
use policy_engine::guardrail::{Side, Tally};
use policy_engine::routing::PlannedCandidate;
use policy_engine::tool_policy::InvalidCallAction;

use super::Proxy;
use crate::control::snapshot::CompiledSnapshot;
use crate::guardrails::Guard;
use crate::guardrails::stream::GuardedStream;
use crate::health::breaker::Outcome;
use crate::health::tracker::Ticket;
use crate::openai::error::GatewayError;
use crate::openai::request::ParsedRequest;
use crate::providers::upstream::{AttemptError, SendOptions};
use crate::providers::{self, AnswerError, StatusClass};
use crate::ratelimit::limiter::now_ms;
use crate::spend::metering::StreamMeter;
use crate::spend::record::SpendHandle;
use crate::stream::metered::MeteredStream;
use crate::stream::sse;
use crate::tools::governance::{self, ToolGovernance, ToolReport};
use crate::tools::stream::ToolStream;
use crate::trace;

/// One request's forwarding, shared by its attempts (and by the retries of invalid tool calls).
pub struct Attempts<'a> {
    pub proxy: &'a Proxy,
    pub snapshot: &'a CompiledSnapshot,
    pub parsed: &'a ParsedRequest,
    pub candidates: &'a [PlannedCandidate],
    pub policy: Option<&'a str>,
    pub id: &'a str,
    pub spend: &'a SpendHandle,
    /// The gateway injected `stream_options.include_usage`: the usage chunk is metered, not forwarded.
    pub strip_usage: bool,
    pub limits: RouteLimits,
    /// Every candidate's breaker was open: the one left is tried past it (see `Tracker::plan`).
    pub force_breakers: bool,
    /// The route policy's deadline for the whole request, set when its first attempt is sent.
    pub request_deadline: OnceLock<tokio::time::Instant>,
    /// The guardrails that apply to the request; their completion side inspects every answer.
    pub guard: Option<&'a Guard>,
}

/// What the route policy that chose the candidates set on their attempts (`docs/providers.md`, "How a failure
/// counts").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteLimits {
    /// How many attempts may be sent after the first, walking the candidates in order and wrapping around; `None`:
    /// each candidate once.
    pub retries: Option<u32>,
    /// The whole request's deadline, from its first attempt to the client's last byte, across every attempt.
    pub timeout_ms: Option<u64>,
}

/// The route policy's deadline passed: no attempt is started, the one under way is abandoned.
struct PastDeadline;

/// The order of one forwarding pass's attempts over `n` candidates from `start`. Without a retry bound each
/// candidate comes once (and a short `Retry-After` may repeat it once). With one, attempts go round the candidates
/// until `1 + retries` have been sent; a candidate that could not be sent to (its kind cannot serve the endpoint,
/// the egress rules refuse it) costs no retry and is not come back to.
#[derive(Debug)]
struct Walk {
    n: usize,
    start: usize,
    steps: usize,
    retries: Option<u32>,
    sent: u32,
    unusable: Vec<bool>,
}

impl Walk {
    fn new(n: usize, start: usize, retries: Option<u32>) -> Walk {
        Walk { n, start, steps: 0, retries, sent: 0, unusable: vec![false; n] }
    }

    /// The next candidate's position, or `None` when the pass is over.
    fn next(&mut self) -> Option<usize> {
        let limit = match self.retries {
            None => self.n.saturating_sub(self.steps),
            Some(_) if !self.may_send() => 0,
            Some(_) => self.n,
        };
        for _ in 0..limit {
            let position = (self.start + self.steps) % self.n;
            self.steps += 1;
            if !self.unusable[position] {
                return Some(position);
            }
        }
        None
    }

    /// Whether one more attempt may be sent (to the next candidate, or again to this one after a `Retry-After`).
    fn may_send(&self) -> bool {
        self.retries.is_none_or(|retries| self.sent <= retries)
    }

    /// The attempt to `position` was sent, or was refused before anything was (`sent == false`).
    fn record(&mut self, position: usize, sent: bool) {
        if sent {
            self.sent = self.sent.saturating_add(1);
        } else if let Some(unusable) = self.unusable.get_mut(position) {
            *unusable = true;
        }
    }
}

/// Tool validation for one forwarding pass.
struct ToolCheck<'a> {
    governance: &'a ToolGovernance,
    /// Whether an invalid answer may be re-asked (otherwise it is handled per the policy's action).
    can_retry: bool,
    report: &'a mut ToolReport,
}

enum Served {
    Response(Response),
    /// The answer's tool calls were invalid and may be retried (only when `ToolCheck::can_retry`).
    InvalidToolCalls,
}

impl Attempts<'_> {
    /// A request that declares no tools: the first usable answer of the candidates, in order.
    pub async fn plain(&self) -> Result<Response, GatewayError> {
        match self.forward(0, None).await? {
            Served::Response(response) => Ok(response),
            // Only a tool check that may retry asks for this.
            Served::InvalidToolCalls => Err(GatewayError::InvalidToolCall { violations: Vec::new() }),
        }
    }

    /// A request that declares tools: invalid answers are re-asked while the policy allows, first of the candidate
    /// that produced them, then of the following ones.
    pub async fn governed(&self, governance: &ToolGovernance) -> Result<Response, GatewayError> {
        let mut report = ToolReport::new(self.id, governance);
        let mut retries_left =
            if governance.decision.action == InvalidCallAction::Retry { governance.decision.max_retries } else { 0 };
        let mut start = 0;
        let mut retried = 0;
        loop {
            let check = ToolCheck { governance, can_retry: retries_left > 0, report: &mut report };
            match self.forward(start, Some(check)).await {
                Ok(Served::Response(response)) => return Ok(response),
                Ok(Served::InvalidToolCalls) => {
                    retries_left -= 1;
                    retried += 1;
                    let last = report.last_candidate.unwrap_or(start);
                    start = if retried == 1 { last } else { (last + 1) % self.candidates.len().max(1) };
                    tracing::info!(request_id = self.id, retry = retried, "invalid tool calls: asking again");
                }
                Err(error) => {
                    if matches!(error, GatewayError::InvalidToolCall { .. }) {
                        report.delivered = false;
                    }
                    // Dropping the report logs the request's end.
                    return Err(error);
                }
            }
        }
    }

    /// One attempt to `candidate`, which must be over by `deadline`. It counts (and the request is billed however
    /// it ends) from the moment it is sent, not when an answer starts: a client that leaves while the upstream
    /// works still leaves its event. A backend that refuses the `stream_options` the gateway added (older Azure API
    /// versions, strict servers) is asked again without them at once, and from then on never sent them: its streams
    /// are metered with the tokenizer instead.
    async fn send(
        &self,
        backend: &BackendSpec,
        candidate: &PlannedCandidate,
        deadline: tokio::time::Instant,
    ) -> Result<reqwest::Response, AttemptError> {
        let (upstreams, parsed) = (&self.proxy.upstreams, self.parsed);
        let trace = self.spend.trace();
        let span =
            trace::attempt_span(trace.span(), backend.kind, &backend.name, &candidate.model, &candidate.upstream_model);
        let trace_headers = trace.upstream_headers(&span);
        let send = |omit_usage_option: bool| {
            let options = SendOptions { request_id: self.id, omit_usage_option, trace_headers: &trace_headers };
            upstreams.send(backend, &candidate.upstream_model, parsed.endpoint, &parsed.body, options)
        };
        let attempt = self.send_once(backend, candidate, deadline, send).await;
        let (status, error) = match &attempt {
            Ok(response) => (Some(response.status().as_u16()), None),
            Err(error) => (error.status(), Some(error.class())),
        };
        trace::record_attempt(&span, status, error);
        attempt
    }

    /// [`Attempts::send`] with its span and trace headers in `send`.
    async fn send_once<F: Future<Output = Result<reqwest::Response, AttemptError>>>(
        &self,
        backend: &BackendSpec,
        candidate: &PlannedCandidate,
        deadline: tokio::time::Instant,
        send: impl Fn(bool) -> F,
    ) -> Result<reqwest::Response, AttemptError> {
        let upstreams = &self.proxy.upstreams;
        let omitted = self.strip_usage && upstreams.refuses_usage_option(&backend.name);
        let previous = self.spend.attempt(candidate);
        self.spend.exchange().set_deadline(deadline);
        let attempt = send(omitted).await;
        if let Err(AttemptError::Unsupported(_) | AttemptError::Refused(_) | AttemptError::Credentials(_)) = &attempt {
            // Refused before anything was sent: a backend kind that cannot serve the endpoint, a secret or an
            // address the egress rules refuse, credentials that could not be had.
            self.spend.not_sent(previous);
            return attempt;
        }
        match &attempt {
            Err(AttemptError::Status { status: 400, body, .. })
                if self.strip_usage && !omitted && body.contains("stream_options") =>
            {
                tracing::info!(backend = %backend.name, "the backend refuses stream_options; its streams are metered by the tokenizer");
                upstreams.remember_usage_option_refused(&backend.name);
                self.spend.attempt_failed("client_error", Some(400));
                self.spend.attempt(candidate);
                send(true).await
            }
            _ => attempt,
        }
    }

    /// When an attempt starting now must be over: its backend's `total` from now (the whole exchange, from sending
    /// to the client taking the last byte), capped by the route policy's deadline for the request, which starts
    /// with the request's first attempt. `None` once that deadline has passed.
    fn attempt_deadline(&self, total: Duration) -> Option<tokio::time::Instant> {
        let now = tokio::time::Instant::now();
        let own = now + total;
        let Some(timeout_ms) = self.limits.timeout_ms else { return Some(own) };
        let request = *self.request_deadline.get_or_init(|| now + Duration::from_millis(timeout_ms));
        (now < request).then(|| own.min(request))
    }

    /// One attempt to the candidate at `position`, recorded in `walk`, abandoned when the route policy's deadline
    /// passes; with the deadline it had to meet.
    async fn attempt(
        &self,
        backend: &BackendSpec,
        candidate: &PlannedCandidate,
        position: usize,
        walk: &mut Walk,
    ) -> Result<(Result<reqwest::Response, AttemptError>, tokio::time::Instant), PastDeadline> {
        let total = Duration::from_millis(backend.timeouts.total_ms);
        let deadline = self.attempt_deadline(total).ok_or(PastDeadline)?;
        let attempt = match self.request_deadline.get() {
            Some(&request) => tokio::time::timeout_at(request, self.send(backend, candidate, deadline))
                .await
                .map_err(|_| PastDeadline)?,
            None => self.send(backend, candidate, deadline).await,
        };
        let sent = !matches!(
            attempt,
            Err(AttemptError::Unsupported(_) | AttemptError::Refused(_) | AttemptError::Credentials(_))
        );
        walk.record(position, sent);
        Ok((attempt, deadline))
    }

    /// What set an attempt's `deadline`: the route policy's deadline for the whole request when it came first, else
    /// the backend's `total`.
    fn stream_limit(&self, deadline: tokio::time::Instant, total: Duration) -> sse::StreamLimit {
        match (self.request_deadline.get(), self.limits.timeout_ms) {
            (Some(&request), Some(timeout_ms)) if request == deadline => sse::StreamLimit::RoutePolicy {
                policy: self.policy.unwrap_or("-").to_owned(),
                timeout: Duration::from_millis(timeout_ms),
            },
            _ => sse::StreamLimit::BackendTotal(total),
        }
    }

    /// The answer to a request past its route policy's deadline, naming the policy, its timeout and what the
    /// attempts so far answered.
    fn request_timed_out(&self, failures: &[(String, AttemptError)]) -> GatewayError {
        let policy = self.policy.unwrap_or("-");
        let timeout_ms = self.limits.timeout_ms.unwrap_or_default();
        let mut message = format!("the route policy '{policy}' timeout_ms of {timeout_ms} ms passed");
        if !failures.is_empty() {
            let detail: Vec<String> = failures.iter().map(|(model, e)| format!("{model}: {}", e.describe())).collect();
            message.push_str(&format!("; before it: {}", detail.join("; ")));
        }
        GatewayError::UpstreamTimeout(message)
    }

    /// Try the candidates in order from `start` (wrapping around, as [`Walk`] says); answer with the first usable
    /// response.
    async fn forward(&self, start: usize, mut tools: Option<ToolCheck<'_>>) -> Result<Served, GatewayError> {
        let (proxy, candidates) = (self.proxy, self.candidates);
        let mut failures: Vec<(String, AttemptError)> = Vec::new();
        let mut walk = Walk::new(candidates.len(), start, self.limits.retries);
        // Candidates whose breaker opened since the request was planned (or whose probe another request took).
        let mut open: Vec<&str> = Vec::new();
        while let Some(position) = walk.next() {
            let candidate = &candidates[position];
            let Some(backend) = self.snapshot.config.backends.get(&candidate.backend) else {
                walk.record(position, false);
                continue;
            };
            // Never waited on: an open breaker skips the candidate as if nothing could be sent to it.
            let Some(ticket) = self.admit(candidate, self.force_breakers) else {
                walk.record(position, false);
                open.push(&candidate.backend);
                continue;
            };
            // Rate limits (docs/rate-limits.md): a backend at its limit on this data plane is skipped, not refused
            // (the breaker's ticket, dropped unused, releases a probe it held).
            if !self.spend.rates().admit_backend(&backend.name, backend.rate_limit, now_ms()) {
                walk.record(position, false);
                continue;
            }
            if !failures.is_empty() {
                metrics::counter!(crate::metrics::FAILOVERS, "alias" => self.parsed.model.clone(),
                    "backend" => candidate.backend.clone())
                .increment(1);
            }
            let sent_at = tokio::time::Instant::now();
            let Ok((mut attempt, mut deadline)) = self.attempt(backend, candidate, position, &mut walk).await else {
                return Err(self.request_timed_out(&failures));
            };
            self.settle(ticket, &attempt, backend, sent_at);
            // A short Retry-After is waited out once on the same candidate (a retry, when they are bounded); a long
            // one, or one that would end past the route policy's deadline, moves on.
            if let Err(AttemptError::Status { status: 429, retry_after: Some(wait), .. }) = &attempt
                && *wait <= proxy.max_retry_after
                && walk.may_send()
                && self.request_deadline.get().is_none_or(|&request| tokio::time::Instant::now() + *wait < request)
            {
                tokio::time::sleep(*wait).await;
                // Rate limits: the repeat is one more request to the backend, taken when it is sent.
                if self.spend.rates().admit_backend(&backend.name, backend.rate_limit, now_ms()) {
                    // The same candidate again, whatever its breaker says since: the backend named the wait.
                    let ticket = self.admit(candidate, true);
                    let sent_at = tokio::time::Instant::now();
                    let Ok(again) = self.attempt(backend, candidate, position, &mut walk).await else {
                        return Err(self.request_timed_out(&failures));
                    };
                    if let Some(ticket) = ticket {
                        self.settle(ticket, &again.0, backend, sent_at);
                    }
                    (attempt, deadline) = again;
                }
            }
            match attempt {
                Ok(response) => {
                    if let Some(tools) = tools.as_mut() {
                        tools.report.last_candidate = Some(position);
                    }
                    let mut reply = match self.respond(response, backend, tools, candidate, deadline).await? {
                        Served::Response(reply) => reply,
                        Served::InvalidToolCalls => return Ok(Served::InvalidToolCalls),
                    };
                    let headers = reply.headers_mut();
                    for (name, value) in [
                        ("x-gateway-backend", candidate.backend.as_str()),
                        ("x-gateway-model", candidate.model.as_str()),
                        ("x-gateway-policy", self.policy.unwrap_or("-")),
                        ("x-gateway-snapshot-version", &self.snapshot.version.to_string()),
                    ] {
                        if let Ok(value) = HeaderValue::from_str(value) {
                            headers.insert(name, value);
                        }
                    }
                    if !failures.is_empty() {
                        tracing::info!(served_by = %candidate.model, failed = failures.len(), "served after failover");
                    }
                    return Ok(Served::Response(reply));
                }
                // The caller's own mistake: the next candidate would refuse it too.
                Err(AttemptError::Status { status, body, .. })
                    if providers::of(backend.kind).classify(status) == StatusClass::CallersMistake =>
                {
                    self.spend.finish(status, "upstream_error");
                    let body = providers::of(backend.kind).error_body(body);
                    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
                    let mut reply = (status, body).into_response();
                    reply.headers_mut().insert("content-type", HeaderValue::from_static("application/json"));
                    return Ok(Served::Response(reply));
                }
                Err(error) => {
                    metrics::counter!(crate::metrics::UPSTREAM_ERRORS, "backend" => candidate.backend.clone(),
                        "class" => error.class())
                    .increment(1);
                    if error.was_sent() {
                        self.spend.attempt_failed(error.class(), error.status());
                    }
                    tracing::warn!(model = %candidate.model, backend = %candidate.backend, error = %error.describe(), "candidate failed");
                    failures.push((candidate.model.clone(), error));
                }
            }
        }
        // Rate limits: no candidate was tried because each was at its limit here: 429 naming them.
        if failures.is_empty()
            && let Some(refusal) = self.spend.rates().refusal()
        {
            return Err(GatewayError::RateLimited(refusal));
        }
        if failures.is_empty() && !open.is_empty() {
            return Err(GatewayError::UpstreamUnavailable(format!(
                "every candidate's circuit breaker is open ({}); retry later",
                open.join(", ")
            )));
        }
        Err(all_failed(&failures))
    }

    /// Admit an attempt to `candidate` past its breaker, publishing the board if that took the probe.
    fn admit(&self, candidate: &PlannedCandidate, force: bool) -> Option<Ticket> {
        let ticket = self.proxy.tracker.admit(candidate, force)?;
        if ticket.changed {
            self.proxy.tracker.publish(&self.proxy.health);
        }
        Some(ticket)
    }

    /// Feed an attempt's outcome to its backend's breaker and latency, publishing the board if the breaker changed.
    fn settle(
        &self,
        ticket: Ticket,
        attempt: &Result<reqwest::Response, AttemptError>,
        backend: &BackendSpec,
        sent_at: tokio::time::Instant,
    ) {
        let elapsed = u64::try_from(sent_at.elapsed().as_millis()).unwrap_or(u64::MAX);
        if ticket.record(outcome_of(attempt, backend, elapsed)) {
            self.proxy.tracker.publish(&self.proxy.health);
        }
    }

    /// Turn a successful upstream response into ours: streamed through as it comes (metered on the way), or read
    /// whole and metered, all by the attempt's `deadline`. With `tools`, tool calls are validated: a non-streamed
    /// answer whole, a streamed one per call (see [`crate::tools::stream`]).
    async fn respond(
        &self,
        upstream: reqwest::Response,
        backend: &BackendSpec,
        tools: Option<ToolCheck<'_>>,
        candidate: &PlannedCandidate,
        deadline: tokio::time::Instant,
    ) -> Result<Served, GatewayError> {
        let total = Duration::from_millis(backend.timeouts.total_ms);
        let provider = providers::of(backend.kind);
        let stream = self.parsed.stream;
        let status = StatusCode::from_u16(upstream.status().as_u16()).unwrap_or(StatusCode::OK);
        let content_type = upstream.headers().get("content-type").cloned();
        let is_sse = content_type.as_ref().and_then(|v| v.to_str().ok()).is_some_and(|v| provider.streams(v));
        let mut validation = None;
        let body = if stream && is_sse {
            let meter = StreamMeter::new(self.strip_usage);
            let bytes = provider.stream(upstream.bytes_stream().boxed());
            let metered = MeteredStream::new(bytes, meter, self.spend.clone(), candidate.model.clone());
            // After metering (the upstream's tokens are billed whatever a guardrail does), before the client stages.
            let metered = match self.guard.filter(|guard| guard.covers(Side::Completion)) {
                Some(guard) => Either::Right(GuardedStream::new(metered, guard.clone(), Some(self.spend.clone()))),
                None => Either::Left(metered),
            };
            match tools {
                None => {
                    self.spend.streaming();
                    let limit = self.stream_limit(deadline, total);
                    Body::from_stream(sse::passthrough(metered, deadline, limit, Some(self.spend.clone())))
                }
                Some(tools) => match self.governed_stream(metered, deadline, total, tools, candidate).await? {
                    Some(body) => {
                        self.spend.streaming();
                        body
                    }
                    None => return Ok(Served::InvalidToolCalls),
                },
            }
        } else {
            let limit = self.proxy.max_upstream_answer_bytes;
            let bytes = tokio::time::timeout_at(deadline, providers::body::read_at_most(upstream, limit))
                .await
                .map_err(|_| {
                    if self.request_deadline.get() == Some(&deadline) {
                        return self.request_timed_out(&[]);
                    }
                    GatewayError::UpstreamTimeout(format!(
                        "the response exceeded the total timeout of {} ms",
                        total.as_millis()
                    ))
                })?
                .map_err(|e| match e {
                    providers::body::BodyError::TooLarge { limit } => GatewayError::UpstreamFailed(format!(
                        "the upstream's answer is larger than {limit} bytes (GATEWAY_MAX_UPSTREAM_ANSWER_BYTES)"
                    )),
                    providers::body::BodyError::Read(e) => {
                        GatewayError::UpstreamFailed(format!("reading the upstream response failed: {e}"))
                    }
                })?;
            let bytes = match provider.answer(bytes.clone()) {
                Ok(translated) => translated,
                Err(error) => {
                    // The upstream read the prompt whatever came back: metered as estimated.
                    self.spend.add_answer(&candidate.model, &bytes);
                    return Err(match error {
                        AnswerError::Malformed(why) => GatewayError::UpstreamFailed(why),
                        AnswerError::Filtered(why) => GatewayError::ContentFiltered(why),
                    });
                }
            };
            // Metered before the tool check: an answer that is rejected or retried was still billed.
            self.spend.add_answer(&candidate.model, &bytes);
            if let Some(tools) = tools {
                let declared = &tools.governance.declared;
                let calls = governance::check_completion(&bytes, declared);
                let invalid = calls.iter().any(|c| !c.is_valid());
                if !calls.is_empty() {
                    validation = Some(if invalid { "invalid" } else { "valid" });
                }
                let violations = governance::violations(&calls);
                tools.report.add_answer(calls, declared, &candidate.model, &candidate.backend, Some(self.spend));
                if invalid && tools.governance.decision.action.blocks() {
                    if tools.can_retry {
                        return Ok(Served::InvalidToolCalls);
                    }
                    return Err(GatewayError::InvalidToolCall { violations });
                }
            }
            let bytes = match self.guard.filter(|guard| guard.covers(Side::Completion)) {
                Some(guard) => {
                    let mut found = Tally::default();
                    let checked = match guard.answer(&bytes, &mut found) {
                        Ok(redacted) => {
                            let answer = redacted.unwrap_or(bytes);
                            let upstreams = &self.proxy.upstreams;
                            guard.classify_answer(upstreams, &answer, self.id, &mut found).await.map(|()| answer)
                        }
                        Err(error) => Err(error),
                    };
                    guard.record(&found, Some(self.spend));
                    checked?
                }
                None => bytes,
            };
            self.spend.finish(status.as_u16(), "ok");
            Body::from(bytes)
        };
        let mut response = Response::new(body);
        *response.status_mut() = status;
        if provider.translates() && !is_sse {
            response.headers_mut().insert("content-type", HeaderValue::from_static("application/json"));
        } else if provider.translates() && stream {
            // A translated stream is server-sent events whatever the upstream's framing (Bedrock's event stream).
            response.headers_mut().insert("content-type", HeaderValue::from_static("text/event-stream"));
        } else if let Some(content_type) = content_type {
            response.headers_mut().insert("content-type", content_type);
        }
        if stream && is_sse {
            response.headers_mut().insert("cache-control", HeaderValue::from_static("no-cache"));
        }
        if let Some(validation) = validation {
            response.headers_mut().insert(governance::VALIDATION_HEADER, HeaderValue::from_static(validation));
        }
        Ok(Served::Response(response))
    }

    /// A streamed answer to a request that declared tools. When an invalid answer may be retried, the stream is
    /// read ahead (nothing sent) until text or a validated call is ready to go out; an invalid call before that
    /// point returns `None` so the caller asks again (the abandoned stream is metered for what it produced). Once
    /// the client has received something, an invalid call ends the stream with an error event instead.
    async fn governed_stream<S>(
        &self,
        upstream: S,
        deadline: tokio::time::Instant,
        total: Duration,
        tools: ToolCheck<'_>,
        candidate: &PlannedCandidate,
    ) -> Result<Option<Body>, GatewayError>
    where
        S: futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin + Send + 'static,
    {
        let declared = tools.governance.declared.clone();
        let mut stage = ToolStream::new(declared.clone(), tools.governance.decision.action.blocks());
        let mut upstream = upstream.fuse();
        let mut initial = Vec::new();
        if tools.can_retry {
            while !stage.committed() && !stage.saw_done() {
                match tokio::time::timeout_at(deadline, upstream.next()).await {
                    Ok(Some(Ok(chunk))) => stage.push(&chunk, &mut initial),
                    // Ended, failed or timed out: the stream wrapper reports it to the client.
                    _ => break,
                }
                if stage.rejected() {
                    let calls = stage.take_outcomes();
                    tools.report.add_answer(calls, &declared, &candidate.model, &candidate.backend, Some(self.spend));
                    return Ok(None);
                }
            }
        }
        let report = sse::StreamReport {
            report: tools.report.hand_over(),
            declared,
            model: candidate.model.clone(),
            backend: candidate.backend.clone(),
            spend: Some(self.spend.clone()),
        };
        let limit = self.stream_limit(deadline, total);
        Ok(Some(Body::from_stream(sse::governed(upstream, stage, initial, deadline, limit, report))))
    }
}

/// What an attempt says of its backend (`docs/providers.md`, "Circuit breakers"): any answer but a 429 or one that
/// fails over is the backend answering (a 4xx is the caller's mistake, never the backend's); 5xx, redirects,
/// connection failures and timeouts are failures; a 429 with `Retry-After` pauses the backend for that long, one
/// without says nothing (rate limits are per caller as often as per backend); nothing sent says nothing.
fn outcome_of(attempt: &Result<reqwest::Response, AttemptError>, backend: &BackendSpec, ms: u64) -> Option<Outcome> {
    match attempt {
        Ok(_) => Some(Outcome::Answered { ttfb_ms: ms }),
        Err(AttemptError::Status { status: 429, retry_after, .. }) => retry_after
            .map(|wait| Outcome::RateLimited { retry_after_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX) }),
        Err(AttemptError::Status { status, .. }) => match providers::of(backend.kind).classify(*status) {
            StatusClass::CallersMistake => Some(Outcome::Answered { ttfb_ms: ms }),
            StatusClass::FailOver => Some(Outcome::Failed { ttfb_ms: None }),
        },
        // A token endpoint that fails makes the backend unusable as surely as a refused connection.
        Err(AttemptError::Redirect { .. } | AttemptError::Connect(_) | AttemptError::Credentials(_)) => {
            Some(Outcome::Failed { ttfb_ms: None })
        }
        Err(AttemptError::Timeout(_)) => Some(Outcome::Failed { ttfb_ms: Some(ms) }),
        Err(AttemptError::Unsupported(_) | AttemptError::Refused(_)) => None,
    }
}

/// The error for a request no candidate could serve, naming what each answered.
fn all_failed(failures: &[(String, AttemptError)]) -> GatewayError {
    let detail: Vec<String> = failures.iter().map(|(model, e)| format!("{model}: {}", e.describe())).collect();
    let message = format!("every candidate failed: {}", detail.join("; "));
    let all = |f: fn(&AttemptError) -> bool| !failures.is_empty() && failures.iter().all(|(_, e)| f(e));
    if all(|e| matches!(e, AttemptError::Status { status: 429, .. })) {
        let retry_after = failures
            .iter()
            .filter_map(|(_, e)| match e {
                AttemptError::Status { retry_after, .. } => retry_after.map(|d| d.as_secs().max(1)),
                _ => None,
            })
            .min();
        GatewayError::UpstreamRateLimited { message, retry_after }
    } else if all(|e| matches!(e, AttemptError::Refused(_))) {
        // This data plane will not use any candidate as configured: retrying cannot help until the configuration
        // (or this data plane's settings) change.
        GatewayError::BackendMisconfigured(message)
    } else if all(|e| matches!(e, AttemptError::Timeout(_))) {
        GatewayError::UpstreamTimeout(message)
    } else if all(|e| matches!(e, AttemptError::Unsupported(_))) {
        // No candidate can take this request at all: the caller's to change, not an outage.
        GatewayError::Unsupported(message)
    } else if all(|e| {
        matches!(e, AttemptError::Connect(_) | AttemptError::Credentials(_) | AttemptError::Unsupported(_))
    }) {
        GatewayError::UpstreamUnavailable(message)
    } else {
        GatewayError::UpstreamFailed(message)
    }
}

#[cfg(test)]
mod tests {
    use super::Walk;

    /// The positions a pass tries when every attempt fails, with the positions that cannot be sent to.
    fn tried(n: usize, start: usize, retries: Option<u32>, unsendable: &[usize]) -> Vec<usize> {
        let mut walk = Walk::new(n, start, retries);
        let mut tried = Vec::new();
        while let Some(position) = walk.next() {
            tried.push(position);
            walk.record(position, !unsendable.contains(&position));
        }
        tried
    }

    #[test]
    fn without_a_bound_each_candidate_is_tried_once_from_the_start() {
        assert_eq!(tried(3, 0, None, &[]), [0, 1, 2]);
        assert_eq!(tried(3, 2, None, &[]), [2, 0, 1]);
        assert_eq!(tried(3, 0, None, &[1]), [0, 1, 2]);
        assert_eq!(tried(0, 0, None, &[]), Vec::<usize>::new());
    }

    #[test]
    fn retries_bound_the_attempts_sent_and_wrap_around() {
        assert_eq!(tried(2, 0, Some(0), &[]), [0], "no failover at all");
        assert_eq!(tried(3, 0, Some(1), &[]), [0, 1]);
        assert_eq!(tried(1, 0, Some(2), &[]), [0, 0, 0], "one candidate, asked three times");
        assert_eq!(tried(2, 1, Some(4), &[]), [1, 0, 1, 0, 1]);
        assert_eq!(tried(0, 0, Some(3), &[]), Vec::<usize>::new());
    }

    #[test]
    fn a_candidate_nothing_was_sent_to_costs_no_retry_and_is_not_come_back_to() {
        assert_eq!(tried(3, 0, Some(0), &[0]), [0, 1], "refused before sending: the next one is the first attempt");
        assert_eq!(tried(2, 0, Some(3), &[1]), [0, 1, 0, 0, 0]);
        assert_eq!(tried(2, 0, Some(5), &[0, 1]), [0, 1], "nothing can be sent: the pass ends");
    }

    #[test]
    fn a_repeat_of_the_same_candidate_is_a_retry_when_they_are_bounded() {
        let mut walk = Walk::new(2, 0, Some(1));
        assert_eq!(walk.next(), Some(0));
        walk.record(0, true);
        assert!(walk.may_send(), "one retry left: a short Retry-After may repeat the candidate");
        walk.record(0, true);
        assert!(!walk.may_send());
        assert_eq!(walk.next(), None);
        let mut unbounded = Walk::new(1, 0, None);
        assert_eq!(unbounded.next(), Some(0));
        unbounded.record(0, true);
        assert!(unbounded.may_send());
    }
}
