//! Where upstream calls may go and what they may carry: this data plane's own rules, applied to every attempt
//! whatever the snapshot says (a snapshot can come from an older control plane, a file, or a tampered disk).
//!
//! - The backend's host is checked before anything is sent ([`Egress::check_url`]); IP literals are checked
//!   there, as they never reach a resolver.
//! - Host names are resolved by [`GuardedResolver`], the upstream clients' DNS resolver: it keeps only the
//!   addresses the allowlist permits and fails when none is left, so a name that resolves to a metadata or
//!   link-local address is never connected to. The addresses checked are the ones connected to, so a name that
//!   changes its answer between two lookups (DNS rebinding) gains nothing.
//! - A secret reference is read from this process's environment only when [`SecretEnvPolicy`] allows its name.
//!
//! The rules themselves are the policy engine's ([`policy_engine::base_url`], [`policy_engine::secret_ref`]), set
//! by this data plane's `GATEWAY_BACKEND_ALLOWLIST` and `GATEWAY_SECRET_ENV_PREFIX`.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use futures_util::future::BoxFuture;
use policy_engine::base_url::BaseUrlPolicy;
use policy_engine::config::{BackendSpec, SecretSpec};
use policy_engine::secret_ref::SecretEnvPolicy;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

/// A refusal by this data plane's egress rules: nothing was sent. The resolver returns it inside reqwest's error,
/// where [`refusal_in`] finds it again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Resolves a host name to its addresses (the seam tests feed).
pub type Lookup = Arc<dyn Fn(String) -> BoxFuture<'static, io::Result<Vec<IpAddr>>> + Send + Sync>;

/// Reads one environment variable (the seam tests feed instead of mutating the process environment).
pub type Environment = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// This data plane's egress rules and how it resolves names and reads its environment.
#[derive(Clone)]
pub struct Egress {
    hosts: Arc<BaseUrlPolicy>,
    secret_env: Arc<SecretEnvPolicy>,
    lookup: Lookup,
    environment: Environment,
}

impl Default for Egress {
    /// No allowlist (only the always-refused addresses), the default secret prefixes.
    fn default() -> Self {
        Egress::new(BaseUrlPolicy::default(), SecretEnvPolicy::default())
    }
}

impl Egress {
    /// The system resolver (getaddrinfo, as reqwest's default) and the process environment.
    pub fn new(hosts: BaseUrlPolicy, secret_env: SecretEnvPolicy) -> Egress {
        Egress {
            hosts: Arc::new(hosts),
            secret_env: Arc::new(secret_env),
            lookup: Arc::new(|name| Box::pin(system_lookup(name))),
            environment: Arc::new(|name| std::env::var(name).ok()),
        }
    }

    /// Resolve names with `lookup` instead of the system resolver.
    #[cfg(test)]
    pub fn with_lookup(mut self, lookup: Lookup) -> Egress {
        self.lookup = lookup;
        self
    }

    /// Read secret references with `environment` instead of the process environment.
    #[cfg(test)]
    pub fn with_environment(mut self, environment: Environment) -> Egress {
        self.environment = environment;
        self
    }

    /// The DNS resolver the upstream clients use.
    pub fn resolver(&self) -> GuardedResolver {
        GuardedResolver { egress: self.clone() }
    }

    /// Check `url`'s host before sending: a refused name, or an IP literal outside the rules, goes nowhere.
    pub fn check_url(&self, url: &Url) -> Result<(), Refused> {
        let host = url.host().ok_or_else(|| Refused(format!("{url} has no host")))?;
        self.hosts.check_host(&host).map(|_| ()).map_err(|refusal| Refused(refusal.to_string()))
    }

    /// The backend's secret, read from the environment when it is a reference this data plane allows.
    pub fn secret(&self, backend: &BackendSpec) -> Result<Option<String>, Refused> {
        let name = &backend.name;
        match &backend.secret {
            None => Ok(None),
            Some(SecretSpec::Value(value)) => Ok(Some(value.clone())),
            Some(SecretSpec::Ref(reference)) => self.referenced(&format!("backend '{name}'"), reference).map(Some),
            // Sealed secrets are opened by the control plane before they travel; one here cannot be used.
            Some(SecretSpec::Sealed(_)) => Err(Refused(format!("backend '{name}': its secret arrived still sealed"))),
        }
    }

