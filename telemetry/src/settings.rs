//! What the environment asks for: the log format (`GATEWAY_LOG_FORMAT`) and whether traces are exported, and how
//! (`OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`, `OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`). The OpenTelemetry SDK reads the
//! TLS to the collector: an `https` endpoint is verified against the system's roots, plus the CA in
//! `OTEL_EXPORTER_OTLP_[TRACES_]CERTIFICATE`; `OTEL_EXPORTER_OTLP_[TRACES_]CLIENT_CERTIFICATE` and `..._CLIENT_KEY`
//! present a client identity (mutual TLS). The OpenTelemetry SDK reads the
//! other standard variables itself (`OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`,
//! `OTEL_BSP_*`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`).

use std::path::PathBuf;

/// How log lines are written to standard error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable text (the default).
    Text,
    /// One JSON object per line.
    Json,
}

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `grpc` (tonic).
    Grpc,
    /// `http/protobuf`, the specification's default.
    HttpProtobuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub log_format: LogFormat,
    /// `None`: traces are off (no endpoint configured).
    pub export: Option<Protocol>,
    /// How the exporter reaches an `https` collector (default when traces are off or the endpoint is plain).
    pub tls: ExportTls,
}

/// TLS to the collector, from the standard variables (files in PEM).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportTls {
    /// The endpoint is `https`: the exporter speaks TLS, verifying the collector.
    pub https: bool,
    /// A CA trusted besides the system's roots.
    pub ca: Option<PathBuf>,
    /// The certificate and key the exporter presents (mutual TLS).
    pub client_identity: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error("GATEWAY_LOG_FORMAT must be 'text' or 'json', not '{0}'")]
    LogFormat(String),
    #[error("{name} must be 'grpc' or 'http/protobuf' (http/json is not supported), not '{value}'")]
    Protocol { name: &'static str, value: String },
    #[error("{name} is set but the OTLP endpoint '{endpoint}' is not https: TLS settings need an https endpoint")]
    TlsWithoutHttps { name: &'static str, endpoint: String },
    #[error("{set} is set without {missing}: a client identity needs both the certificate and its key")]
    HalfIdentity { set: &'static str, missing: &'static str },
}

impl Settings {
    pub fn from_env() -> Result<Settings, SettingsError> {
        Settings::from_lookup(|name| std::env::var(name).ok())
    }

    /// The settings from `lookup` (a variable's value); a seam so tests need not touch the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Settings, SettingsError> {
        let set = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let log_format = match set("GATEWAY_LOG_FORMAT").as_deref().map(str::trim) {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => return Err(SettingsError::LogFormat(other.to_owned())),
        };
        let endpoint = set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT"));
        let export = match &endpoint {
            None => None,
            Some(_) => {
                let protocol = ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"]
                    .into_iter()
                    .find_map(|name| set(name).map(|value| (name, value)));
                Some(match protocol {
                    None => Protocol::HttpProtobuf,
                    Some((_, value)) if value.trim() == "grpc" => Protocol::Grpc,
                    Some((_, value)) if value.trim() == "http/protobuf" => Protocol::HttpProtobuf,
                    Some((name, value)) => return Err(SettingsError::Protocol { name, value }),
                })
            }
        };
        let tls = match &endpoint {
            None => ExportTls::default(),
            Some(endpoint) => export_tls(endpoint, &set)?,
        };
        Ok(Settings { log_format, export, tls })
    }
}

