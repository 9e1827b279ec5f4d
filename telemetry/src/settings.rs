//! What the environment asks for: the log format (`GATEWAY_LOG_FORMAT`) and whether traces are exported, and how
//! (`OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`, `OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`). The OpenTelemetry SDK reads the
//! other standard variables itself (`OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`,
//! `OTEL_BSP_*`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`).

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
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error("GATEWAY_LOG_FORMAT must be 'text' or 'json', not '{0}'")]
    LogFormat(String),
    #[error("{name} must be 'grpc' or 'http/protobuf' (http/json is not supported), not '{value}'")]
    Protocol { name: &'static str, value: String },
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
        let export = match endpoint {
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
        Ok(Settings { log_format, export })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        Settings::from_lookup(|name| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| (*v).to_owned()))
    }

    #[test]
    fn off_and_text_by_default() {
        assert_eq!(settings(&[]), Ok(Settings { log_format: LogFormat::Text, export: None }));
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
}
