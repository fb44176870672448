use super::*;

fn err(text: &str) -> String {
    format!("{:#}", Config::parse(text).unwrap_err())
}

#[test]
fn empty_file_gives_the_local_stack_defaults() {
    let c = Config::parse("").unwrap();
    assert_eq!(c.database.url, "postgres://orders_svc@127.0.0.1:5432/orders");
    assert_eq!(c.kafka.brokers, "127.0.0.1:9092");
    assert_eq!(c.kafka.topic, "orders");
    assert_eq!(c.kafka.fetch_wait_max_ms, 100);
    assert_eq!(c.http.addr.to_string(), "127.0.0.1:8081");
    assert_eq!(
        (c.http.max_connections, c.http.request_timeout(), c.http.idle_timeout()),
        (4096, Duration::from_secs(5), Duration::from_secs(30))
    );
}

#[test]
fn sample_file_parses_to_the_defaults() {
    let c = Config::parse(include_str!("../../orders.toml")).unwrap();
    let d = Config::default();
    assert_eq!(format!("{c:?}"), format!("{d:?}"));
}

#[test]
fn event_threads_are_bounded_and_may_be_none() {
    assert_eq!(Config::parse("").unwrap().http.event_threads, 2);
    assert_eq!(Config::parse("[http]\nevent_threads = 0\n").unwrap().http.event_threads, 0);
    assert_eq!(
        err("[http]\nevent_threads = 65\n"),
        "key `http.event_threads`: expected at most 64 (each serves many connections; 0 gives every connection a \
         thread of its own), found 65"
    );
}

#[test]
fn database_waits_must_leave_a_worker_free() {
    assert_eq!(
        err("[cache]\nmax_database_waits = 4\n"),
        "key `cache.max_database_waits`: expected from 1 to 3 (fewer than http.workers, so that a worker is \
         always free for cached orders and health checks), found 4"
    );
}

#[test]
fn compose_config_parses() {
    let c = Config::parse(include_str!("../../deploy/compose.toml")).unwrap();
    assert_eq!(c.kafka.brokers, "kafka:9092");
    assert_eq!(c.http.addr.to_string(), "0.0.0.0:8081");
    // As compose.yaml runs it: the URL from the secret file.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let secret = root.join("deploy/secrets/database-url").display().to_string();
    let c = Config::load_with(Some(&root.join("deploy/compose.toml")), env(&[("ORDERS_DATABASE_URL_FILE", &secret)]))
        .unwrap();
    assert_eq!(c.database.url, "postgres://orders_svc:orders_svc@postgres:5432/orders");
}

#[test]
fn wrong_type_names_key_and_expectation() {
    assert_eq!(
        err("[http]\nworkers = \"four\"\n"),
        "key `http.workers`: invalid type: string \"four\", expected usize (line 2)"
    );
}

#[test]
fn unknown_key_is_an_error() {
    assert_eq!(
        err("[kafka]\ntopik = \"x\"\n"),
        "key `kafka.topik`: unknown field `topik`, expected one of `brokers`, `topic`, `group_id`, \
         `auto_offset_reset`, `fetch_wait_max_ms`, `group_protocol`, `session_timeout_ms`, `instance_id`, \
         `properties`, `properties_file` (line 2)"
    );
}

