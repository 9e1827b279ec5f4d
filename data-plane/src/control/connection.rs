//! How a data plane reaches its control plane: the gRPC endpoint (TLS, mTLS), the node token on every call and the
//! reconnection backoff. Shared by the snapshot subscription ([`crate::subscription`]) and the spend reporter.

use std::time::Duration;

use gateway_proto::v1::config_discovery_client::ConfigDiscoveryClient;
use rand::RngExt;

use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid control plane address {0:?}: {1}")]
    Address(String, String),
    #[error("cannot connect to the control plane: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("the control plane refused the subscription: {0}")]
    Status(#[from] tonic::Status),
    #[error("the node token is not a valid header value")]
    Token,
}

/// TLS toward the control plane: the CA to trust and, for mTLS, this node's identity (PEM bytes).
#[derive(Clone, Default)]
pub struct ClientTls {
    pub ca: Option<Vec<u8>>,
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// How to reach the control plane: its address, TLS and the node token. Shared by the subscription and the spend
/// reporter.
#[derive(Clone)]
pub struct ControlPlaneConnection {
    pub url: String,
    pub tls: ClientTls,
    pub node_token: Option<String>,
}

/// Adds `authorization: Bearer <node token>` to every call.
#[derive(Clone)]
pub struct NodeToken(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for NodeToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request.metadata_mut().insert("authorization", token.clone());
        }
        Ok(request)
    }
}

pub type DiscoveryClient = ConfigDiscoveryClient<InterceptedService<Channel, NodeToken>>;

impl ControlPlaneConnection {
    /// The gRPC endpoint, with TLS when a CA or a client identity is configured.
    pub fn endpoint(&self) -> Result<Endpoint, ClientError> {
        let endpoint = Endpoint::from_shared(self.url.clone())
            .map_err(|e| ClientError::Address(self.url.clone(), e.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10));
        if self.tls.ca.is_none() && self.tls.identity.is_none() {
            return Ok(endpoint);
        }
        let mut tls = tonic::transport::ClientTlsConfig::new();
        if let Some(ca) = &self.tls.ca {
            tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &self.tls.identity {
            tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        Ok(endpoint.tls_config(tls)?)
    }

    /// A client over `channel` that presents the node token.
    pub fn client(&self, channel: Channel) -> Result<DiscoveryClient, ClientError> {
        let token = match &self.node_token {
            Some(token) => Some(MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| ClientError::Token)?),
            None => None,
        };
        Ok(ConfigDiscoveryClient::with_interceptor(channel, NodeToken(token)).max_decoding_message_size(256 << 20))
    }
}

/// Exponential backoff with jitter, from 100 ms to 15 s; shared with the spend reporter.
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(15);

    pub(crate) fn new() -> Backoff {
        Backoff { next: Self::FIRST }
    }

    pub(crate) fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    /// The next delay with full jitter in [delay/2, delay], so a fleet does not reconnect in lockstep.
    pub(crate) fn next(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        let millis = delay.as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(millis / 2..=millis.max(1)))
    }
}
