//! Where backends may point: base-URL normalisation, the operator's allowlist, and the addresses that are always
//! refused, so that the gateway cannot be turned into an SSRF tool.
//!
//! The rules are applied twice. At write (control plane) only the URL is known: [`BaseUrlPolicy::normalize`].
//! At connection (data plane) the resolved addresses are known too: [`BaseUrlPolicy::check_host`] decides, from
//! the host alone, which addresses a connection may use ([`AddressRule`]), and [`BaseUrlPolicy::check_address`]
//! checks each one. This crate does no IO; the data plane's DNS resolver calls them.
//!
//! The exact rule for a host:
//! 1. Hosts are compared canonically: lower case, one trailing dot dropped (`metadata.google.internal.` is
//!    `metadata.google.internal`), empty labels refused; IPv4 in any form the URL parser accepts (decimal, octal,
//!    hex, IPv4-mapped IPv6) is the IPv4 address.
//! 2. Always refused, whatever the allowlist: the cloud metadata names, and the addresses in
//!    [`is_always_refused`] (link-local, metadata, "this network"), in any IPv6 spelling of an IPv4 address.
//! 3. An empty allowlist allows everything else (loopback and private networks included: local Ollama or vLLM).
//! 4. Otherwise a host name matched by a name entry (`api.openai.com`, `*.openai.azure.com`) may use any address
//!    not always refused. Any other host (an IP literal, or a name no name entry matches) may use only addresses
//!    inside the allowlist's network entries (`10.0.0.0/8`, `127.0.0.1`); without network entries it is refused.
//!    At write a name no name entry matches is refused, as its addresses cannot be known there.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::IpNet;
use url::{Host, Url};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BaseUrlError {
    #[error("base_url {url:?} is not a valid URL: {reason}")]
    Invalid { url: String, reason: String },
    #[error("base_url {url:?} must use http or https, not {scheme:?}")]
    Scheme { url: String, scheme: String },
    #[error("base_url {url:?} must not carry credentials, a query or a fragment; put secrets in `secret`")]
    Extras { url: String },
    #[error("base_url {url:?} points at {host}, a link-local or cloud metadata address, which is always refused")]
    Forbidden { url: String, host: String },
    #[error("base_url {url:?}: host {host} is not in the backend allowlist ({allowlist})")]
    NotAllowed { url: String, host: String, allowlist: String },
}

/// Why a connection to a host or an address is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostRefusal {
    #[error("{host} is a link-local or cloud metadata address, which is always refused")]
    Forbidden { host: String },
    #[error("{host} is not in the backend allowlist ({allowlist})")]
    NotAllowed { host: String, allowlist: String },
    #[error("{host:?} is not a valid host name: {reason}")]
    Invalid { host: String, reason: &'static str },
}

/// Which resolved addresses a connection to an accepted host may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressRule {
    /// Any address that is not always refused: the allowlist is empty or names the host.
    NotRefused,
    /// Only addresses inside the allowlist's network entries: the allowlist does not name the host.
    InNetworks,
}

/// One allowlist entry: an exact host, a `*.suffix` wildcard, or an IP network in CIDR form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostPattern {
    Exact(String),
    Suffix(String),
    Network(IpNet),
}

impl FromStr for HostPattern {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let entry = raw.trim().to_ascii_lowercase();
        // Names are compared without their trailing dot (see `canonical_host`).
        let entry = entry.strip_suffix('.').unwrap_or(&entry);
        if entry.is_empty() {
            return Err("empty allowlist entry".to_owned());
        }
        if let Some(suffix) = entry.strip_prefix("*.") {
            return Ok(HostPattern::Suffix(format!(".{suffix}")));
        }
        if entry.contains('/') {
            return entry.parse().map(HostPattern::Network).map_err(|e| format!("{raw:?}: {e}"));
        }
        if let Ok(ip) = entry.trim_matches(['[', ']']).parse::<IpAddr>() {
            return Ok(HostPattern::Network(IpNet::from(ip.to_canonical())));
        }
        Ok(HostPattern::Exact(entry.to_owned()))
    }
}

impl HostPattern {
    fn matches_name(&self, domain: &str) -> bool {
        match self {
            HostPattern::Exact(exact) => exact == domain,
            HostPattern::Suffix(suffix) => domain.ends_with(suffix.as_str()),
            HostPattern::Network(_) => false,
        }
    }

