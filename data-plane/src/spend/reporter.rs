//! The spend reporter: collects this data plane's spend events, cuts them into batches every
//! `GATEWAY_SPEND_REPORT_INTERVAL_MS` (sooner when a batch is full), writes each batch to the [`Spool`] and sends the
//! spooled batches, oldest first, with `ReportSpend`, retrying with jittered backoff until the ledger acknowledges
//! them. An acknowledgement moves the batch's spend from "unacknowledged" to "acknowledged" in the
//! [`BudgetLedger`] and deletes the batch's file.
//!
//! On shutdown (SIGTERM), [`Reporter::close`] waits until every request's record is made, cuts what is left and
//! keeps sending until the spool is empty or `GATEWAY_SPEND_FLUSH_TIMEOUT_MS` passes; what is left stays spooled and
//! is sent by the next start. A SIGKILL loses the events of requests in flight and those not yet on disk: an event
//! is cut into a batch at the next tick of the interval and on disk one spool write later, so at most
//! `max(interval, w) + w` after it was recorded, `w` being the longest spool write
//! (`gateway_spend_spool_write_seconds`; `docs/spend.md`).

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use gateway_proto::v1;
use policy_engine::config::BudgetSpec;
use prost::Message;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::budgets::{BudgetLedger, Contributions, event_contributions};
use super::spool::{Spool, SpoolFile};
use crate::control::connection::{Backoff, ControlPlaneConnection, DiscoveryClient};

/// How spend is reported; from the serve flags.
#[derive(Debug, Clone)]
pub struct ReporterSettings {
    pub node_id: String,
    pub interval: Duration,
    pub max_batch_events: usize,
    pub flush_timeout: Duration,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
}

/// How long one `ReportSpend` call may take before it counts as failed (and is sent again).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest batch, encoded: far below what the control plane decodes (64 MiB), however large events are.
const MAX_BATCH_BYTES: usize = 4 << 20;

struct Queued {
    batch: v1::SpendBatch,
    /// Each event's budget contributions, by position in `batch.events`.
    contributions: Vec<Contributions>,
    /// `None` when the spool could not be written: the batch lives in memory only.
    file: Option<SpoolFile>,
    bytes: u64,
}

pub struct Reporter {
    settings: ReporterSettings,
    ledger: Arc<BudgetLedger>,
    /// Where batches go; `None` without a control plane (`GATEWAY_SNAPSHOT`): spend counts against budgets locally
    /// and is not reported.
    connection: Option<ControlPlaneConnection>,
    client: OnceLock<DiscoveryClient>,
    spool: Option<Arc<Spool>>,
    buffer: Mutex<Vec<(v1::SpendEvent, Contributions)>>,
    buffer_full: Notify,
    queue: Mutex<VecDeque<Queued>>,
    queued: Notify,
    queued_bytes: AtomicU64,
    /// Requests whose record is not made yet, and a wake-up for when that reaches zero.
    open_records: AtomicUsize,
    all_recorded: Notify,
    /// How long until the sender tries again, in milliseconds (what a refusal for a full spool advises).
    retry_in_ms: AtomicU64,
}

/// A request whose spend record is still to be made; the reporter's flush waits for every one (see
/// [`Reporter::open_record`]).
pub struct OpenRecord {
    reporter: Arc<Reporter>,
}

