//! Managed services: PostgreSQL that accepts only TLS, a broker that takes only SASL over
//! TLS, settings from the environment and secrets from files. Each runs the binary as a
//! process of its own, so that its whole log can be searched for the passwords: none
//! may appear, whatever goes wrong.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use orders_svc::tools::produce::Producer;

use crate::support::tls::{Pki, TlsPostgres};
use crate::support::*;

const ORDER: &str = "/order/b563feb7b2b84b6test";

/// Waits until `/readyz` at `addr` names something containing `needle`; returns its body.
fn readyz_naming(addr: SocketAddr, needle: &str) -> String {
    wait_for(&format!("/readyz to say {needle:?}"), Duration::from_secs(40), || {
        let body = get_within(addr, "/readyz", Duration::from_secs(2)).ok()?.body;
        body.contains(needle).then_some(body)
    })
}

#[test]
fn postgres_that_accepts_only_tls_is_reached_with_verify_full_and_refuses_the_rest_clearly() {
    let pki = Pki::new("pg-ca");
    let pg = TlsPostgres::start(&pki);
    let password = "Pg-Secret-4417";
    let url = |query: &str| format!("postgres://postgres:{password}@localhost:{}/postgres?{query}", pg.port);
    let topic = create_topic(1);
    let dir = temp_dir("pg-tls-service");
    let start = |name: &str, db_url: &str| {
        Process::serving(&dir, name, &config_toml(db_url, &topic, &unique("group"), ANY_PORT, ""))
    };

    let (verified, addr) = start("verify-full", &url(&format!("sslmode=verify-full&sslrootcert={}", pki.ca.display())));
    wait_ready(addr);
    produce(&topic, &[MODEL.as_bytes()]);
    assert_eq!(wait_until_served(addr, ORDER).json()["order_uid"], "b563feb7b2b84b6test");

    // Without TLS the server refuses, and says why.
    let (plain, addr) = start("disable", &url("sslmode=disable"));
    let refused = readyz_naming(addr, "no encryption");
    assert!(refused.contains("sslmode=disable"), "{refused}");

    // A CA that did not sign the server's certificate.
    let other = Pki::new("other-ca");
    let (wrong_ca, addr) = start("wrong-ca", &url(&format!("sslmode=verify-full&sslrootcert={}", other.ca.display())));
    let unverified = readyz_naming(addr, "certificate verify failed");
    assert!(unverified.contains("sslmode=verify-full"), "{unverified}");

    for (process, text) in [(&verified, String::new()), (&plain, refused), (&wrong_ca, unverified)] {
        let log = process.log();
        assert!(!log.contains(password) && !text.contains(password), "the password shows in {}", process.log.display());
    }
}

#[test]
fn the_service_consumes_over_sasl_ssl_and_a_wrong_password_is_named_clearly() {
    let pki = Pki::new("kafka-ca");
    let topic = unique("secure");
    let password = "Kafka-Secret-7731";
    let broker = Broker::start_secure(&pki, "orders", password, &topic);
    let properties = |password: &str| {
        BTreeMap::from([
            ("security.protocol".to_string(), "SASL_SSL".to_string()),
            ("sasl.mechanism".to_string(), "SCRAM-SHA-512".to_string()),
            ("sasl.username".to_string(), "orders".to_string()),
            ("sasl.password".to_string(), password.to_string()),
            ("ssl.ca.location".to_string(), pki.ca.display().to_string()),
        ])
    };
    let db = TestDb::new();
    let dir = temp_dir("sasl-service");
    let start = |name: &str, password: &str| {
        let mut toml = config_toml(&db.url, &topic, &unique("group"), ANY_PORT, "");
        toml =
            toml.replace(&format!("brokers = \"{}\"", brokers()), &format!("brokers = \"{}\"", broker.secure_addr()));
        toml.push_str("[kafka.properties]\n");
        for (name, value) in properties(password) {
            toml.push_str(&format!("{name:?} = {value:?}\n"));
        }
        Process::serving(&dir, name, &toml)
    };

    let (service, addr) = start("sasl", password);
    wait_ready(addr);
    let kafka = orders_svc::config::Kafka {
        brokers: broker.secure_addr(),
        properties: properties(password),
        ..orders_svc::config::Kafka::default()
    };
    let producer = Producer::with_config(&kafka, &topic, &[]).unwrap();
    producer.send_order_json(MODEL.as_bytes()).unwrap();
    assert_eq!(producer.flush().unwrap(), 1);
    assert_eq!(wait_until_served(addr, ORDER).json()["order_uid"], "b563feb7b2b84b6test");

    let wrong = "Wrong-Secret-0000";
    let (refused, addr) = start("wrong-password", wrong);
    let body = readyz_naming(addr, "SASL authentication error");
    for text in [service.log(), refused.log(), body] {
        assert!(!text.contains(password) && !text.contains(wrong), "a password shows in:\n{text}");
    }
}

