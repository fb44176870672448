//! Everything the service says to PostgreSQL: the schema migrations, the batch write of
//! orders and dead letters, and the reads behind the cache. Only this module contains SQL.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use log::{info, warn};
use parking_lot::Mutex;
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::{ToSql, Type};
use postgres::{Client, NoTls, Row, Transaction};
use sha2::{Digest, Sha256};

use crate::model::{Delivery, Encoded, Item, Message, Order, OrderSummary, Payment, Rejection, Rule};

/// The files of `sql/`, applied in this order and recorded in `schema_version`.
/// A test checks that every `sql/*.sql` file is listed here.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[(1, "0001_orders.sql", include_str!("../sql/0001_orders.sql"))];

/// Any fixed number: concurrent starts of several instances take this advisory lock so
/// that one of them applies the migrations and the others then see them applied.
const MIGRATION_LOCK: i64 = 0x6f72_6465_7273;

/// Opens one connection.
pub fn connect(url: &str, timeout: Duration) -> anyhow::Result<Client> {
    let mut config: postgres::Config = url.parse().context("parse database url")?;
    config.connect_timeout(timeout).application_name("orders-svc");
    let target = describe(&config);
    config.connect(NoTls).with_context(|| format!("connect to PostgreSQL at {target}"))
}

/// `host:port/dbname as user`, for messages; never the password.
fn describe(config: &postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => h.clone(),
        Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{host}:{port}/{} as {}",
        config.get_dbname().unwrap_or("(default)"),
        config.get_user().unwrap_or("(default)")
    )
}

/// A round trip to the server, for readiness.
pub fn ping(client: &mut Client) -> anyhow::Result<()> {
    client.simple_query("SELECT 1").context("ping PostgreSQL")?;
    Ok(())
}

/// Applies the migrations not yet recorded in `schema_version`, in one transaction.
/// Returns how many were applied; a second start applies none.
pub fn migrate(client: &mut Client) -> anyhow::Result<usize> {
    let mut tx = client.transaction().context("begin migration")?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).context("take migration lock")?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (
             version    integer     PRIMARY KEY,
             name       text        NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .context("create schema_version")?;
    let mut applied = 0;
    for &(version, name, sql) in MIGRATIONS {
        let done = tx.query_opt("SELECT 1 FROM schema_version WHERE version = $1", &[&version])?.is_some();
        if done {
            continue;
        }
        tx.batch_execute(sql).with_context(|| format!("apply migration sql/{name}"))?;
        tx.execute("INSERT INTO schema_version (version, name) VALUES ($1, $2)", &[&version, &name])?;
        info!("event=migration_applied version={version} name={name}");
        applied += 1;
    }
    tx.commit().context("commit migrations")?;
    Ok(applied)
}

/// A message kept in `rejected_messages` with why it could not become an order.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub payload_size: i64,
    pub payload_sha256: [u8; 32],
    pub rule: Rule,
    pub detail: String,
}

/// How much of a payload over the size limit is kept; its size and SHA-256 are kept too.
pub const KEPT_OF_OVERSIZE: usize = 64 * 1024;

impl DeadLetter {
    /// The dead letter for `message`. A payload of more than `max_bytes` is kept only
    /// in its first `KEPT_OF_OVERSIZE` bytes.
    pub fn new(message: &Message, rejection: Rejection, max_bytes: usize) -> DeadLetter {
        let payload = message.payload.as_deref().unwrap_or_default();
        let kept = if payload.len() > max_bytes { &payload[..KEPT_OF_OVERSIZE.min(payload.len())] } else { payload };
        DeadLetter {
            topic: message.topic.clone(),
            partition: message.partition,
            offset: message.offset,
            key: message.key.clone(),
            payload_size: payload.len() as i64,
            payload_sha256: Sha256::digest(payload).into(),
            payload: kept.to_vec(),
            rule: rejection.rule,
            // PostgreSQL text cannot hold NUL, and an error may quote the input.
            detail: rejection.detail.replace('\0', "\u{FFFD}"),
        }
    }
}

/// What a committed batch did.
#[derive(Debug, Default)]
pub struct BatchResult {
    /// Indexes into the batch's orders of those now in the database as given (new,
    /// replaced or unchanged). Of several messages for one order, only the last is here.
    pub stored: Vec<usize>,
    pub inserted: usize,
    pub replaced: usize,
    pub unchanged: usize,
    /// Dead letters written, including orders the database itself refused.
    pub dead_letters: Vec<DeadLetter>,
}