impl Drop for OpenRecord {
    fn drop(&mut self) {
        if self.reporter.open_records.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.reporter.all_recorded.notify_waiters();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Reporter {
    /// Open the spool and queue the batches an earlier run left in it (their spend counts against `budgets` until
    /// acknowledged). A spool that cannot be opened is logged and the reporter keeps batches in memory.
    pub fn open(
        settings: ReporterSettings,
        ledger: Arc<BudgetLedger>,
        connection: Option<ControlPlaneConnection>,
        budgets: &BTreeMap<String, BudgetSpec>,
    ) -> Arc<Reporter> {
        let mut queue = VecDeque::new();
        let mut queued_bytes = 0;
        let spool = match connection.as_ref().map(|_| Spool::open(&settings.spool_dir, settings.spool_max_bytes)) {
            None => None,
            Some(Ok((spool, stored))) => {
                let events: usize = stored.iter().map(|s| s.batch.events.len()).sum();
                if !stored.is_empty() {
                    tracing::info!(batches = stored.len(), events, "sending spend batches left in the spool");
                }
                for stored in stored {
                    let contributions: Vec<Contributions> =
                        stored.batch.events.iter().map(|e| event_contributions(budgets, e)).collect();
                    contributions.iter().for_each(|c| ledger.record_local(c));
                    queued_bytes += stored.file.bytes;
                    queue.push_back(Queued {
                        batch: stored.batch,
                        contributions,
                        bytes: stored.file.bytes,
                        file: Some(stored.file),
                    });
                }
                Some(Arc::new(spool))
            }
            Some(Err(error)) => {
                tracing::error!(%error, "the spend spool cannot be used; batches are kept in memory until acknowledged");
                None
            }
        };
        if connection.is_none() {
            tracing::warn!("no control plane: spend counts against budgets here but is not reported to a ledger");
        }
        Arc::new(Reporter {
            settings,
            ledger,
            connection,
            client: OnceLock::new(),
            spool,
            buffer: Mutex::new(Vec::new()),
            buffer_full: Notify::new(),
            queue: Mutex::new(queue),
            queued: Notify::new(),
            queued_bytes: AtomicU64::new(queued_bytes),
            open_records: AtomicUsize::new(0),
            all_recorded: Notify::new(),
            retry_in_ms: AtomicU64::new(0),
        })
    }

    /// A request that will be recorded: held until its record is made, so the flush on shutdown comes after it.
    pub fn open_record(self: &Arc<Self>) -> OpenRecord {
        self.open_records.fetch_add(1, Ordering::AcqRel);
        OpenRecord { reporter: self.clone() }
    }

    /// Wait until every open record is made, for at most `timeout`; how many are still open.
    async fn all_recorded(&self, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.all_recorded.notified();
            let open = self.open_records.load(Ordering::Acquire);
            if open == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.open_records.load(Ordering::Acquire);
            }
        }
    }