/// The TLS variables (the traces-only name first, as for the endpoint), refused on a plain endpoint where they
/// would have no effect.
fn export_tls(endpoint: &str, set: &impl Fn(&str) -> Option<String>) -> Result<ExportTls, SettingsError> {
    let file = |traces: &'static str, general: &'static str| {
        set(traces).map(|v| (traces, v)).or_else(|| set(general).map(|v| (general, v)))
    };
    let ca = file("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE");
    let cert = file("OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE", "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE");
    let key = file("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", "OTEL_EXPORTER_OTLP_CLIENT_KEY");
    let https = endpoint.trim().to_ascii_lowercase().starts_with("https://");
    if !https && let Some((name, _)) = ca.as_ref().or(cert.as_ref()).or(key.as_ref()) {
        return Err(SettingsError::TlsWithoutHttps { name, endpoint: endpoint.to_owned() });
    }
    let client_identity = match (cert, key) {
        (None, None) => None,
        (Some((_, cert)), Some((_, key))) => Some((PathBuf::from(cert.trim()), PathBuf::from(key.trim()))),
        (Some((set, _)), None) => {
            return Err(SettingsError::HalfIdentity { set, missing: "OTEL_EXPORTER_OTLP_CLIENT_KEY" });
        }
        (None, Some((set, _))) => {
            return Err(SettingsError::HalfIdentity { set, missing: "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE" });
        }
    };
    Ok(ExportTls { https, ca: ca.map(|(_, path)| PathBuf::from(path.trim())), client_identity })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        Settings::from_lookup(|name| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| (*v).to_owned()))
    }

    #[test]
    fn off_and_text_by_default() {
        let off = Settings { log_format: LogFormat::Text, export: None, tls: ExportTls::default() };
        assert_eq!(settings(&[]), Ok(off));
        assert_eq!(settings(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).map(|s| s.export), Ok(None));
        assert_eq!(settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]).map(|s| s.export), Ok(None));
    }

    #[test]
    fn log_format() {
        assert_eq!(settings(&[("GATEWAY_LOG_FORMAT", "json")]).map(|s| s.log_format), Ok(LogFormat::Json));
        assert_eq!(settings(&[("GATEWAY_LOG_FORMAT", "text")]).map(|s| s.log_format), Ok(LogFormat::Text));
        assert_eq!(settings(&[("GATEWAY_LOG_FORMAT", "xml")]), Err(SettingsError::LogFormat("xml".into())));
    }

    #[test]
    fn export_protocol() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
        assert_eq!(settings(&[endpoint]).map(|s| s.export), Ok(Some(Protocol::HttpProtobuf)));
        let traces_only = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:4318/v1/traces");
        assert_eq!(settings(&[traces_only]).map(|s| s.export), Ok(Some(Protocol::HttpProtobuf)));
        let grpc = ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc");
        assert_eq!(settings(&[endpoint, grpc]).map(|s| s.export), Ok(Some(Protocol::Grpc)));
        let http = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf");
        assert_eq!(settings(&[endpoint, grpc, http]).map(|s| s.export), Ok(Some(Protocol::HttpProtobuf)));
        let json = ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json");
        assert!(matches!(settings(&[endpoint, json]), Err(SettingsError::Protocol { .. })));
    }

    #[test]
    fn tls_to_the_collector() {
        let https = ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4317");
        assert_eq!(settings(&[https]).map(|s| s.tls), Ok(ExportTls { https: true, ..ExportTls::default() }));
        let ca = ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/etc/ca.pem");
        let traces_ca = ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "/etc/traces-ca.pem");
        assert_eq!(settings(&[https, ca, traces_ca]).map(|s| s.tls.ca), Ok(Some(PathBuf::from("/etc/traces-ca.pem"))));
        let cert = ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "/etc/client.pem");
        let key = ("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/etc/client.key");
        assert_eq!(
            settings(&[https, cert, key]).map(|s| s.tls.client_identity),
            Ok(Some((PathBuf::from("/etc/client.pem"), PathBuf::from("/etc/client.key"))))
        );
        assert!(matches!(settings(&[https, cert]), Err(SettingsError::HalfIdentity { .. })));
        // A setting with no effect is refused, not ignored.
        let plain = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317");
        assert!(matches!(settings(&[plain, ca]), Err(SettingsError::TlsWithoutHttps { .. })));
        // Traces off: nothing is checked.
        assert_eq!(settings(&[ca]).map(|s| s.tls), Ok(ExportTls::default()));
    }
}