/// Writes one batch in one transaction: every order (new ones inserted, changed ones
/// replaced, identical ones left alone) and every dead letter. When the database refuses
/// the data of one order (a constraint, a byte it cannot store), the batch is written
/// again with each order under its own savepoint, and only the refused ones become dead
/// letters. Any other error is returned, nothing is committed, and the caller retries.
pub fn write_batch(
    client: &mut Client,
    orders: &[(&Message, Encoded)],
    dead: &[DeadLetter],
) -> anyhow::Result<BatchResult> {
    // A later message for the same order wins over an earlier one in the same batch.
    let mut latest: HashMap<&str, usize> = HashMap::with_capacity(orders.len());
    for (i, (_, encoded)) in orders.iter().enumerate() {
        latest.insert(encoded.order.order_uid.as_str(), i);
    }
    let mut keep: Vec<usize> = latest.into_values().collect();
    keep.sort_unstable();
    let superseded = orders.len() - keep.len();

    let mut tx = client.transaction().context("begin batch")?;
    let all: Vec<&Encoded> = keep.iter().map(|&i| &orders[i].1).collect();
    let mut result = match write_orders(&mut tx, &all) {
        Ok(counts) => BatchResult { stored: keep, dead_letters: dead.to_vec(), ..counts },
        Err(e) if is_data_error(&e) => {
            warn!("event=batch_refused reason={:?} action=retry_each_order_alone", db_message(&e));
            drop(tx);
            tx = client.transaction().context("begin batch")?;
            write_one_by_one(&mut tx, orders, keep, dead)?
        }
        Err(e) => return Err(e).context("write orders"),
    };
    result.unchanged += superseded;
    insert_dead_letters(&mut tx, &result.dead_letters).context("write dead letters")?;
    tx.commit().context("commit batch")?;
    Ok(result)
}

fn write_one_by_one(
    tx: &mut Transaction<'_>,
    orders: &[(&Message, Encoded)],
    keep: Vec<usize>,
    dead: &[DeadLetter],
) -> anyhow::Result<BatchResult> {
    let mut result = BatchResult { dead_letters: dead.to_vec(), ..BatchResult::default() };
    for i in keep {
        let (message, encoded) = &orders[i];
        let order = &encoded.order;
        let mut savepoint = tx.transaction().context("savepoint")?;
        match write_orders(&mut savepoint, &[encoded]) {
            Ok(counts) => {
                savepoint.commit().context("release savepoint")?;
                result.inserted += counts.inserted;
                result.replaced += counts.replaced;
                result.unchanged += counts.unchanged;
                result.stored.push(i);
            }
            Err(e) if is_data_error(&e) => {
                drop(savepoint);
                let detail = db_message(&e);
                warn!(
                    "event=order_refused_by_database topic={} partition={} offset={} order_uid={} reason={detail:?}",
                    message.topic, message.partition, message.offset, order.order_uid
                );
                // The order was decoded, so its message is within the size limit.
                result.dead_letters.push(DeadLetter::new(message, Rejection::new(Rule::Database, detail), usize::MAX));
            }
            Err(e) => return Err(e).context("write order"),
        }
    }
    Ok(result)
}

/// Inserts new orders and replaces changed ones. Returns the counts, with `stored` empty.
fn write_orders(tx: &mut Transaction<'_>, orders: &[&Encoded]) -> Result<BatchResult, postgres::Error> {
    let mut counts = BatchResult::default();
    if orders.is_empty() {
        return Ok(counts);
    }
    let uids: Vec<&str> = orders.iter().map(|e| e.order.order_uid.as_str()).collect();
    let existing: HashMap<String, Vec<u8>> = tx
        .query("SELECT order_uid, content_sha256 FROM orders WHERE order_uid = ANY($1)", &[&uids])?
        .into_iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let mut to_write = Vec::with_capacity(orders.len());
    let mut to_replace = Vec::new();
    for &encoded in orders {
        let order = &encoded.order;
        match existing.get(&order.order_uid) {
            Some(old) if old.as_slice() == encoded.sha256 => counts.unchanged += 1,
            Some(_) => {
                info!("event=order_replaced order_uid={}", order.order_uid);
                to_replace.push(order.order_uid.as_str());
                to_write.push((order, encoded.sha256));
            }
            None => to_write.push((order, encoded.sha256)),
        }
    }
    counts.replaced = to_replace.len();
    counts.inserted = to_write.len() - to_replace.len();
    if !to_replace.is_empty() {
        // Deliveries, payments and items go with their order (ON DELETE CASCADE).
        tx.execute("DELETE FROM orders WHERE order_uid = ANY($1)", &[&to_replace])?;
    }
    if !to_write.is_empty() {
        copy_orders(tx, &to_write)?;
    }
    Ok(counts)
}