    /// Seconds until spend is next sent to the control plane (at least 1): when to try again after a refusal for
    /// a full spool.
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_in_ms.load(Ordering::Relaxed).div_ceil(1000).max(1)
    }

    /// Take one request's event (its spend counts against budgets at once).
    pub fn record(&self, event: v1::SpendEvent, contributions: Contributions) {
        self.ledger.record_local(&contributions);
        if self.connection.is_none() {
            return;
        }
        let mut buffer = lock(&self.buffer);
        buffer.push((event, contributions));
        if buffer.len() >= self.settings.max_batch_events {
            self.buffer_full.notify_one();
        }
    }

    /// The spool is full: the data plane refuses requests it could not account for.
    pub fn is_full(&self) -> bool {
        let queued = self.queued_bytes.load(Ordering::Relaxed);
        queued > 0 && queued >= self.settings.spool_max_bytes
    }

    /// Batches waiting for an acknowledgement, and events not batched yet.
    pub fn pending(&self) -> (usize, usize) {
        (lock(&self.queue).len(), lock(&self.buffer).len())
    }

    /// Cut batches every interval and send them until `shutdown`; then [`Reporter::close`] takes over.
    pub fn spawn(self: &Arc<Self>, shutdown: CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
        let Some(connection) = &self.connection else { return Vec::new() };
        match connection.endpoint().and_then(|endpoint| connection.client(endpoint.connect_lazy())) {
            Ok(client) => {
                let _ = self.client.set(client);
            }
            Err(error) => tracing::error!(%error, "spend cannot be reported; batches stay spooled"),
        }
        let batcher = {
            let reporter = self.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                // Fixed ticks, not a pause after each cut: a slow spool write does not push the next cut later
                // (a tick missed during a write fires as soon as it ends).
                let mut ticks = tokio::time::interval(reporter.settings.interval);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        _ = ticks.tick() => {}
                        () = reporter.buffer_full.notified() => {}
                    }
                    reporter.cut().await;
                }
            })
        };
        let sender = {
            let reporter = self.clone();
            tokio::spawn(async move { reporter.send_until(shutdown).await })
        };
        vec![batcher, sender]
    }

    /// Flush on shutdown: batch what is left and send until the spool is empty or the flush timeout passes.
    pub async fn close(&self) {
        // Every request's record first: the last cut must hold them all.
        let open = self.all_recorded(self.settings.flush_timeout).await;
        if open > 0 {
            tracing::error!(open, "requests still unrecorded at shutdown; their spend is lost");
        }
        if self.connection.is_none() {
            return;
        }
        self.cut().await;
        let deadline = tokio::time::Instant::now() + self.settings.flush_timeout;
        while !lock(&self.queue).is_empty() {
            let sent = tokio::time::timeout_at(deadline, self.send_front()).await;
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            if !matches!(sent, Ok(Ok(()))) {
                tokio::time::sleep(Duration::from_millis(100).min(deadline - tokio::time::Instant::now())).await;
            }
        }
        let (batches, _) = self.pending();
        if batches == 0 {
            tracing::info!("spend flushed: every batch acknowledged");
        } else if self.spool.is_some() {
            tracing::warn!(batches, "spend not acknowledged before shutdown stays spooled for the next start");
        } else {
            tracing::error!(batches, "spend not acknowledged before shutdown is lost: the spool was unusable");
        }
    }

    /// Move the buffered events into batches (at most `max_batch_events` and [`MAX_BATCH_BYTES`] each), spool them
    /// and queue them for sending.
    async fn cut(&self) {
        let buffered = std::mem::take(&mut *lock(&self.buffer));
        if buffered.is_empty() {
            return;
        }
        let mut batch = Vec::new();
        let mut bytes = 0;
        for (event, contributions) in buffered {
            let size = event.encoded_len();
            if !batch.is_empty() && (batch.len() == self.settings.max_batch_events || bytes + size > MAX_BATCH_BYTES) {
                let full = std::mem::take(&mut batch);
                let queued = self.spooled(full.into_iter().unzip()).await;
                lock(&self.queue).extend(queued);
                bytes = 0;
            }
            bytes += size;
            batch.push((event, contributions));
        }
        let queued = self.spooled(batch.into_iter().unzip()).await;
        lock(&self.queue).extend(queued);
        metrics::gauge!("gateway_spend_queued_batches").set(lock(&self.queue).len() as f64);
        self.queued.notify_one();
    }

    /// A new batch of `events`, written to the spool (kept in memory when the spool cannot take it).
    async fn spooled(&self, (events, contributions): (Vec<v1::SpendEvent>, Vec<Contributions>)) -> Option<Queued> {
        if events.is_empty() {
            return None;
        }
        let batch = v1::SpendBatch {
            node_id: self.settings.node_id.clone(),
            events,
            batch_id: uuid::Uuid::now_v7().to_string(),
        };
        let bytes = batch.encoded_len() as u64;
        let (batch, file) = match &self.spool {
            Some(spool) => {
                let spool = spool.clone();
                let started = std::time::Instant::now();
                let written = tokio::task::spawn_blocking(move || {
                    let file = spool.write(&batch);
                    (batch, file)
                })
                .await;
                // Part of what a SIGKILL can lose (see the module documentation).
                metrics::histogram!("gateway_spend_spool_write_seconds").record(started.elapsed().as_secs_f64());
                match written {
                    Ok((batch, Ok(file))) => (batch, Some(file)),
                    Ok((batch, Err(error))) => {
                        tracing::error!(%error, "could not spool a spend batch; keeping it in memory");
                        (batch, None)
                    }
                    Err(error) => {
                        // The batch went with the failed task: its spend must stop counting here too.
                        tracing::error!(%error, events = contributions.len(), "spooling a spend batch failed; its events are lost");
                        self.ledger.acknowledged(0, contributions.iter().map(|c| (c, false)));
                        return None;
                    }
                }
            }
            None => (batch, None),
        };
        self.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        Some(Queued { batch, contributions, file, bytes })
    }

    async fn send_until(&self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new();
        self.retry_in_ms.store(self.settings.interval.as_millis() as u64, Ordering::Relaxed);
        loop {
            if lock(&self.queue).is_empty() {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = self.queued.notified() => continue,
                }
            }
            let sent = tokio::select! {
                () = shutdown.cancelled() => return,
                sent = self.send_front() => sent,
            };
            match sent {
                Ok(()) => {
                    backoff.reset();
                    self.retry_in_ms.store(self.settings.interval.as_millis() as u64, Ordering::Relaxed);
                }
                Err(()) => {
                    let delay = backoff.next();
                    self.retry_in_ms.store(delay.as_millis() as u64, Ordering::Relaxed);
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                        // The control plane is back: what waited in the spool goes now, so that other data planes
                        // see this one's spend as soon as possible.
                        () = self.ledger.resumed().notified() => backoff.reset(),
                    }
                }
            }
        }
    }

    /// Send the oldest queued batch; on an acknowledgement, account for it and drop it from the queue and spool.
    async fn send_front(&self) -> Result<(), ()> {
        let Some(client) = self.client.get() else { return Err(()) };
        let Some((batch, events)) = lock(&self.queue).front().map(|q| (q.batch.clone(), q.batch.events.len())) else {
            return Ok(());
        };
        let batch_id = batch.batch_id.clone();
        let mut request = tonic::Request::new(batch);
        request.set_timeout(CALL_TIMEOUT);
        match client.clone().report_spend(request).await {
            Ok(ack) => {
                let ack = ack.into_inner();
                self.acknowledged(&batch_id, events, &ack);
                Ok(())
            }
            Err(status) if status.code() == tonic::Code::InvalidArgument => {
                // The batch as a whole is refused (a node id the ledger does not take): sending it again cannot help.
                tracing::error!(batch = %batch_id, %status, "the ledger refused a spend batch; it is set aside");
                metrics::counter!("gateway_spend_batches_total", "result" => "refused").increment(1);
                self.set_aside(&batch_id, "refused");
                Ok(())
            }
            // The ledger failed on this batch itself (not on being unreachable): halve it until the event that fails
            // is alone, so one poison event never blocks the queue.
            Err(status)
                if matches!(status.code(), tonic::Code::Internal | tonic::Code::OutOfRange | tonic::Code::DataLoss) =>
            {
                tracing::error!(batch = %batch_id, events, code = ?status.code(), message = status.message(),
                    "the ledger could not store a spend batch; splitting it");
                metrics::counter!("gateway_spend_batches_total", "result" => "split").increment(1);
                self.split_front(&batch_id).await;
                Ok(())
            }
            Err(status) => {
                tracing::warn!(batch = %batch_id, code = ?status.code(), message = status.message(),
                    "reporting spend failed; the batch stays spooled and is sent again");
                metrics::counter!("gateway_spend_batches_total", "result" => "failed").increment(1);
                Err(())
            }
        }
    }

    /// Take the front batch out of the queue and keep its file as `*.pb.<why>` for an operator; its spend stops
    /// counting against budgets (the ledger does not have it).
    fn set_aside(&self, batch_id: &str, why: &str) {
        let Some(queued) = self.pop_front(batch_id) else { return };
        self.ledger.acknowledged(0, queued.contributions.iter().map(|c| (c, false)));
        if let Some(file) = &queued.file {
            let _ = std::fs::rename(&file.path, file.path.with_extension(format!("pb.{why}")));
            if let Some(spool) = &self.spool {
                spool.forget(file);
            }
        }
    }

    /// Replace the front batch by its two halves, each spooled anew, in order; a single event is set aside.
    async fn split_front(&self, batch_id: &str) {
        let single =
            lock(&self.queue).front().is_some_and(|q| q.batch.batch_id == batch_id && q.batch.events.len() <= 1);
        if single {
            tracing::error!(batch = %batch_id, "a spend event the ledger cannot store is set aside (*.pb.failed)");
            self.set_aside(batch_id, "failed");
            return;
        }
        let Some(queued) = self.pop_front(batch_id) else { return };
        let mut events = queued.batch.events;
        let mut contributions = queued.contributions;
        let half = events.len() / 2;
        let second = (events.split_off(half), contributions.split_off(half));
        let halves = [self.spooled((events, contributions)).await, self.spooled(second).await];
        {
            let mut queue = lock(&self.queue);
            for half in halves.into_iter().rev().flatten() {
                queue.push_front(half);
            }
        }
        if let (Some(spool), Some(file)) = (&self.spool, &queued.file) {
            spool.remove(file);
        }
    }

    fn pop_front(&self, batch_id: &str) -> Option<Queued> {
        let mut queue = lock(&self.queue);
        if queue.front().is_none_or(|q| q.batch.batch_id != batch_id) {
            return None;
        }
        let queued = queue.pop_front()?;
        self.queued_bytes.fetch_sub(queued.bytes.min(self.queued_bytes.load(Ordering::Relaxed)), Ordering::Relaxed);
        metrics::gauge!("gateway_spend_queued_batches").set(queue.len() as f64);
        Some(queued)
    }

    fn acknowledged(&self, batch_id: &str, events: usize, ack: &v1::SpendAck) {
        let rejected: HashSet<u32> = ack.rejected.iter().map(|r| r.index).collect();
        for r in &ack.rejected {
            tracing::error!(batch = %batch_id, index = r.index, id = %r.id, field = %r.field, reason = %r.reason,
                "the ledger rejected a spend event (quarantined there)");
        }
        let counted = ack.accepted + ack.duplicates + ack.rejected.len() as u64;
        if counted != events as u64 {
            tracing::warn!(batch = %batch_id, events, counted, "the acknowledgement does not account for every event");
        }
        metrics::counter!("gateway_spend_batches_total", "result" => "acked").increment(1);
        metrics::counter!("gateway_spend_events_rejected_total").increment(ack.rejected.len() as u64);
        let Some(queued) = self.pop_front(batch_id) else { return };
        let events = queued.contributions.iter().enumerate().map(|(i, c)| (c, !rejected.contains(&(i as u32))));
        self.ledger.acknowledged(ack.committed_unix_us, events);
        if let (Some(spool), Some(file)) = (&self.spool, &queued.file) {
            spool.remove(file);
        }
        tracing::debug!(batch = %batch_id, accepted = ack.accepted, duplicates = ack.duplicates, "spend batch acknowledged");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::Mutex as StdMutex;

    use gateway_proto::v1::config_discovery_server::{ConfigDiscovery, ConfigDiscoveryServer};
    use tokio_stream::wrappers::TcpListenerStream;

    use super::*;
    use crate::control::connection::ClientTls;

    /// A ledger that cannot store any batch holding the event `poison` (as a database refusing one row would).
    #[derive(Default, Clone)]
    struct Ledger {
        stored: Arc<StdMutex<Vec<String>>>,
    }

    #[tonic::async_trait]
    impl ConfigDiscovery for Ledger {
        type SubscribeStream = tokio_stream::Empty<Result<v1::SubscribeResponse, tonic::Status>>;

        async fn subscribe(
            &self,
            _: tonic::Request<tonic::Streaming<v1::SubscribeRequest>>,
        ) -> Result<tonic::Response<Self::SubscribeStream>, tonic::Status> {
            Err(tonic::Status::unimplemented("not in this test"))
        }

        async fn report_spend(
            &self,
            request: tonic::Request<v1::SpendBatch>,
        ) -> Result<tonic::Response<v1::SpendAck>, tonic::Status> {
            let batch = request.into_inner();
            if batch.events.iter().any(|e| e.id == "poison") {
                return Err(tonic::Status::internal("numeric field overflow"));
            }
            let mut stored = self.stored.lock().unwrap();
            stored.extend(batch.events.iter().map(|e| e.id.clone()));
            Ok(tonic::Response::new(v1::SpendAck {
                accepted: batch.events.len() as u64,
                committed_unix_us: 1,
                ..v1::SpendAck::default()
            }))
        }
    }

    #[tokio::test]
    async fn a_batch_the_ledger_cannot_store_is_split_down_to_the_event_at_fault() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let ledger = Ledger::default();
        let server = tonic::transport::Server::builder()
            .add_service(ConfigDiscoveryServer::new(ledger.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener));
        tokio::spawn(server);

        let spool_dir = std::env::temp_dir().join(format!("reporter-split-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&spool_dir);
        let settings = ReporterSettings {
            node_id: "n".into(),
            interval: Duration::from_millis(10),
            max_batch_events: 100,
            flush_timeout: Duration::from_secs(5),
            spool_dir: spool_dir.clone(),
            spool_max_bytes: 1 << 30,
        };
        let connection = ControlPlaneConnection { url, tls: ClientTls::default(), node_token: None };
        let reporter = Reporter::open(settings, Arc::new(BudgetLedger::default()), Some(connection), &BTreeMap::new());
        let shutdown = CancellationToken::new();
        let tasks = reporter.spawn(shutdown.clone());
        for i in 0..10 {
            let id = if i == 4 { "poison".to_owned() } else { format!("e{i}") };
            reporter.record(v1::SpendEvent { id, ..v1::SpendEvent::default() }, Vec::new());
        }
        for _ in 0..500 {
            if ledger.stored.lock().unwrap().len() == 9 && reporter.pending() == (0, 0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        shutdown.cancel();
        for task in tasks {
            task.await.unwrap();
        }
        let mut stored = ledger.stored.lock().unwrap().clone();
        stored.sort();
        assert_eq!(stored, ["e0", "e1", "e2", "e3", "e5", "e6", "e7", "e8", "e9"], "everything but the event at fault");
        let names: Vec<String> = std::fs::read_dir(&spool_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(names[0].ends_with(".pb.failed"), "kept for an operator: {names:?}");
        std::fs::remove_dir_all(&spool_dir).unwrap();
    }
}
