//! The `[database]` section: the URL and its TLS (libpq's `sslmode` and root
//! certificate), the pool and the timeouts.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Database {
    pub url: String,
    /// A file holding the URL (a mounted secret); read at start, it replaces `url`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url_file: Option<PathBuf>,
    pub pool_size: usize,
    pub connect_timeout_secs: u64,
    pub write_statement_timeout_ms: u64,
    pub idle_in_transaction_timeout_ms: u64,
    pub read_statement_timeout_ms: u64,
    pub tcp_keepalive_secs: u64,
    pub tcp_user_timeout_ms: u64,
}

impl Default for Database {
    fn default() -> Self {
        Database {
            url: "postgres://orders_svc@127.0.0.1:5432/orders".into(),
            url_file: None,
            pool_size: 4,
            connect_timeout_secs: 5,
            write_statement_timeout_ms: 30_000,
            idle_in_transaction_timeout_ms: 15_000,
            read_statement_timeout_ms: 5_000,
            tcp_keepalive_secs: 10,
            tcp_user_timeout_ms: 10_000,
        }
    }
}

/// libpq's `sslmode`, from the URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS if the server offers it, without checking its certificate (the default).
    Prefer,
    /// TLS, without checking the certificate.
    Require,
    /// TLS with a certificate signed by a trusted CA.
    VerifyCa,
    /// As `VerifyCa`, and the certificate must name the host connected to.
    VerifyFull,
}

/// The TLS a database URL asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseTls {
    pub mode: SslMode,
    /// The CAs to trust (`sslrootcert`, a PEM file); None: the system's.
    pub root_cert: Option<PathBuf>,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl Database {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }

    /// The URL as the postgres crate takes it, and the TLS it asks for. The crate knows
    /// only some of libpq's `sslmode` values and no `sslrootcert`, so both are taken out
    /// here: `sslmode` as libpq reads it (`disable`, `prefer`, `require`, `verify-ca`,
    /// `verify-full`; `require` with an `sslrootcert` checks the chain, as `verify-ca`),
    /// `sslrootcert` a PEM file of CAs or `system`.
    pub fn target(&self) -> anyhow::Result<(postgres::Config, DatabaseTls)> {
        let (base, query) = self.url.split_once('?').unwrap_or((&self.url, ""));
        let mut kept = Vec::new();
        let mut mode = None;
        let mut root_cert = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "sslmode" => {
                    mode = Some(match value {
                        "disable" => SslMode::Disable,
                        "prefer" => SslMode::Prefer,
                        "require" => SslMode::Require,
                        "verify-ca" => SslMode::VerifyCa,
                        "verify-full" => SslMode::VerifyFull,
                        _ => bail!("sslmode={value:?} is not one of disable, prefer, require, verify-ca, verify-full"),
                    })
                }
                "sslrootcert" => root_cert = Some(percent_decode(value)),
                _ => kept.push(pair),
            }
        }
        let system = root_cert.as_deref() == Some("system");
        let mode = match (mode, &root_cert) {
            // libpq: `sslrootcert=system` verifies fully and refuses a weaker mode.
            (None, _) if system => SslMode::VerifyFull,
            (Some(mode), _) if system && mode != SslMode::VerifyFull => {
                bail!("sslrootcert=system needs sslmode=verify-full (or no sslmode)")
            }
            (Some(SslMode::Require), Some(_)) => SslMode::VerifyCa,
            (mode, _) => mode.unwrap_or(SslMode::Prefer),
        };
        let root_cert = root_cert.filter(|_| !system).map(PathBuf::from);
        if let Some(path) = &root_cert
            && !path.is_file()
        {
            bail!("sslrootcert {}: no such file", path.display());
        }
        let url = if kept.is_empty() { base.to_string() } else { format!("{base}?{}", kept.join("&")) };
        let mut config: postgres::Config =
            url.parse().map_err(|e| anyhow::anyhow!("not a valid PostgreSQL URL: {e}"))?;
        config.ssl_mode(match mode {
            SslMode::Disable => postgres::config::SslMode::Disable,
            SslMode::Prefer => postgres::config::SslMode::Prefer,
            _ => postgres::config::SslMode::Require,
        });
        Ok((config, DatabaseTls { mode, root_cert }))
    }
}

/// `%XX` escapes of a URL's query value decoded (a `%` not followed by two hex digits
/// stays as it is). The HTTP side decodes form values with it too.
pub(crate) fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