#[test]
fn each_group_protocol_refuses_what_the_other_alone_takes() {
    assert_eq!(
        err("[kafka]\ngroup_protocol = \"consumer\"\nsession_timeout_ms = 6000\n"),
        "key `kafka.session_timeout_ms`: applies to kafka.group_protocol = \"classic\" alone; under \"consumer\" (the \
         default) the broker sets the session timeout (group.consumer.session.timeout.ms): remove the key, or set \
         kafka.group_protocol = \"classic\""
    );
    assert_eq!(
        err(
            "[kafka]\ngroup_protocol = \"consumer\"\n[kafka.properties]\n\"partition.assignment.strategy\" = \"range\"\n"
        ),
        "key `kafka.properties`: `partition.assignment.strategy` is for the broker under the consumer protocol \
         (group.remote.assignor chooses its assignor), not for kafka.group_protocol = \"consumer\""
    );
    assert_eq!(
        err("[kafka]\ngroup_protocol = \"classic\"\n[kafka.properties]\n\"group.remote.assignor\" = \"uniform\"\n"),
        "key `kafka.properties`: `group.remote.assignor` is for the consumer protocol alone; with classic, the \
         members assign (partition.assignment.strategy), not for kafka.group_protocol = \"classic\""
    );
    assert_eq!(
        err("[kafka]\n[kafka.properties]\n\"group.instance.id\" = \"a\"\n"),
        "key `kafka.properties`: `group.instance.id` is set by kafka.instance_id"
    );
    assert_eq!(
        err("[kafka]\ngroup_protocol = \"eager\"\n"),
        "key `kafka.group_protocol`: unknown variant `eager`, expected `classic` or `consumer` (line 2)"
    );
    let c = Config::parse("[kafka]\ngroup_protocol = \"consumer\"\ninstance_id = \"orders-1\"\n").unwrap();
    assert_eq!((c.kafka.group_protocol, c.kafka.instance_id.as_deref()), (GroupProtocol::Consumer, Some("orders-1")));
}

#[test]
fn bad_address_and_enum_are_named() {
    assert_eq!(err("[http]\naddr = \"localhost\"\n"), "key `http.addr`: invalid socket address syntax (line 2)");
    assert_eq!(
        err("[kafka]\nauto_offset_reset = \"first\"\n"),
        "key `kafka.auto_offset_reset`: unknown variant `first`, expected `earliest` or `latest` (line 2)"
    );
}

#[test]
fn bad_toml_says_where() {
    let e = err("[http\n");
    assert!(e.contains("line 1"), "{e}");
}

#[test]
fn range_checks_name_the_key() {
    assert_eq!(err("[http]\nworkers = 0\n"), "key `http.workers`: expected a number greater than 0, found 0");
    assert_eq!(
        err("[http]\nrequest_timeout_ms = 0\n"),
        "key `http.request_timeout_ms`: expected a number greater than 0, found 0"
    );
    assert_eq!(
        err("[database]\nurl = \"mysql://x\"\n"),
        "key `database.url`: expected a URL starting with postgres://, found one starting with \"mysql\""
    );
    assert_eq!(
        err("[ingest]\nretry_initial_ms = 500\nretry_max_ms = 100\n"),
        "key `ingest.retry_max_ms`: expected at least ingest.retry_initial_ms (500), found 100"
    );
}

#[test]
fn missing_file_is_named() {
    let e = format!("{:#}", Config::load_with(Some(Path::new("/nonexistent/orders.toml")), []).unwrap_err());
    assert_eq!(e, "cannot read config file /nonexistent/orders.toml: No such file or directory (os error 2)");
}

fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn load(file: Option<&str>, vars: &[(&str, &str)]) -> anyhow::Result<Config> {
    let path = file.map(|text| {
        let path = std::env::temp_dir().join(format!("orders-config-{}-{}.toml", std::process::id(), unique()));
        std::fs::write(&path, text).unwrap();
        path
    });
    Config::load_with(path.as_deref(), env(vars))
}

fn unique() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A file of the test's own holding `text`.
fn secret_file(text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("orders-secret-{}-{}", std::process::id(), unique()));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn environment_variables_override_the_file_each_as_its_key_s_type() {
    let c = load(
        Some("[http]\nworkers = 2\n[kafka]\ngroup_id = \"from-file\"\n"),
        &[
            ("ORDERS_HTTP_WORKERS", "8"),
            ("ORDERS_HTTP_ADDR", "0.0.0.0:9000"),
            ("ORDERS_KAFKA_GROUP_ID", "123"),
            ("ORDERS_CACHE_MAX_DATABASE_WAITS", "3"),
            ("ORDERS_VALIDATION_AMOUNT", "false"),
            ("ORDERS_KAFKA_PROPERTIES_SECURITY_PROTOCOL", "SASL_SSL"),
            ("ORDERS_KAFKA_PROPERTIES_SASL_PASSWORD", "hunter2"),
            ("ORDERSVC_FAULT", "not ours"),
            ("PATH", "/bin"),
        ],
    )
    .unwrap();
    assert_eq!((c.http.workers, c.http.addr.to_string()), (8, "0.0.0.0:9000".to_string()));
    assert_eq!(c.kafka.group_id, "123");
    assert_eq!(c.cache.max_database_waits, Some(3));
    assert!(!c.validation.amount);
    assert_eq!(
        c.kafka.properties,
        BTreeMap::from([
            ("sasl.password".to_string(), "hunter2".to_string()),
            ("security.protocol".to_string(), "SASL_SSL".to_string())
        ])
    );
    // Without a file, over the defaults.
    assert_eq!(load(None, &[("ORDERS_KAFKA_TOPIC", "t")]).unwrap().kafka.topic, "t");
}

