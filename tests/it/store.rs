//! The batch write against PostgreSQL alone: the compare-and-set on the stored offsets,
//! versions that only go forward, the consumer's connection and its prepared statements,
//! poison orders and dead letters isolated by splitting, dead letters keyed by position
//! and payload, and the change notifications a commit sends.

use orders_svc::model::{Encoded, Message, Order, Rejection, Rule};
use orders_svc::store::{self, BatchResult, Claim, DeadLetter, Replay, Written};
use orders_svc::tools::generate::Generator;

use crate::support::*;

pub(crate) fn at(partition: i32, offset: i64) -> Message {
    Message { topic: "orders".into(), partition, offset, key: None, payload: Some(b"{}".to_vec()) }
}

pub(crate) fn migrated() -> TestDb {
    let db = TestDb::new();
    store::migrate(&mut db.client()).unwrap();
    db
}

/// Writes `orders`, each from its message, with no claims; the batch must commit.
pub(crate) fn write(db: &TestDb, orders: &[(&Message, &Order)]) -> BatchResult {
    let batch: Vec<(&Message, Encoded)> = orders.iter().map(|(m, o)| (*m, (*o).clone().encode())).collect();
    store::write_batch(&mut db.client(), "g", &[], &batch, &[]).unwrap().committed().expect("committed")
}

fn stored_name(db: &TestDb, uid: &str) -> String {
    db.client().query_one("SELECT name FROM deliveries WHERE order_uid = $1", &[&uid]).unwrap().get("name")
}

fn named(order: &Order, name: &str) -> Order {
    let mut o = order.clone();
    o.delivery.name = name.into();
    o
}

/// A trigger before each insert into `table` that runs `body` (plpgsql raising for the
/// rows the test wants refused).
fn refuse_on_insert(db: &TestDb, table: &str, body: &str) {
    db.client()
        .batch_execute(&format!(
            "CREATE FUNCTION refuse_{table}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN {body} RETURN NEW; END $$;
             CREATE TRIGGER refuse BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION refuse_{table}();"
        ))
        .unwrap();
}

fn claim(expected: Option<i64>, next: i64) -> Claim {
    Claim { topic: "orders".into(), partition: 0, expected, next, messages: next - expected.unwrap_or(0) }
}

/// A message replaces an order only from a later offset of the same partition; from
/// another partition the last one written wins; a replayed dead letter from an earlier
/// offset leaves the newer order alone.
#[test]
fn versions_only_go_forward_within_a_partition() {
    let db = migrated();
    let x = Generator::new(1, 2).order();
    let uid = x.order_uid.as_str();

    let r = write(&db, &[(&at(0, 5), &named(&x, "five"))]);
    assert_eq!((r.inserted, r.stored.len()), (1, 1));
    let r = write(&db, &[(&at(0, 3), &named(&x, "three"))]);
    assert_eq!((r.stale, r.replaced, r.stored.len()), (1, 0, 0));
    assert_eq!(stored_name(&db, uid), "five");
    let r = write(&db, &[(&at(0, 5), &named(&x, "five"))]);
    assert_eq!((r.stale, r.unchanged), (1, 0));
    let r = write(&db, &[(&at(0, 7), &named(&x, "seven"))]);
    assert_eq!(r.replaced, 1);
    assert_eq!(stored_name(&db, uid), "seven");
    // Two messages for it in one batch: the later one.
    let r = write(&db, &[(&at(0, 8), &named(&x, "eight")), (&at(0, 9), &named(&x, "nine"))]);
    assert_eq!((r.replaced, r.unchanged, r.stored), (1, 1, vec![1]));
    assert_eq!(stored_name(&db, uid), "nine");
    // The same content from a later offset: unchanged, but its source moves on.
    let r = write(&db, &[(&at(0, 12), &named(&x, "nine"))]);
    assert_eq!(r.unchanged, 1);
    let r = write(&db, &[(&at(0, 11), &named(&x, "eleven"))]);
    assert_eq!(r.stale, 1);
    assert_eq!(stored_name(&db, uid), "nine");
    assert_eq!(db.count("SELECT source_offset FROM orders"), 12);

    // A dead letter from offset 10 that passes now is older than offset 12: superseded.
    let payload = named(&x, "ten").to_json();
    let message = Message { payload: Some(payload), ..at(0, 10) };
    let dead = DeadLetter::new(&message, Rejection::new(Rule::Amount, "then"), usize::MAX);
    let batch: Vec<(&Message, Encoded)> = Vec::new();
    store::write_batch(&mut db.client(), "g", &[], &batch, &[dead]).unwrap().committed().unwrap();
    let decode = |p: &[u8]| Ok(serde_json::from_slice::<Order>(p).unwrap());
    assert_eq!(store::replay(&mut db.client(), 1, decode).unwrap(), Replay::Superseded(x.order_uid.clone()));
    assert_eq!(stored_name(&db, uid), "nine");

    // From another partition, the last one written wins, whatever its offset.
    let r = write(&db, &[(&at(1, 0), &named(&x, "elsewhere"))]);
    assert_eq!(r.replaced, 1);
    assert_eq!(stored_name(&db, uid), "elsewhere");
}

