//! Backend base URLs: normalisation and the allowlist that keeps the gateway from being turned into an SSRF tool.
//!
//! Checks here are on the URL as written (no DNS resolution: this crate does no IO). Link-local ranges and the
//! well-known cloud metadata endpoints are refused whatever the allowlist says.

use std::net::IpAddr;
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

/// One allowlist entry: an exact host, a `*.suffix` wildcard, or an IP network in CIDR form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    Suffix(String),
    Network(IpNet),
}

impl FromStr for HostPattern {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let entry = raw.trim().to_ascii_lowercase();
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
            return Ok(HostPattern::Network(IpNet::from(ip)));
        }
        Ok(HostPattern::Exact(entry))
    }
}

impl HostPattern {
    fn matches(&self, host: &Host<&str>) -> bool {
        match (self, host) {
            (HostPattern::Exact(exact), Host::Domain(domain)) => exact == domain,
            (HostPattern::Suffix(suffix), Host::Domain(domain)) => domain.ends_with(suffix.as_str()),
            (HostPattern::Network(net), Host::Ipv4(ip)) => net.contains(&IpAddr::V4(*ip)),
            (HostPattern::Network(net), Host::Ipv6(ip)) => net.contains(&IpAddr::V6(*ip)),
            _ => false,
        }
    }
}

/// The hosts backends may point at. An empty allowlist allows any host that is not always-forbidden.
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

    /// Check `raw` and return it normalised: lower-case scheme and host, no trailing slash.
    pub fn normalize(&self, raw: &str) -> Result<String, BaseUrlError> {
        let url =
            Url::parse(raw.trim()).map_err(|e| BaseUrlError::Invalid { url: raw.to_owned(), reason: e.to_string() })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(BaseUrlError::Scheme { url: raw.to_owned(), scheme: url.scheme().to_owned() });
        }
        if !url.username().is_empty() || url.password().is_some() || url.query().is_some() || url.fragment().is_some() {
            return Err(BaseUrlError::Extras { url: raw.to_owned() });
        }
        let Some(host) = url.host() else {
            return Err(BaseUrlError::Invalid { url: raw.to_owned(), reason: "no host".to_owned() });
        };
        if is_always_forbidden(&host) {
            return Err(BaseUrlError::Forbidden { url: raw.to_owned(), host: host.to_string() });
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|p| p.matches(&host)) {
            return Err(BaseUrlError::NotAllowed {
                url: raw.to_owned(),
                host: host.to_string(),
                allowlist: self.allow_raw.join(","),
            });
        }
        let mut normalized = url.to_string();
        while normalized.ends_with('/') {
            normalized.pop();
        }
        Ok(normalized)
    }
}

const METADATA_HOSTS: &[&str] = &["metadata.google.internal", "metadata.goog", "metadata", "instance-data"];

fn is_always_forbidden(host: &Host<&str>) -> bool {
    match host {
        Host::Domain(domain) => METADATA_HOSTS.contains(domain) || domain.ends_with(".metadata.google.internal"),
        Host::Ipv4(ip) => {
            // 169.254/16 link-local (AWS, GCP, Azure metadata), 100.100.100.200 (Alibaba metadata), 0.0.0.0.
            ip.is_link_local() || ip.octets() == [100, 100, 100, 200] || ip.is_unspecified()
        }
        Host::Ipv6(ip) => {
            let link_local = (ip.segments()[0] & 0xffc0) == 0xfe80;
            let aws_metadata = ip.segments() == [0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254];
            let mapped_forbidden = ip.to_ipv4_mapped().is_some_and(|v4| is_always_forbidden(&Host::Ipv4(v4)));
            link_local || aws_metadata || mapped_forbidden || ip.is_unspecified()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(allowlist: &str, url: &str, expected: Result<&str, &str>) {
        let policy = BaseUrlPolicy::from_list(allowlist).unwrap();
        let actual = policy.normalize(url).map_err(|e| e.to_string());
        assert_eq!(actual.as_deref(), expected.map_err(|e| e.to_owned()).as_deref(), "{url}");
    }

    #[test]
    fn normalises() {
        check("", "https://API.openai.com/v1/", Ok("https://api.openai.com/v1"));
        check("", "http://127.0.0.1:9000", Ok("http://127.0.0.1:9000"));
        check("", "https://x.example//", Ok("https://x.example"));
    }

    #[test]
    fn refuses_bad_urls() {
        check("", "ftp://x.example", Err("base_url \"ftp://x.example\" must use http or https, not \"ftp\""));
        check("", "not a url", Err("base_url \"not a url\" is not a valid URL: relative URL without a base"));
        check(
            "",
            "https://u:p@x.example",
            Err(
                "base_url \"https://u:p@x.example\" must not carry credentials, a query or a fragment; put secrets in `secret`",
            ),
        );
    }

    #[test]
    fn refuses_metadata_and_link_local_even_when_allowed() {
        for url in [
            "http://169.254.169.254/latest",
            "http://metadata.google.internal",
            "http://[fe80::1]",
            "http://[fd00:ec2::254]",
            "http://[::ffff:169.254.169.254]",
            "http://100.100.100.200",
        ] {
            let error = BaseUrlPolicy::from_list("0.0.0.0/0,::/0,*.internal").unwrap().normalize(url).unwrap_err();
            assert!(matches!(error, BaseUrlError::Forbidden { .. }), "{url}: {error}");
        }
    }

    #[test]
    fn applies_the_allowlist() {
        let list = "api.openai.com,*.openai.azure.com,10.0.0.0/8";
        check(list, "https://api.openai.com/v1", Ok("https://api.openai.com/v1"));
        check(list, "https://eu.openai.azure.com", Ok("https://eu.openai.azure.com"));
        check(list, "http://10.1.2.3:8000", Ok("http://10.1.2.3:8000"));
        check(
            list,
            "https://evil.example",
            Err(
                "base_url \"https://evil.example\": host evil.example is not in the backend allowlist (api.openai.com,*.openai.azure.com,10.0.0.0/8)",
            ),
        );
    }
}