#[test]
fn a_bad_environment_value_names_the_variable() {
    let err = |vars: &[(&str, &str)]| format!("{:#}", load(Some("[http]\nworkers = 2\n"), vars).unwrap_err());
    assert_eq!(
        err(&[("ORDERS_HTTP_WORKERS", "four")]),
        "environment variable ORDERS_HTTP_WORKERS: expected an integer, found \"four\""
    );
    assert_eq!(
        err(&[("ORDERS_HTTP_WORKERS", "0")]),
        "environment variable ORDERS_HTTP_WORKERS: expected a number greater than 0, found 0"
    );
    assert_eq!(
        err(&[("ORDERS_HTTP_ADDR", "localhost")]),
        "environment variable ORDERS_HTTP_ADDR: invalid socket address syntax"
    );
    assert!(
        err(&[("ORDERS_HTTP_ADR", "x")]).starts_with("environment variable ORDERS_HTTP_ADR: unknown field `adr`"),
        "{}",
        err(&[("ORDERS_HTTP_ADR", "x")])
    );
    assert_eq!(
        err(&[("ORDERS_WEB_ADDR", "x")]),
        "environment variable ORDERS_WEB_ADDR: not a setting; expected ORDERS_<SECTION>_<KEY> with a SECTION \
         of DATABASE, KAFKA, INGEST, VALIDATION, HTTP or CACHE"
    );
    // The file's own errors still name the file's key and line.
    assert_eq!(
        format!("{:#}", load(Some("[http]\nworkers = 0\n"), &[("ORDERS_KAFKA_TOPIC", "t")]).unwrap_err())
            .split_once(": ")
            .unwrap()
            .1,
        "key `http.workers`: expected a number greater than 0, found 0"
    );
}

#[test]
fn secrets_come_from_files() {
    let url = secret_file("postgres://svc:s3cret@db.example:5432/orders?sslmode=require\n");
    let properties = secret_file("# from the vault\nsasl.username = svc\nsasl.password=p=w\n\n");
    let text = format!(
        "[database]\nurl_file = {:?}\n[kafka]\nproperties_file = {:?}\n[kafka.properties]\n\"security.protocol\" = \"SASL_SSL\"\n",
        url.display(),
        properties.display()
    );
    let c = load(Some(&text), &[]).unwrap();
    assert_eq!(c.database.url, "postgres://svc:s3cret@db.example:5432/orders?sslmode=require");
    assert_eq!(c.kafka.properties["sasl.username"], "svc");
    assert_eq!(c.kafka.properties["sasl.password"], "p=w");
    assert_eq!(c.kafka.properties["security.protocol"], "SASL_SSL");
    // A variable for the URL replaces the file's url_file, and one for the file its url.
    let c = load(Some(&text), &[("ORDERS_DATABASE_URL", "postgres://other@h/db")]).unwrap();
    assert_eq!(c.database.url, "postgres://other@h/db");
    let via_env = load(None, &[("ORDERS_DATABASE_URL_FILE", url.to_str().unwrap())]).unwrap();
    assert_eq!(via_env.database.url, "postgres://svc:s3cret@db.example:5432/orders?sslmode=require");

    let e = format!("{:#}", load(Some("[database]\nurl_file = \"/nonexistent/url\"\n"), &[]).unwrap_err());
    assert!(
        e.ends_with("key `database.url_file`: cannot read /nonexistent/url: No such file or directory (os error 2)"),
        "{e}"
    );
    let twice = format!(
        "[kafka]\nproperties_file = {:?}\n[kafka.properties]\n\"sasl.password\" = \"x\"\n",
        properties.display()
    );
    let e = format!("{:#}", load(Some(&twice), &[]).unwrap_err());
    assert!(e.ends_with("sets `sasl.password`, which kafka.properties sets too"), "{e}");
    let bad = secret_file("sasl.password hunter2\n");
    let e = format!("{:#}", load(None, &[("ORDERS_KAFKA_PROPERTIES_FILE", bad.to_str().unwrap())]).unwrap_err());
    assert!(e.ends_with(": line 1: expected name=value") && !e.contains("hunter2"), "{e}");
}