    fn network(&self) -> Option<&IpNet> {
        match self {
            HostPattern::Network(net) => Some(net),
            HostPattern::Exact(_) | HostPattern::Suffix(_) => None,
        }
    }
}

/// The hosts backends may point at. An empty allowlist allows any host that is not always refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BaseUrlPolicy {
    allow: Vec<HostPattern>,
    allow_raw: Vec<String>,
}

impl BaseUrlPolicy {
    /// Parse a comma-separated allowlist such as `api.openai.com,*.openai.azure.com,127.0.0.1,10.0.0.0/8`.
    pub fn from_list(list: &str) -> Result<Self, String> {
        let mut policy = BaseUrlPolicy::default();
        for raw in list.split(',').filter(|s| !s.trim().is_empty()) {
            policy.allow.push(raw.parse()?);
            policy.allow_raw.push(raw.trim().to_owned());
        }
        Ok(policy)
    }

    /// The allowlist as configured, for messages.
    pub fn describe(&self) -> String {
        self.allow_raw.join(",")
    }

    /// Check `raw` and return it normalised: lower-case scheme and host, no trailing dot on the host, no trailing
    /// slash.
    pub fn normalize(&self, raw: &str) -> Result<String, BaseUrlError> {
        let invalid = |reason: String| BaseUrlError::Invalid { url: raw.to_owned(), reason };
        let mut url = Url::parse(raw.trim()).map_err(|e| invalid(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(BaseUrlError::Scheme { url: raw.to_owned(), scheme: url.scheme().to_owned() });
        }
        if !url.username().is_empty() || url.password().is_some() || url.query().is_some() || url.fragment().is_some() {
            return Err(BaseUrlError::Extras { url: raw.to_owned() });
        }
        let Some(host) = url.host() else {
            return Err(invalid("no host".to_owned()));
        };
        let refused = |refusal: HostRefusal| match refusal {
            HostRefusal::Forbidden { host } => BaseUrlError::Forbidden { url: raw.to_owned(), host },
            HostRefusal::NotAllowed { host, allowlist } => {
                BaseUrlError::NotAllowed { url: raw.to_owned(), host, allowlist }
            }
            HostRefusal::Invalid { host, reason } => invalid(format!("host {host:?}: {reason}")),
        };
        let rule = self.check_host(&host).map_err(refused)?;
        let canonical = canonical_host(&host).map_err(refused)?;
        if let Host::Domain(domain) = &canonical {
            // A name is accepted at write only when a name entry allows it: its addresses are unknown here.
            if rule == AddressRule::InNetworks {
                return Err(refused(HostRefusal::NotAllowed { host: domain.clone(), allowlist: self.describe() }));
            }
            if host != Host::Domain(domain.as_str()) {
                url.set_host(Some(domain)).map_err(|e| invalid(e.to_string()))?;
            }
        }
        let mut normalized = url.to_string();
        while normalized.ends_with('/') {
            normalized.pop();
        }
        Ok(normalized)
    }

    /// Decide a connection to `host` before any address is known: refused, or which addresses it may use. An IP
    /// literal is checked whole here (it is its own address).
    pub fn check_host(&self, host: &Host<impl AsRef<str>>) -> Result<AddressRule, HostRefusal> {
        match canonical_host(host)? {
            Host::Domain(domain) => {
                if is_metadata_name(&domain) {
                    return Err(HostRefusal::Forbidden { host: domain });
                }
                if self.allow.is_empty() || self.allow.iter().any(|p| p.matches_name(&domain)) {
                    Ok(AddressRule::NotRefused)
                } else if self.allow.iter().any(|p| p.network().is_some()) {
                    Ok(AddressRule::InNetworks)
                } else {
                    Err(HostRefusal::NotAllowed { host: domain, allowlist: self.describe() })
                }
            }
            Host::Ipv4(ip) => self.check_literal(IpAddr::V4(ip)),
            Host::Ipv6(ip) => self.check_literal(IpAddr::V6(ip)),
        }
    }

    fn check_literal(&self, ip: IpAddr) -> Result<AddressRule, HostRefusal> {
        let rule = if self.allow.is_empty() { AddressRule::NotRefused } else { AddressRule::InNetworks };
        self.check_address(rule, ip)?;
        Ok(rule)
    }

    /// Check one address a connection would use, under the `rule` [`BaseUrlPolicy::check_host`] gave its host.
    pub fn check_address(&self, rule: AddressRule, ip: IpAddr) -> Result<(), HostRefusal> {
        let ip = ip.to_canonical();
        if is_always_refused(ip) {
            return Err(HostRefusal::Forbidden { host: ip.to_string() });
        }
        let in_networks = || self.allow.iter().filter_map(HostPattern::network).any(|net| net.contains(&ip));
        if rule == AddressRule::InNetworks && !in_networks() {
            return Err(HostRefusal::NotAllowed { host: ip.to_string(), allowlist: self.describe() });
        }
        Ok(())
    }
}

/// `host` as it is compared: a name in lower case without its one trailing dot (an absolute name is the same
/// host), IPv4-mapped IPv6 as IPv4. Names with empty labels (`a..b`, `.a`, `a..`) are refused: no resolver
/// treats them consistently.
pub(crate) fn canonical_host(host: &Host<impl AsRef<str>>) -> Result<Host<String>, HostRefusal> {
    match host {
        Host::Domain(domain) => {
            let domain = domain.as_ref();
            let lower = domain.to_ascii_lowercase();
            let name = lower.strip_suffix('.').unwrap_or(&lower);
            if name.is_empty() || name.split('.').any(str::is_empty) {
                return Err(HostRefusal::Invalid { host: domain.to_owned(), reason: "it has an empty label" });
            }
            // A name ending in a number is an IPv4 address to the URL parser (`169.254.169.254.`, `0xa9fea9fe`).
            let numeric = name.rsplit('.').next().is_some_and(|label| label.starts_with(|c: char| c.is_ascii_digit()));
            match numeric.then(|| Host::parse(name)) {
                Some(Ok(Host::Ipv4(ip))) => Ok(Host::Ipv4(ip)),
                _ => Ok(Host::Domain(name.to_owned())),
            }
        }
        Host::Ipv4(ip) => Ok(Host::Ipv4(*ip)),
        Host::Ipv6(ip) => Ok(match ip.to_ipv4_mapped() {
            Some(v4) => Host::Ipv4(v4),
            None => Host::Ipv6(*ip),
        }),
    }
}

/// Names of cloud metadata services (compared canonically; subdomains of `metadata.google.internal` too).
const METADATA_NAMES: &[&str] =
    &["metadata.google.internal", "metadata.goog", "metadata", "instance-data", "instance-data.ec2.internal"];

fn is_metadata_name(domain: &str) -> bool {
    METADATA_NAMES.contains(&domain) || domain.ends_with(".metadata.google.internal")
}

/// Addresses no backend may ever use: "this network" (`0.0.0.0/8`: `0.0.0.0` reaches the local host),
/// link-local (`169.254.0.0/16`, `fe80::/10`: the AWS, GCP, Azure, OpenStack and DigitalOcean metadata services
/// live at `169.254.169.254`), the other metadata addresses (Alibaba `100.100.100.200`, Oracle `192.0.0.192`, AWS
/// `fd00:ec2::254`, GCP `fd20:ce::254`), the unspecified IPv6 address, and IPv4 ones written as IPv6
/// (IPv4-mapped, IPv4-compatible, NAT64 `64:ff9b::/96`).
pub(crate) fn is_always_refused(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_refused_v4(v4),
        IpAddr::V6(v6) => is_refused_v6(v6),
    }
}

fn is_refused_v4(ip: Ipv4Addr) -> bool {
    let octets = ip.octets();
    octets[0] == 0 || ip.is_link_local() || octets == [100, 100, 100, 200] || octets == [192, 0, 0, 192]
}

fn is_refused_v6(ip: Ipv6Addr) -> bool {
    let segments = ip.segments();
    let link_local = (segments[0] & 0xffc0) == 0xfe80;
    let metadata =
        segments == [0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254] || segments == [0xfd20, 0xce, 0, 0, 0, 0, 0, 0x254];
    let octets = ip.octets();
    let embedded_v4 = Ipv4Addr::new(octets[12], octets[13], octets[14], octets[15]);
    let mapped = ip.to_ipv4_mapped().is_some();
    // `::a.b.c.d` (deprecated IPv4-compatible), except `::` and `::1` which are the IPv6 unspecified and loopback.
    let compatible = segments[..6] == [0; 6] && u32::from(embedded_v4) > 1;
    let nat64 = segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    let refused_v4 = (mapped || compatible || nat64) && is_refused_v4(embedded_v4);
    ip.is_unspecified() || link_local || metadata || refused_v4
}

#[cfg(test)]
#[path = "base_url_tests.rs"]
mod tests;