    /// The value of a secret reference (`env:NAME`) of `owner` (named in refusals), under this data plane's prefixes.
    pub fn referenced(&self, owner: &str, reference: &str) -> Result<String, Refused> {
        let variable = self
            .secret_env
            .variable(reference)
            .map_err(|error| Refused(format!("{owner}: this data plane refuses its secret reference: {error}")))?;
        match (self.environment)(variable) {
            Some(value) if !value.is_empty() => Ok(value),
            _ => {
                Err(Refused(format!("{owner}: its secret env:{variable} is not set in this data plane's environment")))
            }
        }
    }

    /// `name`'s addresses a connection may use. A refusal when the name or every address is refused; an I/O
    /// error when the lookup itself fails (that is an outage, not a refusal).
    async fn resolve(&self, name: &str) -> Result<Vec<IpAddr>, BoxError> {
        let host = Host::parse(name).map_err(|error| Refused(format!("{name:?} is not a valid host name: {error}")))?;
        let rule = self.hosts.check_host(&host).map_err(|refusal| Refused(refusal.to_string()))?;
        let found = (self.lookup)(name.to_owned()).await?;
        let (mut allowed, mut refusals) = (Vec::new(), Vec::new());
        for address in found {
            match self.hosts.check_address(rule, address) {
                Ok(()) => allowed.push(address),
                Err(refusal) => refusals.push(refusal.to_string()),
            }
        }
        if allowed.is_empty() {
            if refusals.is_empty() {
                return Err(io::Error::new(io::ErrorKind::NotFound, format!("{name} has no address")).into());
            }
            return Err(Refused(format!("{name} resolves only to refused addresses: {}", refusals.join("; "))).into());
        }
        if !refusals.is_empty() {
            tracing::warn!(host = name, refused = %refusals.join("; "), "some of a backend host's addresses are refused; connecting to the others");
        }
        Ok(allowed)
    }
}

async fn system_lookup(name: String) -> io::Result<Vec<IpAddr>> {
    Ok(tokio::net::lookup_host((name.as_str(), 0)).await?.map(|address| address.ip()).collect())
}

/// The upstream clients' DNS resolver: [`Egress`]'s rules on every address a connection may use.
#[derive(Clone)]
pub struct GuardedResolver {
    egress: Egress,
}

impl GuardedResolver {
    /// `name`'s permitted addresses, with port 0: the connectors put the URL's port (or the scheme's) in.
    fn addresses(&self, name: &str) -> BoxFuture<'static, Result<Vec<SocketAddr>, BoxError>> {
        let egress = self.egress.clone();
        let name = name.to_owned();
        Box::pin(async move {
            let addresses = egress.resolve(&name).await?;
            Ok(addresses.into_iter().map(|ip| SocketAddr::new(ip, 0)).collect())
        })
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// For reqwest's clients (classifiers, token endpoints).
impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let addresses = self.addresses(name.as_str());
        Box::pin(async move {
            let addrs: Addrs = Box::new(addresses.await?.into_iter());
            Ok(addrs)
        })
    }
}

/// For hyper's connector ([`super::client`]: attempts and health checks).
impl tower_service::Service<hyper_util::client::legacy::connect::dns::Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: hyper_util::client::legacy::connect::dns::Name) -> Self::Future {
        let addresses = self.addresses(name.as_str());
        Box::pin(async move { Ok(addresses.await?.into_iter()) })
    }
}

/// The egress refusal somewhere in `error`'s chain of sources, if the resolver refused.
pub fn refusal_in<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
    find_source(error)
}

/// The first error of type `T` in `error`'s chain, itself included (the clients find the resolver's refusals, and
/// their connect timeouts, inside the errors they wrap them in).
pub fn find_source<'a, T: std::error::Error + 'static>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a T> {
    let mut source = Some(error);
    while let Some(current) = source {
        if let Some(found) = current.downcast_ref::<T>() {
            return Some(found);
        }
        source = current.source();
    }
    None
}