#[test]
fn properties_the_service_sets_are_refused() {
    assert_eq!(
        err("[kafka.properties]\n\"enable.auto.commit\" = true\n"),
        "key `kafka.properties`: `enable.auto.commit` is set by the service: offsets are committed only after \
         the database commit"
    );
    assert_eq!(
        err("[kafka.properties]\n\"group.id\" = \"g\"\n"),
        "key `kafka.properties`: `group.id` is set by kafka.group_id"
    );
    let c = Config::parse(
        "[kafka.properties]\n\"socket.timeout.ms\" = 30000\n\"enable.ssl.certificate.verification\" = false\n",
    )
    .unwrap();
    assert_eq!(c.kafka.properties["socket.timeout.ms"], "30000");
    assert_eq!(c.kafka.properties["enable.ssl.certificate.verification"], "false");
}

#[test]
fn sslmode_and_sslrootcert_are_read_as_libpq_reads_them() {
    let tls = |url: &str| {
        let db = Database { url: url.to_string(), ..Database::default() };
        db.target().map(|(_, tls)| tls).map_err(|e| format!("{e:#}"))
    };
    let ca = secret_file("not checked here");
    let ca = ca.to_str().unwrap();
    let mode = |url: &str| tls(url).unwrap().mode;
    assert_eq!(mode("postgres://u@h/d"), SslMode::Prefer);
    assert_eq!(mode("postgres://u@h/d?sslmode=disable"), SslMode::Disable);
    assert_eq!(mode("postgres://u@h/d?sslmode=require"), SslMode::Require);
    assert_eq!(mode(&format!("postgres://u@h/d?sslmode=require&sslrootcert={ca}")), SslMode::VerifyCa);
    assert_eq!(mode("postgres://u@h/d?sslmode=verify-ca"), SslMode::VerifyCa);
    assert_eq!(mode("postgres://u@h/d?application_name=x&sslmode=verify-full"), SslMode::VerifyFull);
    assert_eq!(mode("postgres://u@h/d?sslrootcert=system"), SslMode::VerifyFull);
    assert_eq!(
        tls(&format!("postgres://u@h/d?sslmode=verify-full&sslrootcert={ca}")).unwrap().root_cert.unwrap().to_str(),
        Some(ca)
    );
    assert_eq!(
        tls("postgres://u@h/d?sslmode=verify").unwrap_err(),
        "sslmode=\"verify\" is not one of disable, prefer, require, verify-ca, verify-full"
    );
    assert_eq!(
        tls("postgres://u@h/d?sslmode=require&sslrootcert=system").unwrap_err(),
        "sslrootcert=system needs sslmode=verify-full (or no sslmode)"
    );
    assert_eq!(
        tls("postgres://u@h/d?sslrootcert=/nonexistent.pem").unwrap_err(),
        "sslrootcert /nonexistent.pem: no such file"
    );
    assert_eq!(
        err("[database]\nurl = \"postgres://u:pw@h/d?sslmode=bogus\"\n"),
        "key `database.url`: sslmode=\"bogus\" is not one of disable, prefer, require, verify-ca, verify-full"
    );
}
