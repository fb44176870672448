//! TLS for tests: a CA of the test's own and a certificate it signs for `localhost` and
//! 127.0.0.1, and a throwaway PostgreSQL cluster that accepts only TLS connections.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{BasicConstraints, SubjectAlternativeName};
use openssl::x509::{X509, X509Name};

use super::{temp_dir, wait_for};

/// A CA and a server certificate it signed, as PEM files in `dir`.
pub struct Pki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    /// A new CA named `name`, and a certificate for localhost and 127.0.0.1 signed by it.
    pub fn new(name: &str) -> Pki {
        let dir = temp_dir(name);
        let (ca_key, ca) = certificate(&format!("{name} CA"), None, true);
        let (key, cert) = certificate("localhost", Some((&ca_key, &ca)), false);
        let write = |file: &str, pem: Vec<u8>| {
            let path = dir.join(file);
            std::fs::write(&path, pem).unwrap();
            path
        };
        Pki {
            ca: write("ca.pem", ca.to_pem().unwrap()),
            cert: write("server.pem", cert.to_pem().unwrap()),
            key: write("server.key", key.private_key_to_pem_pkcs8().unwrap()),
            dir,
        }
    }
}

/// A key and a certificate for `name`, signed by `issuer` (self-signed without one).
fn certificate(name: &str, issuer: Option<(&PKey<Private>, &X509)>, ca: bool) -> (PKey<Private>, X509) {
    let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let mut subject = X509Name::builder().unwrap();
    subject.append_entry_by_text("CN", name).unwrap();
    let subject = subject.build();
    let mut builder = X509::builder().unwrap();
    builder.set_version(2).unwrap();
    builder.set_serial_number(&BigNum::from_u32(rand_serial()).unwrap().to_asn1_integer().unwrap()).unwrap();
    builder.set_subject_name(&subject).unwrap();
    builder.set_pubkey(&key).unwrap();
    builder.set_not_before(&Asn1Time::days_from_now(0).unwrap()).unwrap();
    builder.set_not_after(&Asn1Time::days_from_now(2).unwrap()).unwrap();
    if ca {
        builder.append_extension(BasicConstraints::new().critical().ca().build().unwrap()).unwrap();
    } else {
        let san = SubjectAlternativeName::new()
            .dns("localhost")
            .ip("127.0.0.1")
            .build(&builder.x509v3_context(issuer.map(|(_, cert)| cert.as_ref()), None));
        builder.append_extension(san.unwrap()).unwrap();
    }
    match issuer {
        Some((issuer_key, issuer_cert)) => {
            builder.set_issuer_name(issuer_cert.subject_name()).unwrap();
            builder.sign(issuer_key, MessageDigest::sha256()).unwrap();
        }
        None => {
            builder.set_issuer_name(&subject).unwrap();
            builder.sign(&key, MessageDigest::sha256()).unwrap();
        }
    }
    (key, builder.build())
}

fn rand_serial() -> u32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() | 1
}

/// A PostgreSQL cluster of the test's own on a free port that refuses every connection
/// without TLS (`hostssl` only), its certificate from `pki`; trust auth for the user
/// `postgres`. Stopped when dropped.
pub struct TlsPostgres {
    data: PathBuf,
    pub port: u16,
}

impl TlsPostgres {
    pub fn start(pki: &Pki) -> TlsPostgres {
        let data = temp_dir("pg-tls");
        let port = super::free_addr().port();
        std::fs::copy(&pki.cert, data.join("server.pem")).unwrap();
        std::fs::copy(&pki.key, data.join("server.key")).unwrap();
        let cluster = data.join("cluster");
        as_postgres(
            &data,
            &pg_bin("initdb"),
            &["-D", cluster.to_str().unwrap(), "-U", "postgres", "--auth=trust", "--no-sync"],
        );
        let conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nssl = on\n\
             ssl_cert_file = '{}'\nssl_key_file = '{}'\nfsync = off\n",
            data.display(),
            data.join("server.pem").display(),
            data.join("server.key").display()
        );
        append(&cluster.join("postgresql.conf"), &conf);
        std::fs::write(
            cluster.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
        )
        .unwrap();
        as_postgres(
            &data,
            &pg_bin("pg_ctl"),
            &["-D", cluster.to_str().unwrap(), "-l", data.join("log").to_str().unwrap(), "-w", "-t", "60", "start"],
        );
        wait_for("the TLS PostgreSQL to listen", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        TlsPostgres { data, port }
    }

    /// `postgres://postgres@<host>:<port>/postgres?<query>`.
    pub fn url(&self, host: &str, query: &str) -> String {
        format!("postgres://postgres@{host}:{}/postgres?{query}", self.port)
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let cluster = self.data.join("cluster");
        let _ = run_as_postgres(
            &self.data,
            &pg_bin("pg_ctl"),
            &["-D", cluster.to_str().unwrap(), "-m", "immediate", "stop"],
        );
    }
}

fn append(path: &Path, text: &str) {
    let mut conf = std::fs::read_to_string(path).unwrap();
    conf.push_str(text);
    std::fs::write(path, conf).unwrap();
}

/// PostgreSQL's `name` program: from PATH, else the newest `/usr/lib/postgresql/*/bin`.
fn pg_bin(name: &str) -> String {
    if Command::new(name).arg("--version").output().is_ok_and(|o| o.status.success()) {
        return name.to_string();
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| Some(e.ok()?.path().join("bin").join(name))).filter(|p| p.exists()).collect())
        .unwrap_or_default();
    versions.sort();
    versions.pop().map(|p| p.display().to_string()).unwrap_or_else(|| {
        panic!("PostgreSQL's {name} is not installed (apt-get install postgresql); the TLS test starts a cluster of its own")
    })
}

/// Runs a PostgreSQL program, as the `postgres` user when this runs as root (initdb and
/// pg_ctl refuse root), with `dir` made theirs.
fn as_postgres(dir: &Path, program: &str, args: &[&str]) {
    let output = run_as_postgres(dir, program, args).unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn run_as_postgres(dir: &Path, program: &str, args: &[&str]) -> std::io::Result<std::process::Output> {
    let root = Command::new("id").arg("-u").output()?.stdout == b"0\n";
    if root {
        Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir).status()?;
        Command::new("chmod").arg("0600").arg(dir.join("server.key")).status()?;
        Command::new("runuser").args(["-u", "postgres", "--", program]).args(args).current_dir("/").output()
    } else {
        Command::new("chmod").arg("0600").arg(dir.join("server.key")).status()?;
        Command::new(program).args(args).output()
    }
}