/// The stored offset advances only from where the writer started; a writer that started
/// elsewhere, or expects no row where there is one, writes nothing at all.
#[test]
fn a_batch_commits_only_if_the_stored_offset_is_where_it_started() {
    let db = migrated();
    let mut generator = Generator::new(2, 1);
    let (a, b) = (generator.order(), generator.order());
    let write_claimed = |claims: &[Claim], order: &Order| {
        let m = at(0, claims[0].next - 1);
        store::write_batch(&mut db.client(), "g", claims, &[(&m, order.clone().encode())], &[]).unwrap()
    };
    assert!(matches!(write_claimed(&[claim(None, 5)], &a), Written::Committed(_)));
    assert!(matches!(write_claimed(&[claim(None, 9)], &b), Written::Fenced(f) if f == [("orders".to_string(), 0)]));
    assert!(matches!(write_claimed(&[claim(Some(4), 9)], &b), Written::Fenced(_)));
    assert_eq!(db.count("SELECT count(*) FROM orders"), 1);
    assert!(matches!(write_claimed(&[claim(Some(5), 9)], &b), Written::Committed(_)));
    let row = db.client().query_one("SELECT next_offset, messages FROM consumer_offsets", &[]).unwrap();
    assert_eq!((row.get::<_, i64>("next_offset"), row.get::<_, i64>("messages")), (9, 9));
    let stored = store::stored_offsets(&mut db.client(), "g", &[("orders".into(), 0), ("orders".into(), 1)]).unwrap();
    assert_eq!(stored.into_iter().collect::<Vec<_>>(), [(("orders".to_string(), 0), 9)]);
}

/// Every table's rows of an order, as JSON, without the time it was stored.
fn rows_of_every_table(db: &TestDb) -> Vec<String> {
    let tables = ["orders", "deliveries", "payments", "order_items"];
    let sql = |t: &str| format!("SELECT (to_jsonb(t) - 'ingested_at')::text FROM {t} t ORDER BY 1");
    tables.iter().flat_map(|t| db.client().query(&sql(t), &[]).unwrap()).map(|r| r.get(0)).collect()
}

/// The ids of the orders notified on `listening` within half a second.
fn notified(listening: &mut postgres::Client) -> Vec<String> {
    use postgres::fallible_iterator::FallibleIterator;
    let mut notifications = listening.notifications();
    let mut it = notifications.timeout_iter(std::time::Duration::from_millis(500));
    let mut uids = Vec::new();
    while let Some(n) = it.next().unwrap() {
        uids.extend(store::parse_payload(n.payload()).into_iter().map(|c| c.uid));
    }
    uids
}

/// A batch of up to 64 orders is written in one statement, a larger one by COPY: both
/// store the same rows, and both notify.
#[test]
fn a_few_orders_are_stored_as_many_are() {
    let mut generator = Generator::new(4, 3);
    let orders: Vec<Order> = (0..65).map(|_| generator.order()).collect();
    let uids: Vec<String> = orders.iter().map(|o| o.order_uid.clone()).collect();
    let messages: Vec<Message> = (0..65).map(|i| at(0, i)).collect();
    let pairs: Vec<(&Message, &Order)> = messages.iter().zip(&orders).collect();
    let (by_copy, by_statement) = (migrated(), migrated());
    let (mut copy_listens, mut statement_listens) = (by_copy.client(), by_statement.client());
    for client in [&mut copy_listens, &mut statement_listens] {
        client.batch_execute(&format!("LISTEN {}", store::CHANNEL)).unwrap();
    }
    assert_eq!(write(&by_copy, &pairs).inserted, 65);
    for few in pairs.chunks(5) {
        assert_eq!(write(&by_statement, few).inserted, few.len());
    }
    let rows = rows_of_every_table(&by_copy);
    assert_eq!(by_copy.count("SELECT count(*) FROM order_items"), 140);
    assert_eq!(rows.len(), 65 * 3 + 140);
    assert_eq!(rows_of_every_table(&by_statement), rows);
    assert_eq!(notified(&mut copy_listens), uids);
    assert_eq!(notified(&mut statement_listens), uids);
}

