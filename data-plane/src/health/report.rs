//! The health board as the control plane receives it: a `HealthReport` on the subscription stream, whole, once on
//! connect and again after each change, paced so that a flapping breaker costs at most one report per
//! [`REPORT_INTERVAL`] (changes in between coalesce into the next report, which carries the latest board).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gateway_proto::v1;
use tokio::sync::{mpsc, watch};

use super::board::{BackendHealth, HealthCheckResult};

/// The shortest time between two reports on one connection.
pub const REPORT_INTERVAL: Duration = Duration::from_millis(250);

/// Send the board now, then after each change, waiting for `pace()` between two reports; ends when the stream
/// (`tx`) or the board closes. The production pace is a sleep of [`REPORT_INTERVAL`]; tests pass a gate.
pub async fn report<P, F>(
    mut board: watch::Receiver<Arc<Vec<BackendHealth>>>,
    tx: mpsc::Sender<v1::SubscribeRequest>,
    mut pace: P,
) where
    P: FnMut() -> F,
    F: Future<Output = ()>,
{
    loop {
        let entries = board.borrow_and_update().clone();
        let request = v1::SubscribeRequest {
            kind: Some(v1::subscribe_request::Kind::HealthReport(message(&entries, SystemTime::now()))),
        };
        if tx.send(request).await.is_err() {
            return;
        }
        tokio::select! {
            () = pace() => {}
            () = tx.closed() => return,
        }
        tokio::select! {
            changed = board.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = tx.closed() => return,
        }
    }
}

/// The wire form of the board at `now`.
pub fn message(entries: &[BackendHealth], now: SystemTime) -> v1::HealthReport {
    v1::HealthReport { entries: entries.iter().map(entry).collect(), as_of_unix_ms: unix_ms(now) }
}

fn entry(health: &BackendHealth) -> v1::BackendHealth {
    v1::BackendHealth {
        backend: health.backend.clone(),
        model: health.model.clone().unwrap_or_default(),
        state: health.state.as_str().to_owned(),
        since_unix_ms: unix_ms(health.since),
        reason: health.reason.clone().unwrap_or_default(),
        last_check: health.last_check.as_ref().map(check),
        latency_ms: health.latency_ms,
    }
}

fn check(result: &HealthCheckResult) -> v1::HealthCheckResult {
    v1::HealthCheckResult {
        at_unix_ms: unix_ms(result.at),
        ok: result.ok,
        error: result.error.clone().unwrap_or_default(),
    }
}

/// Milliseconds since the Unix epoch; 0 for a time before it (a clock that is not set).
fn unix_ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use tokio::sync::Semaphore;

    use super::*;
    use crate::health::board::{BreakerState, HealthBoard};

    fn health(backend: &str, state: BreakerState) -> BackendHealth {
        BackendHealth {
            backend: backend.to_owned(),
            model: None,
            state,
            since: UNIX_EPOCH + Duration::from_millis(1_764_000_000_000),
            reason: (state != BreakerState::Closed).then(|| "5 consecutive failures".to_owned()),
            last_check: None,
            latency_ms: Some(42.0),
        }
    }

    fn states(request: v1::SubscribeRequest) -> Vec<(String, String)> {
        match request.kind {
            Some(v1::subscribe_request::Kind::HealthReport(report)) => {
                report.entries.into_iter().map(|e| (e.backend, e.state)).collect()
            }
            other => panic!("not a health report: {other:?}"),
        }
    }

    fn pair(backend: &str, state: &str) -> (String, String) {
        (backend.to_owned(), state.to_owned())
    }

    /// The board on connect, then the latest board after each pause: changes while paused make one report.
    #[tokio::test]
    async fn reports_on_connect_then_the_latest_board_once_per_pause() {
        let board = HealthBoard::default();
        board.publish(vec![health("a", BreakerState::Closed)]);
        let (tx, mut rx) = mpsc::channel(8);
        let gate = Arc::new(Semaphore::new(0));
        let pace = {
            let gate = gate.clone();
            move || {
                let gate = gate.clone();
                async move {
                    if let Ok(permit) = gate.acquire().await {
                        permit.forget();
                    }
                }
            }
        };
        let task = tokio::spawn(report(board.subscribe(), tx, pace));

        assert_eq!(states(rx.recv().await.unwrap()), [pair("a", "closed")]);
        board.publish(vec![health("a", BreakerState::Open)]);
        board.publish(vec![health("a", BreakerState::HalfOpen), health("b", BreakerState::Open)]);
        tokio::task::yield_now().await;
        assert!(rx.try_recv().is_err(), "no report before the pause is over");
        gate.add_permits(1);
        assert_eq!(states(rx.recv().await.unwrap()), [pair("a", "half_open"), pair("b", "open")]);

        // The pause is over but nothing changed: no report until something does.
        gate.add_permits(1);
        tokio::task::yield_now().await;
        assert!(rx.try_recv().is_err(), "no report without a change");
        board.publish(vec![]);
        assert_eq!(states(rx.recv().await.unwrap()), Vec::<(String, String)>::new());

        drop(rx);
        gate.add_permits(1);
        task.await.unwrap();
    }

    #[test]
    fn the_wire_form_keeps_every_field() {
        let mut open = health("a", BreakerState::Open);
        open.model = Some("m".into());
        open.last_check = Some(HealthCheckResult {
            at: UNIX_EPOCH + Duration::from_millis(1_764_000_000_500),
            ok: false,
            error: Some("503".into()),
        });
        let message = message(&[open, health("b", BreakerState::Closed)], UNIX_EPOCH + Duration::from_millis(7));
        assert_eq!(message.as_of_unix_ms, 7);
        let first = &message.entries[0];
        assert_eq!((first.model.as_str(), first.state.as_str(), first.since_unix_ms), ("m", "open", 1_764_000_000_000));
        assert_eq!(first.reason, "5 consecutive failures");
        assert_eq!(
            first.last_check,
            Some(v1::HealthCheckResult { at_unix_ms: 1_764_000_000_500, ok: false, error: "503".into() })
        );
        assert_eq!(first.latency_ms, Some(42.0));
        let second = &message.entries[1];
        assert_eq!((second.model.as_str(), second.reason.as_str(), &second.last_check), ("", "", &None));
    }
}