/// One binary COPY per table: the fastest way into PostgreSQL short of a bulk load.
fn copy_orders(tx: &mut Transaction<'_>, orders: &[(&Order, [u8; 32])]) -> Result<(), postgres::Error> {
    let sink = tx.copy_in(
        "COPY orders (order_uid, track_number, entry, locale, internal_signature, customer_id, \
         delivery_service, shardkey, sm_id, date_created, oof_shard, content_sha256) FROM STDIN BINARY",
    )?;
    let types = [
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::INT8,
        Type::TIMESTAMPTZ,
        Type::TEXT,
        Type::BYTEA,
    ];
    let mut w = BinaryCopyInWriter::new(sink, &types);
    for (o, fingerprint) in orders {
        let fingerprint: &[u8] = fingerprint;
        w.write(&[
            &o.order_uid,
            &o.track_number,
            &o.entry,
            &o.locale,
            &o.internal_signature,
            &o.customer_id,
            &o.delivery_service,
            &o.shardkey,
            &o.sm_id,
            &o.date_created,
            &o.oof_shard,
            &fingerprint,
        ])?;
    }
    w.finish()?;

    let sink =
        tx.copy_in("COPY deliveries (order_uid, name, phone, zip, city, address, region, email) FROM STDIN BINARY")?;
    let mut w = BinaryCopyInWriter::new(sink, &[Type::TEXT; 8]);
    for (o, _) in orders {
        let d = &o.delivery;
        w.write(&[&o.order_uid, &d.name, &d.phone, &d.zip, &d.city, &d.address, &d.region, &d.email])?;
    }
    w.finish()?;

    let sink = tx.copy_in(
        "COPY payments (order_uid, transaction, request_id, currency, provider, amount, payment_dt, bank, \
         delivery_cost, goods_total, custom_fee) FROM STDIN BINARY",
    )?;
    let types = [
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::INT8,
        Type::INT8,
        Type::TEXT,
        Type::INT8,
        Type::INT8,
        Type::INT8,
    ];
    let mut w = BinaryCopyInWriter::new(sink, &types);
    for (o, _) in orders {
        let p = &o.payment;
        w.write(&[
            &o.order_uid,
            &p.transaction,
            &p.request_id,
            &p.currency,
            &p.provider,
            &p.amount,
            &p.payment_dt,
            &p.bank,
            &p.delivery_cost,
            &p.goods_total,
            &p.custom_fee,
        ])?;
    }
    w.finish()?;

    let sink = tx.copy_in(
        "COPY order_items (order_uid, position, chrt_id, track_number, price, rid, name, sale, size, \
         total_price, nm_id, brand, status) FROM STDIN BINARY",
    )?;
    let types = [
        Type::TEXT,
        Type::INT4,
        Type::INT8,
        Type::TEXT,
        Type::INT8,
        Type::TEXT,
        Type::TEXT,
        Type::INT4,
        Type::TEXT,
        Type::INT8,
        Type::INT8,
        Type::TEXT,
        Type::INT4,
    ];
    let mut w = BinaryCopyInWriter::new(sink, &types);
    for (o, _) in orders {
        for (position, i) in o.items.iter().enumerate() {
            let position = position as i32;
            w.write(&[
                &o.order_uid,
                &position,
                &i.chrt_id,
                &i.track_number,
                &i.price,
                &i.rid,
                &i.name,
                &i.sale,
                &i.size,
                &i.total_price,
                &i.nm_id,
                &i.brand,
                &i.status,
            ])?;
        }
    }
    w.finish()?;
    Ok(())
}