/// How many sequential scans of `orders` the server has counted, once `writer`'s own
/// counts have reached it.
fn sequential_scans_of_orders(db: &TestDb, writer: &mut store::Conn) -> i64 {
    writer.batch_execute("SELECT pg_stat_force_next_flush()").unwrap();
    db.count("SELECT seq_scan FROM pg_stat_user_tables WHERE relname = 'orders'")
}

/// A statement prepared once is planned for any parameters after its fifth run, and that
/// plan is kept. Made while `orders` was small, it would scan the whole table for each
/// batch however large the table grew, until the server analyzed it again. The read of
/// the stored versions is planned for its own ids at every batch: by the primary key.
#[test]
fn the_stored_versions_are_read_by_their_key_however_small_the_table_was() {
    let db = migrated();
    let mut generator = Generator::new(6, 2);
    let mut writer = store::Conn::from(db.client());
    let mut next = 0;
    let mut write_on = |writer: &mut store::Conn, orders: Vec<Order>| {
        let messages: Vec<Message> = (0..orders.len() as i64).map(|i| at(0, next + i)).collect();
        let batch: Vec<(&Message, Encoded)> = messages.iter().zip(orders).map(|(m, o)| (m, o.encode())).collect();
        let n = batch.len() as i64;
        let claim = Claim {
            topic: "orders".into(),
            partition: 0,
            expected: (next > 0).then_some(next),
            next: next + n,
            messages: n,
        };
        next += n;
        store::write_batch_on(writer, "g", &[claim], &batch, &[]).unwrap().committed().expect("committed").inserted
    };
    for _ in 0..8 {
        assert_eq!(write_on(&mut writer, vec![generator.order(), generator.order()]), 2);
    }
    let many: Vec<Order> = (0..5000).map(|_| generator.order()).collect();
    let messages: Vec<Message> = (0..5000).map(|i| at(1, i)).collect();
    assert_eq!(write(&db, &messages.iter().zip(&many).collect::<Vec<_>>()).inserted, 5000);

    let before = sequential_scans_of_orders(&db, &mut writer);
    for _ in 0..3 {
        assert_eq!(write_on(&mut writer, vec![generator.order(), generator.order()]), 2);
    }
    assert_eq!(sequential_scans_of_orders(&db, &mut writer), before);
    assert_eq!(db.count("SELECT count(*) FROM orders"), 5022);
}

/// The consumer's connection (`write_batch_on`) prepares a batch's statements once and
/// writes every batch with them: claims (first and later), new and replaced orders, their
/// notifications. Each statement sent as text would be parsed again for every batch. If
/// they are gone (a pooler, a `DISCARD`), the batch fails and the next one prepares them
/// again.
#[test]
fn a_writer_prepares_the_statements_of_a_batch_once() {
    let db = migrated();
    let mut generator = Generator::new(4, 2);
    let (a, b) = (generator.order(), generator.order());
    let mut writer = store::Conn::from(db.client());
    let prepared = |writer: &mut store::Conn| -> Vec<String> {
        // The simple protocol prepares nothing itself.
        let rows = writer.simple_query("SELECT statement FROM pg_prepared_statements ORDER BY 1").unwrap();
        rows.iter()
            .filter_map(|m| match m {
                postgres::SimpleQueryMessage::Row(row) => row.get(0).map(|s| s.split_whitespace().take(3).collect()),
                _ => None,
            })
            .map(|words: Vec<&str>| words.join(" "))
            .collect()
    };
    assert_eq!(prepared(&mut writer), Vec::<String>::new());
    let write = |writer: &mut store::Conn, claim: Claim, order: &Order| {
        let m = at(0, claim.next - 1);
        store::write_batch_on(writer, "g", &[claim], &[(&m, order.clone().encode())], &[])
    };
    assert_eq!(write(&mut writer, claim(None, 3), &a).unwrap().committed().expect("committed").stored, [0]);
    let written = prepared(&mut writer);
    assert_eq!(
        written,
        [
            "COPY deliveries (order_uid,",
            "COPY order_items (order_uid,",
            "COPY orders (order_uid,",
            "COPY payments (order_uid,",
            "INSERT INTO consumer_offsets",
            "SELECT pg_notify($1, p)",
            "UPDATE consumer_offsets SET",
            "WITH orders_rows AS"
        ]
    );
    assert_eq!(write(&mut writer, claim(Some(3), 5), &b).unwrap().committed().expect("committed").stored, [0]);
    assert_eq!(prepared(&mut writer), written);

    writer.batch_execute("DEALLOCATE ALL").unwrap();
    let second = named(&a, "Second");
    let error = write(&mut writer, claim(Some(5), 6), &second).unwrap_err();
    assert!(format!("{error:#}").contains("does not exist"), "{error:#}");
    assert_eq!(write(&mut writer, claim(Some(5), 6), &second).unwrap().committed().expect("committed").stored, [0]);
    assert_eq!(prepared(&mut writer), written);
    assert_eq!(db.count("SELECT count(*) FROM orders"), 2);
    assert_eq!(stored_name(&db, &a.order_uid), "Second");
    let stored = store::stored_offsets(&mut writer, "g", &[("orders".into(), 0)]).unwrap();
    assert_eq!(stored.into_iter().collect::<Vec<_>>(), [(("orders".to_string(), 0), 6)]);
}

