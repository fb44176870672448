//! TLS to PostgreSQL, as the URL's `sslmode` and `sslrootcert` ask (see
//! `config::Database::target`), with OpenSSL: the same library librdkafka uses for the
//! broker, so the binary carries one TLS implementation and one way to find the
//! system's CAs.

use std::path::Path;

use anyhow::Context;
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use openssl::x509::X509;
use openssl::x509::store::{X509Store, X509StoreBuilder};
use postgres_openssl::MakeTlsConnector;

use crate::config::{DatabaseTls, SslMode};

/// The connector for `tls`, or None for `sslmode=disable`.
pub fn connector(tls: &DatabaseTls) -> anyhow::Result<Option<MakeTlsConnector>> {
    if tls.mode == SslMode::Disable {
        return Ok(None);
    }
    let mut builder = SslConnector::builder(SslMethod::tls_client()).context("set up TLS")?;
    match tls.mode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => builder.set_verify(SslVerifyMode::NONE),
        SslMode::VerifyCa | SslMode::VerifyFull => {
            builder.set_verify(SslVerifyMode::PEER);
            match &tls.root_cert {
                // As libpq: only the CAs of sslrootcert, not the system's as well.
                Some(path) => builder.set_cert_store(
                    ca_store(path)
                        .with_context(|| format!("read the CA certificates in sslrootcert {}", path.display()))?,
                ),
                None => {
                    // OpenSSL is built into the binary, so its own default paths are not
                    // the system's: look for the system's CA bundle where distributions
                    // keep it.
                    let probe = openssl_probe::probe();
                    let file = probe.cert_file.as_deref();
                    let dir = probe.cert_dir.first().map(|d| d.as_path());
                    if file.is_none() && dir.is_none() {
                        anyhow::bail!("no system CA certificates found; give sslrootcert=<a PEM file>");
                    }
                    builder.load_verify_locations(file, dir).context("read the system's CA certificates")?;
                }
            }
        }
    }
    let mut connector = MakeTlsConnector::new(builder.build());
    if tls.mode != SslMode::VerifyFull {
        // verify-ca checks the chain, not the name; prefer and require check neither.
        connector.set_callback(|connect, _host| {
            connect.set_verify_hostname(false);
            Ok(())
        });
    }
    Ok(Some(connector))
}

/// A store holding the certificates of a PEM file.
fn ca_store(path: &Path) -> anyhow::Result<X509Store> {
    let pem = std::fs::read(path)?;
    let certificates = X509::stack_from_pem(&pem)?;
    if certificates.is_empty() {
        anyhow::bail!("no certificate in the file");
    }
    let mut store = X509StoreBuilder::new()?;
    for certificate in certificates {
        store.add_cert(certificate)?;
    }
    Ok(store.build())
}