/// A redelivered dead letter hits the (topic, partition, offset) key and is not stored twice.
fn insert_dead_letters(tx: &mut Transaction<'_>, dead: &[DeadLetter]) -> Result<(), postgres::Error> {
    if dead.is_empty() {
        return Ok(());
    }
    let topics: Vec<&str> = dead.iter().map(|d| d.topic.as_str()).collect();
    let partitions: Vec<i32> = dead.iter().map(|d| d.partition).collect();
    let offsets: Vec<i64> = dead.iter().map(|d| d.offset).collect();
    let keys: Vec<Option<&[u8]>> = dead.iter().map(|d| d.key.as_deref()).collect();
    let payloads: Vec<&[u8]> = dead.iter().map(|d| d.payload.as_slice()).collect();
    let sizes: Vec<i64> = dead.iter().map(|d| d.payload_size).collect();
    let hashes: Vec<&[u8]> = dead.iter().map(|d| d.payload_sha256.as_slice()).collect();
    let rules: Vec<&str> = dead.iter().map(|d| d.rule.as_str()).collect();
    let details: Vec<&str> = dead.iter().map(|d| d.detail.as_str()).collect();
    let params: [&(dyn ToSql + Sync); 9] =
        [&topics, &partitions, &offsets, &keys, &payloads, &sizes, &hashes, &rules, &details];
    tx.execute(
        "INSERT INTO rejected_messages
             (topic, partition, \"offset\", message_key, payload, payload_size, payload_sha256, rule, detail)
         SELECT * FROM UNNEST($1::text[], $2::int4[], $3::int8[], $4::bytea[], $5::bytea[], $6::int8[],
                              $7::bytea[], $8::text[], $9::text[])
         ON CONFLICT (topic, partition, \"offset\") DO NOTHING",
        &params,
    )?;
    Ok(())
}

/// Data errors (class 22) and constraint violations (class 23) are about the rows, not
/// the connection: retrying the same rows would fail the same way.
fn is_data_error(e: &postgres::Error) -> bool {
    e.code().is_some_and(|c| c.code().starts_with("22") || c.code().starts_with("23"))
}

fn db_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// A row of `rejected_messages`: the dead letter, its id, and when.
#[derive(Debug, Clone)]
pub struct StoredDeadLetter {
    pub id: i64,
    pub letter: DeadLetter,
    pub rejected_at: time::OffsetDateTime,
    pub replayed_at: Option<time::OffsetDateTime>,
}

const DEAD_LETTER_COLUMNS: &str = "id, topic, partition, \"offset\", message_key, payload, payload_size, \
     payload_sha256, rule, detail, rejected_at, replayed_at FROM rejected_messages";

/// A row of `rejected_messages`. A rule name this version does not know is an error:
/// the row was written by a newer version, and guessing its meaning could mislead.
fn dead_letter_from_row(row: &Row) -> anyhow::Result<StoredDeadLetter> {
    let sha256: Vec<u8> = row.get(7);
    let id: i64 = row.get(0);
    let rule: &str = row.get(8);
    let rule = Rule::from_name(rule).with_context(|| format!("dead letter {id} names an unknown rule {rule:?}"))?;
    Ok(StoredDeadLetter {
        id,
        letter: DeadLetter {
            topic: row.get(1),
            partition: row.get(2),
            offset: row.get(3),
            key: row.get(4),
            payload: row.get(5),
            payload_size: row.get(6),
            // Written from a SHA-256 digest; another length would be a corrupt row.
            payload_sha256: sha256.try_into().unwrap_or([0; 32]),
            rule,
            detail: row.get(9),
        },
        rejected_at: row.get(10),
        replayed_at: row.get(11),
    })
}

/// The newest `limit` dead letters, newest first.
pub fn dead_letters(client: &mut Client, limit: i64) -> anyhow::Result<Vec<StoredDeadLetter>> {
    let rows = client
        .query(&format!("SELECT {DEAD_LETTER_COLUMNS} ORDER BY id DESC LIMIT $1"), &[&limit])
        .context("read dead letters")?;
    rows.iter().map(dead_letter_from_row).collect()
}

pub fn dead_letter(client: &mut Client, id: i64) -> anyhow::Result<Option<StoredDeadLetter>> {
    let row = client
        .query_opt(&format!("SELECT {DEAD_LETTER_COLUMNS} WHERE id = $1"), &[&id])
        .with_context(|| format!("read dead letter {id}"))?;
    row.as_ref().map(dead_letter_from_row).transpose()
}

/// Ids of the dead letters not replayed yet, oldest first.
pub fn dead_letters_to_replay(client: &mut Client) -> anyhow::Result<Vec<i64>> {
    let rows = client
        .query("SELECT id FROM rejected_messages WHERE replayed_at IS NULL ORDER BY id", &[])
        .context("read dead letters")?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// What replaying one dead letter did.
#[derive(Debug, PartialEq, Eq)]
pub enum Replay {
    /// It passes now and is stored as this order; the dead letter is marked replayed.
    Stored(String),
    /// It still breaks a rule; nothing changed.
    StillRejected(Rejection),
    /// Only the first part of it was kept (it was over the size limit): it cannot pass.
    Truncated,
    AlreadyReplayed,
    NotFound,
}

/// Runs a dead letter's payload through `decode` again and, if it passes, stores the
/// order and marks the dead letter replayed, in one transaction.
pub fn replay(
    client: &mut Client,
    id: i64,
    decode: impl FnOnce(&[u8]) -> Result<Order, Rejection>,
) -> anyhow::Result<Replay> {
    let mut tx = client.transaction().context("begin replay")?;
    let row = tx
        .query_opt(&format!("SELECT {DEAD_LETTER_COLUMNS} WHERE id = $1 FOR UPDATE"), &[&id])
        .with_context(|| format!("read dead letter {id}"))?;
    let Some(stored) = row.as_ref().map(dead_letter_from_row).transpose()? else {
        return Ok(Replay::NotFound);
    };
    if stored.replayed_at.is_some() {
        return Ok(Replay::AlreadyReplayed);
    }
    let dead = &stored.letter;
    if dead.payload.len() as i64 != dead.payload_size {
        return Ok(Replay::Truncated);
    }
    let encoded = match decode(&dead.payload) {
        Ok(order) => order.encode(),
        Err(rejection) => return Ok(Replay::StillRejected(rejection)),
    };
    let uid = encoded.order.order_uid.clone();
    write_orders(&mut tx, &[&encoded]).with_context(|| format!("store order {uid} of dead letter {id}"))?;
    tx.execute("UPDATE rejected_messages SET replayed_at = now() WHERE id = $1", &[&id])?;
    tx.commit().context("commit replay")?;
    Ok(Replay::Stored(uid))
}

const ORDER_COLUMNS: &str = "o.order_uid, o.track_number, o.entry, o.locale, o.internal_signature, \
     o.customer_id, o.delivery_service, o.shardkey, o.sm_id, o.date_created, o.oof_shard, \
     d.name, d.phone, d.zip, d.city, d.address, d.region, d.email, \
     p.transaction, p.request_id, p.currency, p.provider, p.amount, p.payment_dt, p.bank, \
     p.delivery_cost, p.goods_total, p.custom_fee \
     FROM orders o JOIN deliveries d ON d.order_uid = o.order_uid JOIN payments p ON p.order_uid = o.order_uid";

/// The `limit` most recently ingested orders, newest first, in two queries.
pub fn recent_orders(client: &mut Client, limit: usize) -> anyhow::Result<Vec<Order>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = client
        .query(&format!("SELECT {ORDER_COLUMNS} ORDER BY o.ingested_at DESC, o.order_uid LIMIT $1"), &[&limit])
        .context("read recent orders")?;
    with_items(client, rows)
}

/// The `limit` most recently ingested orders, in brief, newest first.
pub fn recent_summaries(client: &mut Client, limit: i64) -> anyhow::Result<Vec<OrderSummary>> {
    let rows = client
        .query(
            "SELECT o.order_uid, o.date_created, p.amount, p.currency, o.ingested_at,
                    (SELECT count(*) FROM order_items i WHERE i.order_uid = o.order_uid)
             FROM orders o JOIN payments p ON p.order_uid = o.order_uid
             ORDER BY o.ingested_at DESC, o.order_uid LIMIT $1",
            &[&limit],
        )
        .context("read recent orders")?;
    Ok(rows
        .iter()
        .map(|r| OrderSummary {
            order_uid: r.get(0),
            date_created: r.get(1),
            amount: r.get(2),
            currency: r.get(3),
            ingested_at: r.get(4),
            items: r.get(5),
        })
        .collect())
}

/// One order by id, or None.
pub fn order(client: &mut Client, uid: &str) -> anyhow::Result<Option<Order>> {
    let rows = client
        .query(&format!("SELECT {ORDER_COLUMNS} WHERE o.order_uid = $1"), &[&uid])
        .with_context(|| format!("read order {uid}"))?;
    Ok(with_items(client, rows)?.pop())
}

/// Builds orders from their head rows and one query for all their items.
fn with_items(client: &mut Client, rows: Vec<Row>) -> anyhow::Result<Vec<Order>> {
    let mut orders: Vec<Order> = rows.iter().map(order_from_row).collect();
    if orders.is_empty() {
        return Ok(orders);
    }
    let index: HashMap<String, usize> = orders.iter().enumerate().map(|(i, o)| (o.order_uid.clone(), i)).collect();
    let uids: Vec<&str> = orders.iter().map(|o| o.order_uid.as_str()).collect();
    let items = client
        .query(
            "SELECT order_uid, chrt_id, track_number, price, rid, name, sale, size, total_price, nm_id, brand, status
             FROM order_items WHERE order_uid = ANY($1) ORDER BY order_uid, position",
            &[&uids],
        )
        .context("read order items")?;
    for row in items {
        let uid: &str = row.get(0);
        let item = Item {
            chrt_id: row.get(1),
            track_number: row.get(2),
            price: row.get(3),
            rid: row.get(4),
            name: row.get(5),
            sale: row.get(6),
            size: row.get(7),
            total_price: row.get(8),
            nm_id: row.get(9),
            brand: row.get(10),
            status: row.get(11),
        };
        orders[index[uid]].items.push(item);
    }
    Ok(orders)
}

fn order_from_row(row: &Row) -> Order {
    Order {
        order_uid: row.get(0),
        track_number: row.get(1),
        entry: row.get(2),
        locale: row.get(3),
        internal_signature: row.get(4),
        customer_id: row.get(5),
        delivery_service: row.get(6),
        shardkey: row.get(7),
        sm_id: row.get(8),
        date_created: row.get(9),
        oof_shard: row.get(10),
        delivery: Delivery {
            name: row.get(11),
            phone: row.get(12),
            zip: row.get(13),
            city: row.get(14),
            address: row.get(15),
            region: row.get(16),
            email: row.get(17),
        },
        payment: Payment {
            transaction: row.get(18),
            request_id: row.get(19),
            currency: row.get(20),
            provider: row.get(21),
            amount: row.get(22),
            payment_dt: row.get(23),
            bank: row.get(24),
            delivery_cost: row.get(25),
            goods_total: row.get(26),
            custom_fee: row.get(27),
        },
        items: Vec::new(),
    }
}

/// Connections for the read path. Idle connections are reused; a broken one is dropped
/// and a new one opened on the next request.
pub struct Pool {
    url: String,
    timeout: Duration,
    max_idle: usize,
    idle: Mutex<Vec<Client>>,
}

impl Pool {
    pub fn new(url: &str, timeout: Duration, max_idle: usize) -> Pool {
        Pool { url: url.to_string(), timeout, max_idle, idle: Mutex::new(Vec::new()) }
    }

    /// Runs `f` with a connection. The pool's lock is held only to take or return one.
    pub fn with<T>(&self, f: impl FnOnce(&mut Client) -> anyhow::Result<T>) -> anyhow::Result<T> {
        let idle = self.idle.lock().pop();
        let mut client = match idle {
            Some(c) if !c.is_closed() => c,
            _ => connect(&self.url, self.timeout)?,
        };
        let result = f(&mut client);
        if !client.is_closed() {
            let mut idle = self.idle.lock();
            if idle.len() < self.max_idle {
                idle.push(client);
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sql_file_is_a_listed_migration_in_order() {
        let mut files: Vec<String> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/sql"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        let listed: Vec<&str> = MIGRATIONS.iter().map(|m| m.1).collect();
        assert_eq!(files, listed);
        let versions: Vec<i32> = MIGRATIONS.iter().map(|m| m.0).collect();
        assert_eq!(versions, (1..=MIGRATIONS.len() as i32).collect::<Vec<_>>());
    }

    #[test]
    fn dead_letter_keeps_payload_size_and_hash_and_strips_nul_from_detail() {
        let message = Message {
            topic: "orders".into(),
            partition: 2,
            offset: 7,
            key: Some(b"k".to_vec()),
            payload: Some(b"abc".to_vec()),
        };
        let d = DeadLetter::new(&message, Rejection::new(Rule::Json, "bad \0 byte"), 3);
        assert_eq!(d.payload, b"abc");
        assert_eq!(d.payload_size, 3);
        assert_eq!(
            d.payload_sha256[..4],
            [0xba, 0x78, 0x16, 0xbf] // SHA-256("abc") starts ba7816bf
        );
        assert_eq!(d.detail, "bad \u{FFFD} byte");
        assert_eq!((d.topic.as_str(), d.partition, d.offset), ("orders", 2, 7));
    }
}