/// Orders the database refuses for reasons other than constraints (a program limit, a
/// statement cancelled by its timeout; raised here by a trigger for two of ten orders)
/// are found by splitting the batch and kept as dead letters with the database's
/// message; the other eight are stored, in one commit, with the offset advanced.
#[test]
fn poison_orders_are_isolated_by_splitting_the_batch() {
    let db = migrated();
    refuse_poison_orders(&db);
    let mut generator = Generator::new(3, 2);
    let mut orders: Vec<Order> = (0..10).map(|_| generator.order()).collect();
    orders[2].track_number = "LIMIT".into();
    orders[7].track_number = "TIMEOUT".into();
    let messages: Vec<Message> = (0..10).map(|i| at(0, i)).collect();
    let batch: Vec<(&Message, Encoded)> = messages.iter().zip(&orders).map(|(m, o)| (m, o.clone().encode())).collect();

    let written = store::write_batch(&mut db.client(), "g", &[claim(None, 10)], &batch, &[]).unwrap();
    let result = written.committed().expect("committed");
    assert_eq!((result.inserted, result.stored.len(), result.dead_letters.len()), (8, 8, 2));
    assert_eq!(db.count("SELECT count(*) FROM orders"), 8);
    let rows = db.client().query("SELECT \"offset\", rule, detail FROM rejected_messages ORDER BY 1", &[]).unwrap();
    let got: Vec<(i64, String, String)> =
        rows.iter().map(|r| (r.get("offset"), r.get("rule"), r.get("detail"))).collect();
    assert_eq!(
        got,
        [
            (2, "database".to_string(), "row is too big (54000)".to_string()),
            (7, "database".to_string(), "canceling statement due to statement timeout (57014)".to_string()),
        ]
    );
    assert_eq!(db.count("SELECT next_offset FROM consumer_offsets"), 10);
}

/// Makes the database refuse an order whose track number is LIMIT (a program limit) or
/// TIMEOUT (a statement cancelled by its timeout).
fn refuse_poison_orders(db: &TestDb) {
    refuse_on_insert(
        db,
        "orders",
        "IF NEW.track_number = 'LIMIT' THEN
             RAISE EXCEPTION 'row is too big' USING ERRCODE = 'program_limit_exceeded';
         ELSIF NEW.track_number = 'TIMEOUT' THEN
             RAISE EXCEPTION 'canceling statement due to statement timeout' USING ERRCODE = 'query_canceled';
         END IF;",
    );
}

/// The same in a batch whose rows go to the server in several pieces, the refused one in
/// the first.
#[test]
fn a_poison_order_early_in_a_large_batch_is_isolated() {
    let db = migrated();
    refuse_poison_orders(&db);
    let mut generator = Generator::new(5, 3);
    let mut orders: Vec<Order> = (0..3000).map(|_| generator.order()).collect();
    orders[1].track_number = "LIMIT".into();
    let messages: Vec<Message> = (0..3000).map(|i| at(0, i)).collect();
    let batch: Vec<(&Message, Encoded)> = messages.iter().zip(&orders).map(|(m, o)| (m, o.clone().encode())).collect();

    let written = store::write_batch(&mut db.client(), "g", &[claim(None, 3000)], &batch, &[]).unwrap();
    let result = written.committed().expect("committed");
    assert_eq!((result.inserted, result.dead_letters.len()), (2999, 1));
    assert_eq!(db.count("SELECT count(*) FROM orders"), 2999);
    assert_eq!(db.count("SELECT count(*) FROM rejected_messages WHERE \"offset\" = 1 AND rule = 'database'"), 1);
    assert_eq!(db.count("SELECT next_offset FROM consumer_offsets"), 3000);
}

