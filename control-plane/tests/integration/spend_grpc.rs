//! `ReportSpend` and budget state over real gRPC, with the node token, against the whole control plane.

use std::time::Duration;

use chrono::Utc;
use control_plane::settings::{DatabaseArgs, ServeArgs};
use gateway_proto::v1;
use gateway_proto::v1::config_discovery_client::ConfigDiscoveryClient;
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use crate::common::*;
use crate::spend::{batch, ev, message};

pub(crate) const NODE_TOKEN: &str = "test-node-token";

pub(crate) struct Running {
    pub(crate) url: String,
    shutdown: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub(crate) async fn start(app: &TestApp) -> Running {
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", grpc.local_addr().unwrap());
    let args = ServeArgs {
        database: DatabaseArgs { database_url: String::new(), db_acquire_timeout_ms: 5_000 },
        admin_addr: admin.local_addr().unwrap(),
        grpc_addr: grpc.local_addr().unwrap(),
        node_token: Some(NODE_TOKEN.to_owned()),
        grpc_tls_cert: None,
        grpc_tls_key: None,
        grpc_client_ca: None,
        replica_id: Some("test".to_owned()),
        admin_token: None,
        secret_key: None,
        backend_allowlist: String::new(),
        secret_env_prefix: "PROVIDER_".to_owned(),
        max_body_bytes: 1 << 20,
        budget_state_interval_ms: 50,
        rate_share_interval_ms: 50,
    };
    let shutdown = CancellationToken::new();
    let (store, token) = (app.store.clone(), shutdown.clone());
    tokio::spawn(async move { control_plane::run(store, &args, admin, grpc, token).await.unwrap() });
    Running { url, shutdown }
}

pub(crate) type Interceptor =
    Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send + Sync>;
pub(crate) type Client = ConfigDiscoveryClient<tonic::service::interceptor::InterceptedService<Channel, Interceptor>>;

pub(crate) async fn client(url: &str, token: Option<&str>) -> Client {
    let channel = Channel::from_shared(url.to_owned()).unwrap().connect().await.unwrap();
    let header = token.map(|t| MetadataValue::try_from(format!("Bearer {t}")).unwrap());
    let interceptor: Interceptor = Box::new(move |mut request: tonic::Request<()>| {
        if let Some(header) = &header {
            request.metadata_mut().insert("authorization", header.clone());
        }
        Ok(request)
    });
    ConfigDiscoveryClient::with_interceptor(channel, interceptor)
}

#[sqlx::test(migrations = "../migrations")]
async fn report_spend_needs_the_node_token_and_acks_after_commit(pool: PgPool) {
    let app = TestApp::new(pool.clone()).await;
    let running = start(&app).await;
    let now = Utc::now();
    let mut events: Vec<v1::SpendEvent> = (0..3).map(|_| message(&ev(now, "0.125"))).collect();
    let mut invalid = message(&ev(now, "0.125"));
    invalid.id = "not-a-uuid".to_owned();
    events.insert(1, invalid);
    let spend = batch(events);

    for token in [None, Some("wrong")] {
        let status = client(&running.url, token).await.report_spend(spend.clone()).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{token:?}");
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM spend_events").fetch_one(&pool).await.unwrap();
    assert_eq!(stored, 0, "refused calls store nothing");

    let mut node = client(&running.url, Some(NODE_TOKEN)).await;
    let ack = node.report_spend(spend.clone()).await.unwrap().into_inner();
    assert_eq!((ack.accepted, ack.duplicates), (3, 0));
    assert_eq!(ack.rejected.len(), 1);
    assert_eq!((ack.rejected[0].index, ack.rejected[0].field.as_str()), (1, "id"));
    assert!(ack.committed_unix_us > 0);
    // Acknowledged means committed: another connection sees every accepted event.
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM spend_events").fetch_one(&pool).await.unwrap();
    assert_eq!(stored, 3);

    let again = node.report_spend(spend).await.unwrap().into_inner();
    assert_eq!((again.accepted, again.duplicates, again.rejected.len()), (0, 3, 1));
    let reply = app.call("GET", "/admin/v1/spend", None).await;
    assert_eq!(reply.body["total"]["cost_usd"], json!("0.375"), "{}", reply.text);

    let mut nameless = batch(vec![message(&ev(now, "1"))]);
    nameless.node_id = String::new();
    assert_eq!(node.report_spend(nameless).await.unwrap_err().code(), Code::InvalidArgument);
}

#[sqlx::test(migrations = "../migrations")]
async fn budget_state_streams_on_subscribe_and_includes_every_batch_acked_before_it(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.create(
        "budgets",
        json!({"name": "daily", "scope": {"type": "team", "team": "search"}, "period": "day",
                                 "limit_usd": "10"}),
    )
    .await;
    let running = start(&app).await;
    let mut node = client(&running.url, Some(NODE_TOKEN)).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let hello = v1::Hello { node_id: "dp-test".into(), ..Default::default() };
    tx.send(v1::SubscribeRequest { kind: Some(v1::subscribe_request::Kind::Hello(hello)) }).await.unwrap();
    let mut stream = node.subscribe(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();

    // Wait (bounded, so a broken stream fails rather than hangs) for the budget state satisfying `done`.
    async fn next_state(
        stream: &mut tonic::Streaming<v1::SubscribeResponse>,
        done: impl Fn(&v1::BudgetState) -> bool,
    ) -> v1::BudgetState {
        let wait = async {
            loop {
                let response = stream.message().await.unwrap().expect("stream open");
                if let Some(v1::subscribe_response::Kind::BudgetState(state)) = response.kind
                    && done(&state)
                {
                    return state;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(60), wait).await.expect("a budget state within 60 s")
    }

    let first = next_state(&mut stream, |s| !s.budgets.is_empty()).await;
    let daily = &first.budgets[0];
    assert_eq!((daily.budget.as_str(), daily.spent_usd.as_str(), daily.period.as_str()), ("daily", "0", "day"));
    let today = Utc::now().date_naive().and_hms_opt(0, 0, 0).unwrap().and_utc().timestamp();
    assert_eq!((daily.period_start_unix, daily.period_end_unix), (today, today + 86_400));
    assert_eq!(daily.limit_usd, "10");

    let now = Utc::now();
    let ack = node.report_spend(batch(vec![message(&ev(now, "1.25")), message(&ev(now, "0.5"))])).await.unwrap();
    let committed = ack.into_inner().committed_unix_us;
    // Every state read after the commit includes the batch; states read before may not.
    let state = next_state(&mut stream, |s| s.ledger_as_of_unix_us > committed).await;
    assert_eq!(state.budgets[0].spent_usd, "1.75");
    let later = next_state(&mut stream, |s| s.ledger_as_of_unix_us > state.ledger_as_of_unix_us).await;
    assert_eq!(later.budgets[0].spent_usd, "1.75");
}