/// `ORDERS_*` variables over the file, and the database URL from a file, as a container
/// would be given them; a bad variable stops the start naming it.
#[test]
fn settings_from_the_environment_and_secrets_from_files() {
    let setup = Setup::new(1);
    let dir = temp_dir("env-service");
    let url_file = dir.join("database-url");
    std::fs::write(&url_file, format!("{}\n", setup.db.url)).unwrap();
    // The file names another address and a database that does not exist: the
    // environment wins.
    let file_addr: SocketAddr = "127.0.0.2:0".parse().unwrap();
    let toml = config_toml("postgres://nobody@127.0.0.1:1/none", "no-such-topic", "no-group", file_addr, "");
    let env = [
        ("ORDERS_DATABASE_URL_FILE", url_file.to_str().unwrap().to_string()),
        ("ORDERS_HTTP_ADDR", ANY_PORT.to_string()),
        ("ORDERS_KAFKA_TOPIC", setup.topic.clone()),
        ("ORDERS_KAFKA_GROUP_ID", setup.group.clone()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let service = Process::start(&dir, "env", &toml, &env);
    let addr = service.http_addr();
    assert_eq!(addr.ip(), ANY_PORT.ip());
    wait_ready(addr);
    setup.produce(&[MODEL.as_bytes()]);
    wait_until_served(addr, ORDER);
    assert_eq!(setup.db.count("SELECT count(*) FROM orders"), 1);

    let mut bad = Process::start(&dir, "bad-env", &toml, &[("ORDERS_HTTP_WORKERS", "four")]);
    assert!(!bad.wait_exit(Duration::from_secs(20)).success());
    assert!(
        bad.log().contains("environment variable ORDERS_HTTP_WORKERS: expected an integer, found \"four\""),
        "{}",
        bad.log()
    );
}

/// librdkafka refuses an unknown property or an invalid value when the client is made:
/// the start stops naming it, and never shows a value that may be a secret.
#[test]
fn a_property_librdkafka_refuses_stops_the_start_named() {
    let kafka = |name: &str, value: &str| orders_svc::config::Kafka {
        properties: BTreeMap::from([
            (name.to_string(), value.to_string()),
            ("sasl.password".to_string(), "Kafka-Secret-5150".to_string()),
        ]),
        ..orders_svc::config::Kafka::default()
    };
    let error = |name: &str, value: &str| {
        format!("{:#}", Producer::with_config(&kafka(name, value), "t", &[]).err().expect("refused"))
    };
    let misspelt = error("sasl.pasword", "Kafka-Secret-0001");
    assert_eq!(misspelt, "create Kafka producer: No such configuration property: \"sasl.pasword\"");
    let invalid = error("security.protocol", "bogus");
    assert_eq!(
        invalid,
        "create Kafka producer: Invalid value \"bogus\" for configuration property \"security.protocol\""
    );

    let setup = Setup::new(1);
    let dir = temp_dir("bad-property");
    let toml = config_toml(&setup.db.url, &setup.topic, &setup.group, ANY_PORT, "")
        + "[kafka.properties]\n\"sasl.pasword\" = \"Kafka-Secret-0001\"\n";
    let mut service = Process::start(&dir, "bad-property", &toml, &[]);
    assert!(!service.wait_exit(Duration::from_secs(20)).success());
    let log = service.log();
    assert!(log.contains("No such configuration property: \"sasl.pasword\""), "{log}");
    assert!(!log.contains("Kafka-Secret"), "{log}");
}