/// A dead letter the database refuses (here a trigger, for one whose detail says so) is
/// kept without its payload, with the reason; the other dead letters are kept whole.
#[test]
fn a_dead_letter_the_database_refuses_is_kept_without_its_payload() {
    let db = migrated();
    refuse_on_insert(
        &db,
        "rejected_messages",
        "IF NEW.detail LIKE 'giant%' AND length(NEW.payload) > 0 THEN
             RAISE EXCEPTION 'payload too large' USING ERRCODE = 'program_limit_exceeded';
         END IF;",
    );
    let dead: Vec<DeadLetter> = ["small", "giant", "small too"]
        .iter()
        .enumerate()
        .map(|(i, detail)| DeadLetter::new(&at(0, i as i64), Rejection::new(Rule::Json, *detail), usize::MAX))
        .collect();
    let batch: Vec<(&Message, Encoded)> = Vec::new();
    let result = store::write_batch(&mut db.client(), "g", &[], &batch, &dead).unwrap().committed().unwrap();
    assert_eq!(result.dead_letters.len(), 3);
    let rows = db
        .client()
        .query(
            "SELECT \"offset\", length(payload) AS kept, payload_size, detail FROM rejected_messages ORDER BY 1",
            &[],
        )
        .unwrap();
    let got: Vec<(i64, i32, i64, String)> =
        rows.iter().map(|r| (r.get("offset"), r.get("kept"), r.get("payload_size"), r.get("detail"))).collect();
    assert_eq!(
        got,
        [
            (0, 2, 2, "small".to_string()),
            (
                1,
                0,
                2,
                "giant; the payload was not kept: the database refused it: payload too large (54000)".to_string()
            ),
            (2, 2, 2, "small too".to_string()),
        ]
    );
}

/// A redelivered bad message (same position, same payload) is one dead letter; a
/// different message at a reused position (the topic recreated) is another.
#[test]
fn dead_letters_at_a_reused_position_are_kept() {
    let db = migrated();
    let letter = |payload: &[u8]| {
        let m = Message { payload: Some(payload.to_vec()), ..at(0, 0) };
        DeadLetter::new(&m, Rejection::new(Rule::Json, "not JSON"), usize::MAX)
    };
    let batch: Vec<(&Message, Encoded)> = Vec::new();
    for payload in [&b"first"[..], b"first", b"second"] {
        store::write_batch(&mut db.client(), "g", &[], &batch, &[letter(payload)]).unwrap();
    }
    let rows = db.client().query("SELECT payload FROM rejected_messages ORDER BY id", &[]).unwrap();
    let payloads: Vec<Vec<u8>> = rows.iter().map(|r| r.get("payload")).collect();
    assert_eq!(payloads, [b"first".to_vec(), b"second".to_vec()]);
}

/// A committed batch notifies the orders it inserted or replaced, each with its new
/// version; unchanged and stale ones, and a fenced batch, notify nothing.
#[test]
fn committed_changes_are_notified_with_their_versions() {
    use postgres::fallible_iterator::FallibleIterator;

    let db = migrated();
    let mut listener = db.client();
    listener.batch_execute(&format!("LISTEN {}", store::CHANNEL)).unwrap();
    let mut generator = Generator::new(5, 2);
    let (a, b) = (generator.order(), generator.order());
    let mut received = || -> Vec<orders_svc::model::Change> {
        let mut notifications = listener.notifications();
        let mut it = notifications.timeout_iter(std::time::Duration::from_millis(500));
        let mut all = Vec::new();
        while let Some(n) = it.next().unwrap() {
            assert_eq!(n.channel(), store::CHANNEL);
            all.extend(store::parse_payload(n.payload()));
        }
        all
    };
    let version = |o: &Order| o.clone().encode().version();

    write(&db, &[(&at(0, 1), &a), (&at(0, 2), &b)]);
    let got = received();
    assert_eq!(
        got,
        [
            orders_svc::model::Change { uid: a.order_uid.clone(), version: version(&a) },
            orders_svc::model::Change { uid: b.order_uid.clone(), version: version(&b) }
        ]
    );
    let a2 = named(&a, "two");
    write(&db, &[(&at(0, 3), &a2), (&at(0, 4), &b), (&at(0, 0), &named(&b, "stale"))]);
    assert_eq!(received(), [orders_svc::model::Change { uid: a.order_uid.clone(), version: version(&a2) }]);
    let m = at(0, 9);
    let fenced =
        store::write_batch(&mut db.client(), "g", &[claim(Some(7), 10)], &[(&m, named(&a, "x").encode())], &[]);
    assert!(matches!(fenced.unwrap(), Written::Fenced(_)));
    assert_eq!(received(), []);
}
