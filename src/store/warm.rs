//! The read that fills the cache at start: every stored order, or the `limit` most
//! recently stored, at close to the speed PostgreSQL streams rows.
//!
//! An order is stored with its document, the JSON the service serves (`orders.document`):
//! the read is one `COPY … TO STDOUT BINARY` of id, document, digest and age, on this
//! thread while PostgreSQL's backend sends them from the other core; each document goes
//! into an allocation of its own, held by the cache as it is.
//!
//! Orders stored before there were documents are made from their rows, in the same
//! read-only repeatable-read snapshot. Two more COPYs, the second on another connection
//! that shares the snapshot (exported from the first), so that heads and items are of the
//! same versions: the items on the second connection, the head rows at the same time on
//! the first. The items are kept as they arrived, in one buffer indexed by order; the
//! head rows wait in chunks until the items are all there, then go, as they arrive, to
//! one thread per core, which writes each order's JSON straight from its head row and
//! item rows: no `Order` is built, field by field, only to be serialized. Neither query
//! sorts or joins by order id (PostgreSQL would have to sort or walk an index across the
//! whole table). The orders come in the tables' order, each with when it was stored, so
//! that the caller can keep the newest. Without a second connection (or a server that
//! cannot share its snapshot) the items are read first, on the one connection.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::io::{BufRead, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use anyhow::{Context, bail};
use log::{debug, info, warn};
use postgres::types::{FromSql, Type};
use postgres::{Client, IsolationLevel};
use time::OffsetDateTime;

use super::tables::{DELIVERIES, HEAD_JOIN, ORDER_ITEMS, ORDERS, PAYMENTS};
use crate::model::StoredOrder;

/// Reads the stored orders, the `limit` most recently stored if there are more (ties
/// broken by id, as the index page does), and only those stored within `max_age` if it
/// is given, and returns what `make` makes of each, in no
/// particular order. Orders with their document are read as it; the others, stored
/// before there were documents, are made from their rows: `make`, and the decoding of
/// those rows, run on as many threads as there are cores, and with `connect_items`, on a
/// second connection it opens (only then), their items are read at the same time, in the
/// same snapshot; without it (or if the connection or the shared snapshot fails), first,
/// on `client`.
pub fn stored_orders<T: Send>(
    client: &mut Client,
    connect_items: Option<&dyn Fn() -> anyhow::Result<Client>>,
    limit: usize,
    max_age: Option<std::time::Duration>,
    make: impl Fn(StoredOrder) -> T + Sync,
) -> anyhow::Result<Vec<T>> {
    let started = std::time::Instant::now();
    let mut tx = read_only(client).context("begin reading the stored orders")?;
    // COPY takes no parameters: the values in its conditions are literals.
    let mut keep = Vec::new();
    if let Some(age) = max_age {
        keep.push(format!("o.ingested_at > now() - interval '{} seconds'", age.as_secs()));
    }
    let count: i64 = tx
        .query_one(&format!("SELECT count(*) FROM orders o{}", where_all(&keep, None)), &[])
        .context("count the stored orders")?
        .get(0);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    // Past `limit`, only the orders at or after the last one to keep, in the order
    // "newest first, then by id".
    if count > limit {
        let last = tx
            .query_one(
                &format!(
                    "SELECT o.ingested_at, o.order_uid FROM orders o{} ORDER BY o.ingested_at DESC, o.order_uid \
                     OFFSET $1 LIMIT 1",
                    where_all(&keep, None)
                ),
                &[&(limit - 1)],
            )
            .context("find the oldest order to read")?;
        let at: OffsetDateTime = last.get(0);
        let at = literal(&at.format(&time::format_description::well_known::Rfc3339)?);
        let uid = literal(last.get(1));
        keep.push(format!("(o.ingested_at > {at} OR (o.ingested_at = {at} AND o.order_uid <= {uid}))"));
    }
    let to_read = count.min(limit);
    // Counted through the partial index that holds only them: none, once every order
    // has been stored since there were documents.
    let without: i64 = tx
        .query_one(&format!("SELECT count(*) FROM orders o{}", where_all(&keep, Some("o.document IS NULL"))), &[])
        .context("count the stored orders without a document")?
        .get(0);
    let mut made = Vec::new();
    if without < to_read {
        let query = format!(
            "SELECT o.order_uid, o.document, o.content_sha256, o.ingested_at FROM orders o{}",
            where_all(&keep, Some("o.document IS NOT NULL"))
        );
        read_documents(&mut tx, &query, &make, &mut made).context("read the stored orders' documents")?;
        debug!("event=warm_documents_read orders={} ms={}", made.len(), started.elapsed().as_millis());
    }
    if without > 0 {
        info!("event=warm_orders_without_document orders={without} action=make_them_from_their_rows");
        // Only the orders without one; if none has one, the tables whole, unfiltered.
        if without < to_read {
            keep.push("o.document IS NULL".to_string());
        }
        made.append(&mut built_from_rows(&mut tx, connect_items, &keep, &make, started)?);
    }
    tx.commit().context("end reading the stored orders")?;
    debug!(
        "event=warm_orders_read orders={} without_document={without} ms={}",
        made.len(),
        started.elapsed().as_millis()
    );
    Ok(made)
}

/// ` WHERE <each of conditions and then last, joined by AND>`, or nothing without any.
fn where_all(conditions: &[String], last: Option<&str>) -> String {
    let all: Vec<&str> = conditions.iter().map(String::as_str).chain(last).collect();
    if all.is_empty() { String::new() } else { format!(" WHERE {}", all.join(" AND ")) }
}

/// The orders of `query` (id, document, digest, when stored), each as `make` makes it.
fn read_documents<T>(
    tx: &mut postgres::Transaction<'_>,
    query: &str,
    make: &impl Fn(StoredOrder) -> T,
    made: &mut Vec<T>,
) -> anyhow::Result<()> {
    let mut rows = copy_out(tx, query)?;
    let mut row = Vec::new();
    while rows.next_into(&mut row)? {
        let mut f = Fields::new(&row);
        let (uid, json, sha256) = (f.text()?, f.raw()?, f.raw()?);
        let stored_at = f.int8_of(&Type::TIMESTAMPTZ)?;
        f.end()?;
        made.push(make(StoredOrder {
            uid: uid.to_string(),
            json: Arc::from(json),
            sha256: sha256.to_vec(),
            stored_at,
        }));
        row.clear();
    }
    Ok(())
}

/// The orders matching every one of `conditions` (on `o`, the orders table), made from
/// their rows: the head rows streamed on `tx`, the items beside them on a connection of
/// `connect_items`, or read first.
fn built_from_rows<T: Send>(
    tx: &mut postgres::Transaction<'_>,
    connect_items: Option<&dyn Fn() -> anyhow::Result<Client>>,
    conditions: &[String],
    make: &(impl Fn(StoredOrder) -> T + Sync),
    started: std::time::Instant,
) -> anyhow::Result<Vec<T>> {
    let filter = where_all(conditions, None);
    let join = if filter.is_empty() { "" } else { " JOIN orders o USING (order_uid)" };
    let items_query = format!("SELECT {} FROM order_items i{join}{filter}", item_columns());
    let heads_query = format!("SELECT {} FROM {HEAD_JOIN}{filter}", head_columns());

    let mut other = match connect_items.map(|connect| connect()).transpose() {
        Ok(other) => other,
        Err(e) => {
            warn!("event=warm_items_read_first reason={e:#}");
            None
        }
    };
    let beside = match &mut other {
        Some(other) => same_snapshot(tx, other).inspect_err(|e| warn!("event=warm_items_read_first reason={e:#}")).ok(),
        None => None,
    };
    let items = match beside {
        Some(items_tx) => ItemsFrom::Beside(items_tx),
        None => ItemsFrom::Read(read_items(tx, &items_query, started)?),
    };
    let state = AtomicU8::new(if matches!(items, ItemsFrom::Read(_)) { ITEMS_READ } else { READING_ITEMS });

    let mut rows = copy_out(tx, &heads_query).context("read the stored orders")?;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let (chunks, to_decode) = crossbeam_channel::bounded::<Chunk>(2 * threads);
    let made = std::thread::scope(|scope| {
        // The items (read here, beside the orders, when not read first), then the
        // workers that make the orders from them.
        let makers = scope.spawn(|| -> anyhow::Result<Vec<T>> {
            let to_decode = to_decode;
            let items = match items {
                ItemsFrom::Read(items) => items,
                ItemsFrom::Beside(mut items_tx) => {
                    let read = read_items(&mut items_tx, &items_query, started)
                        .and_then(|items| items_tx.commit().context("end reading the items").map(|()| items));
                    state.store(if read.is_ok() { ITEMS_READ } else { ITEMS_FAILED }, Ordering::Release);
                    read?
                }
            };
            std::thread::scope(|inner| {
                let workers: Vec<_> = (0..threads)
                    .map(|_| {
                        let to_decode = to_decode.clone();
                        let (items, make) = (&items, &make);
                        inner.spawn(move || -> anyhow::Result<Vec<T>> {
                            let (mut made, mut json) = (Vec::new(), Vec::new());
                            for chunk in to_decode {
                                for row in chunk.rows() {
                                    made.push(make(stored_order(row, items, &mut json)?));
                                }
                            }
                            Ok(made)
                        })
                    })
                    .collect();
                drop(to_decode);
                let mut made = Vec::new();
                for worker in workers {
                    made.append(&mut worker.join().expect("a warm-up thread panicked")?);
                }
                Ok(made)
            })
        });
        // The rows, in chunks. While the items are still coming, the chunks wait here
        // (so that PostgreSQL sends both at once); then they go to the workers as they
        // come, as fast as the workers take them. A worker or the items failing ends
        // the reading early.
        let read = (|| -> anyhow::Result<()> {
            let mut waiting: Vec<Chunk> = Vec::new();
            let mut chunk = Chunk::default();
            loop {
                let more = rows.next_into(&mut chunk.bytes)?;
                if more {
                    chunk.ends.push(chunk.bytes.len());
                    if chunk.ends.len() < CHUNK_ROWS {
                        continue;
                    }
                }
                waiting.push(std::mem::take(&mut chunk));
                match state.load(Ordering::Acquire) {
                    READING_ITEMS if more => continue,
                    ITEMS_FAILED => return Ok(()),
                    _ => {}
                }
                for chunk in waiting.drain(..) {
                    if chunks.send(chunk).is_err() {
                        return Ok(());
                    }
                }
                if !more {
                    return Ok(());
                }
            }
        })();
        drop(chunks);
        let made = makers.join().expect("the warm-up's items thread panicked");
        read.and(made)
    })?;
    drop(rows);
    Ok(made)
}

/// The items, read already, or to read in this transaction beside the orders.
enum ItemsFrom<'c> {
    Read(Items),
    Beside(postgres::Transaction<'c>),
}

/// Where the items are, for the thread reading the orders.
const READING_ITEMS: u8 = 0;
const ITEMS_READ: u8 = 1;
const ITEMS_FAILED: u8 = 2;

/// A read-only transaction on `other` that sees what `tx` sees (PostgreSQL's exported
/// snapshots).
fn same_snapshot<'c>(
    tx: &mut postgres::Transaction<'_>,
    other: &'c mut Client,
) -> anyhow::Result<postgres::Transaction<'c>> {
    let snapshot: String = tx.query_one("SELECT pg_export_snapshot()", &[]).context("export the snapshot")?.get(0);
    let mut items_tx = read_only(other).context("begin reading the items")?;
    items_tx
        .batch_execute(&format!("SET TRANSACTION SNAPSHOT {}", literal(&snapshot)))
        .context("read the items in the orders' snapshot")?;
    Ok(items_tx)
}

/// A read-only repeatable-read transaction: one snapshot for all it reads.
fn read_only(client: &mut Client) -> Result<postgres::Transaction<'_>, postgres::Error> {
    client.build_transaction().isolation_level(IsolationLevel::RepeatableRead).read_only(true).start()
}

/// Every item row of `query`, indexed by order.
fn read_items(tx: &mut postgres::Transaction<'_>, query: &str, started: std::time::Instant) -> anyhow::Result<Items> {
    let mut items = Items::default();
    let mut rows = copy_out(tx, query).context("read the items of the stored orders")?;
    while rows.next_into(&mut items.bytes)? {
        items.add_last().context("an item row")?;
    }
    debug!(
        "event=warm_items_read items={} bytes={} ms={}",
        items.starts.len(),
        items.bytes.len(),
        started.elapsed().as_millis()
    );
    Ok(items)
}

/// Rows to decode, as `BinaryRows` gives them, in one buffer.
#[derive(Default)]
struct Chunk {
    bytes: Vec<u8>,
    /// Where each row ends.
    ends: Vec<usize>,
}

const CHUNK_ROWS: usize = 256;

impl Chunk {
    fn rows(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(&self.ends).map(|(start, &end)| &self.bytes[start..end])
    }
}

/// The columns `head` decodes, in its order.
fn head_columns() -> String {
    format!(
        "{}, o.ingested_at, {}, {}",
        ORDERS.select("o", "", &["source_topic", "source_partition", "source_offset", "document"]),
        DELIVERIES.select("d", "", &["order_uid"]),
        PAYMENTS.select("p", "", &["order_uid"]),
    )
}

/// The columns `Items::of` decodes, in its order.
fn item_columns() -> String {
    ORDER_ITEMS.select("i", "", &[])
}

/// The rows of `COPY (<query>) TO STDOUT BINARY`.
fn copy_out<'a>(
    tx: &'a mut postgres::Transaction<'_>,
    query: &str,
) -> anyhow::Result<BinaryRows<postgres::CopyOutReader<'a>>> {
    BinaryRows::new(tx.copy_out(&format!("COPY ({query}) TO STDOUT BINARY"))?)
}

/// `text` as an SQL string literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The order of a head row, with its items, its JSON written in `json` (a buffer reused
/// from order to order) and then copied once to its own allocation.
fn stored_order(row: &[u8], items: &Items, json: &mut Vec<u8>) -> anyhow::Result<StoredOrder> {
    let head = Head::parse(row).context("an order row")?;
    let mut rows = items.of(head.order_uid).context("an item row")?;
    rows.sort_unstable_by_key(|item| item.position);
    json.clear();
    head.write_json(&rows, json)?;
    Ok(StoredOrder {
        uid: head.order_uid.to_string(),
        json: Arc::from(&json[..]),
        sha256: head.sha256.to_vec(),
        stored_at: head.stored_at,
    })
}

/// A head row's fields, borrowed: in `head_columns`' order.
struct Head<'a> {
    order_uid: &'a str,
    track_number: &'a str,
    entry: &'a str,
    locale: &'a str,
    internal_signature: &'a str,
    customer_id: &'a str,
    delivery_service: &'a str,
    shardkey: &'a str,
    sm_id: i64,
    date_created: OffsetDateTime,
    oof_shard: &'a str,
    sha256: &'a [u8],
    stored_at: i64,
    delivery: [&'a str; 7],
    payment: Payment<'a>,
}

struct Payment<'a> {
    transaction: &'a str,
    request_id: &'a str,
    currency: &'a str,
    provider: &'a str,
    amount: i64,
    payment_dt: i64,
    bank: &'a str,
    delivery_cost: i64,
    goods_total: i64,
    custom_fee: i64,
}

/// An item row's fields, borrowed: in `item_columns`' order, less the order's id.
struct ItemRow<'a> {
    position: i32,
    chrt_id: i64,
    track_number: &'a str,
    price: i64,
    rid: &'a str,
    name: &'a str,
    sale: i32,
    size: &'a str,
    total_price: i64,
    nm_id: i64,
    brand: &'a str,
    status: i32,
}

const DELIVERY_KEYS: [&str; 7] = ["name", "phone", "zip", "city", "address", "region", "email"];

impl<'a> Head<'a> {
    fn parse(row: &'a [u8]) -> anyhow::Result<Head<'a>> {
        let mut f = Fields::new(row);
        let head = Head {
            order_uid: f.text()?,
            track_number: f.text()?,
            entry: f.text()?,
            locale: f.text()?,
            internal_signature: f.text()?,
            customer_id: f.text()?,
            delivery_service: f.text()?,
            shardkey: f.text()?,
            sm_id: f.int8()?,
            date_created: f.get(&Type::TIMESTAMPTZ)?,
            oof_shard: f.text()?,
            sha256: f.raw()?,
            stored_at: f.int8_of(&Type::TIMESTAMPTZ)?,
            delivery: [f.text()?, f.text()?, f.text()?, f.text()?, f.text()?, f.text()?, f.text()?],
            payment: Payment {
                transaction: f.text()?,
                request_id: f.text()?,
                currency: f.text()?,
                provider: f.text()?,
                amount: f.int8()?,
                payment_dt: f.int8()?,
                bank: f.text()?,
                delivery_cost: f.int8()?,
                goods_total: f.int8()?,
                custom_fee: f.int8()?,
            },
        };
        f.end()?;
        Ok(head)
    }

    /// The order's JSON, key for key and byte for byte as `Order`'s `Serialize` writes
    /// it (compact, fields in declaration order): a unit test holds the two together.
    fn write_json(&self, items: &[ItemRow<'_>], out: &mut Vec<u8>) -> anyhow::Result<()> {
        let mut o = Object::open(out);
        o.field("order_uid", self.order_uid)?;
        o.field("track_number", self.track_number)?;
        o.field("entry", self.entry)?;
        o.key("delivery");
        let mut d = Object::open(o.out);
        for (key, value) in DELIVERY_KEYS.iter().zip(self.delivery) {
            d.field(key, value)?;
        }
        d.close();
        let p = &self.payment;
        o.key("payment");
        let mut w = Object::open(o.out);
        w.field("transaction", p.transaction)?;
        w.field("request_id", p.request_id)?;
        w.field("currency", p.currency)?;
        w.field("provider", p.provider)?;
        w.field("amount", p.amount)?;
        w.field("payment_dt", p.payment_dt)?;
        w.field("bank", p.bank)?;
        w.field("delivery_cost", p.delivery_cost)?;
        w.field("goods_total", p.goods_total)?;
        w.field("custom_fee", p.custom_fee)?;
        w.close();
        o.key("items");
        o.out.push(b'[');
        for (n, item) in items.iter().enumerate() {
            if n > 0 {
                o.out.push(b',');
            }
            let mut i = Object::open(o.out);
            i.field("chrt_id", item.chrt_id)?;
            i.field("track_number", item.track_number)?;
            i.field("price", item.price)?;
            i.field("rid", item.rid)?;
            i.field("name", item.name)?;
            i.field("sale", item.sale)?;
            i.field("size", item.size)?;
            i.field("total_price", item.total_price)?;
            i.field("nm_id", item.nm_id)?;
            i.field("brand", item.brand)?;
            i.field("status", item.status)?;
            i.close();
        }
        o.out.push(b']');
        o.field("locale", self.locale)?;
        o.field("internal_signature", self.internal_signature)?;
        o.field("customer_id", self.customer_id)?;
        o.field("delivery_service", self.delivery_service)?;
        o.field("shardkey", self.shardkey)?;
        o.field("sm_id", self.sm_id)?;
        o.key("date_created");
        time::serde::rfc3339::serialize(&self.date_created, &mut serde_json::Serializer::new(&mut *o.out))?;
        o.field("oof_shard", self.oof_shard)?;
        o.close();
        Ok(())
    }
}

/// A JSON object being written, compact as serde_json writes it; values are written by
/// serde_json itself, so strings are escaped and numbers printed exactly as it does.
struct Object<'o> {
    out: &'o mut Vec<u8>,
    first: bool,
}

impl<'o> Object<'o> {
    fn open(out: &'o mut Vec<u8>) -> Object<'o> {
        out.push(b'{');
        Object { out, first: true }
    }

    fn key(&mut self, key: &str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    fn field(&mut self, key: &str, value: impl serde::Serialize) -> anyhow::Result<()> {
        self.key(key);
        value.serialize(&mut serde_json::Serializer::new(&mut *self.out))?;
        Ok(())
    }

    fn close(self) {
        self.out.push(b'}');
    }
}

/// Item rows as they arrived, in one buffer, chained by order.
#[derive(Default)]
struct Items {
    /// Each row's fields, as COPY sends them.
    bytes: Vec<u8>,
    /// Where each row starts in `bytes`; a row ends where the next starts.
    starts: Vec<usize>,
    /// The next row of the same order (or of another whose id hashes alike), or NONE.
    next: Vec<u32>,
    /// The first and last row of each order, by a hash of its id.
    by_order: HashMap<u64, (u32, u32), BuildHasherDefault<DefaultHasher>>,
    /// Where the row being added starts.
    end: usize,
}

const NONE: u32 = u32::MAX;

impl Items {
    /// Indexes the row just appended to `bytes`.
    fn add_last(&mut self) -> anyhow::Result<()> {
        let start = std::mem::replace(&mut self.end, self.bytes.len());
        let uid = Fields::new(&self.bytes[start..]).raw()?;
        let Ok(index) = u32::try_from(self.starts.len()) else { bail!("more than {NONE} items") };
        let key = self.by_order.hasher().hash_one(uid);
        self.starts.push(start);
        self.next.push(NONE);
        match self.by_order.get_mut(&key) {
            Some((_, last)) => {
                let previous = std::mem::replace(last, index);
                self.next[previous as usize] = index;
            }
            None => {
                self.by_order.insert(key, (index, index));
            }
        }
        Ok(())
    }

    /// The item rows of order `uid`, in the order they arrived.
    fn of<'a>(&'a self, uid: &str) -> anyhow::Result<Vec<ItemRow<'a>>> {
        let key = self.by_order.hasher().hash_one(uid.as_bytes());
        let mut at = self.by_order.get(&key).map_or(NONE, |(first, _)| *first);
        let mut items = Vec::new();
        while at != NONE {
            let start = self.starts[at as usize];
            let end = self.starts.get(at as usize + 1).copied().unwrap_or(self.bytes.len());
            let mut f = Fields::new(&self.bytes[start..end]);
            if f.raw()? == uid.as_bytes() {
                let item = ItemRow {
                    position: f.get(&Type::INT4)?,
                    chrt_id: f.int8()?,
                    track_number: f.text()?,
                    price: f.int8()?,
                    rid: f.text()?,
                    name: f.text()?,
                    sale: f.get(&Type::INT4)?,
                    size: f.text()?,
                    total_price: f.int8()?,
                    nm_id: f.int8()?,
                    brand: f.text()?,
                    status: f.get(&Type::INT4)?,
                };
                f.end()?;
                items.push(item);
            }
            at = self.next[at as usize];
        }
        Ok(items)
    }
}

/// The rows of a `COPY … TO STDOUT BINARY`.
struct BinaryRows<R> {
    reader: R,
}

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

impl<R: BufRead> BinaryRows<R> {
    fn new(mut reader: R) -> anyhow::Result<Self> {
        let mut header = [0u8; 19];
        reader.read_exact(&mut header).context("read the COPY header")?;
        if &header[..11] != SIGNATURE {
            bail!("not a binary COPY stream");
        }
        let extension = u32::from_be_bytes(header[15..19].try_into().expect("4 bytes"));
        std::io::copy(&mut (&mut reader).take(u64::from(extension)), &mut std::io::sink())?;
        Ok(BinaryRows { reader })
    }

    /// Appends the next row's fields (each its length and bytes, as sent) to `out`;
    /// false at the end. PostgreSQL sends each row in a message of its own, so a row is
    /// nearly always whole in the reader's buffer, and copied from there at once.
    fn next_into(&mut self, out: &mut Vec<u8>) -> anyhow::Result<bool> {
        let buffered = self.reader.fill_buf().context("read a COPY row")?;
        match whole_row(buffered) {
            Some((-1, _)) => {
                self.reader.consume(2);
                Ok(false)
            }
            Some((_, len)) => {
                out.extend_from_slice(&buffered[2..len]);
                self.reader.consume(len);
                Ok(true)
            }
            None => self.next_into_in_pieces(out),
        }
    }

    /// `next_into` for a row split between reads.
    fn next_into_in_pieces(&mut self, out: &mut Vec<u8>) -> anyhow::Result<bool> {
        let mut count = [0u8; 2];
        self.reader.read_exact(&mut count).context("read a COPY row")?;
        let count = i16::from_be_bytes(count);
        if count == -1 {
            return Ok(false);
        }
        for _ in 0..count {
            let at = out.len();
            out.resize(at + 4, 0);
            self.reader.read_exact(&mut out[at..]).context("read a COPY field")?;
            let len = i32::from_be_bytes(out[at..].try_into().expect("4 bytes"));
            if len > 0 {
                let at = out.len();
                out.resize(at + len as usize, 0);
                self.reader.read_exact(&mut out[at..]).context("read a COPY field")?;
            }
        }
        Ok(true)
    }
}

/// The field count and the length of the row at the start of `bytes` (the trailer's
/// count is -1, its length 2), if it is all there.
fn whole_row(bytes: &[u8]) -> Option<(i16, usize)> {
    let count = i16::from_be_bytes(*bytes.first_chunk::<2>()?);
    let mut at = 2;
    for _ in 0..count.max(0) {
        let len = i32::from_be_bytes(*bytes.get(at..)?.first_chunk::<4>()?);
        at += 4 + usize::try_from(len).unwrap_or(0);
    }
    (at <= bytes.len()).then_some((count, at))
}

/// The fields of one row, taken in order.
struct Fields<'a> {
    bytes: &'a [u8],
}

impl<'a> Fields<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Fields { bytes }
    }

    /// The next field's bytes; an error if it is NULL.
    fn raw(&mut self) -> anyhow::Result<&'a [u8]> {
        let Some((len, rest)) = self.bytes.split_first_chunk::<4>() else { bail!("fewer fields than expected") };
        let len = i32::from_be_bytes(*len);
        let Ok(len) = usize::try_from(len) else { bail!("a NULL where a value was expected") };
        let (value, rest) = rest.split_at_checked(len).context("a field cut short")?;
        self.bytes = rest;
        Ok(value)
    }

    fn get<T: FromSql<'a>>(&mut self, ty: &Type) -> anyhow::Result<T> {
        let raw = self.raw()?;
        T::from_sql(ty, raw).map_err(|e| anyhow::anyhow!("a {ty} field: {e}"))
    }

    /// A text field: in binary COPY, its UTF-8 bytes.
    fn text(&mut self) -> anyhow::Result<&'a str> {
        Ok(std::str::from_utf8(self.raw()?)?)
    }

    fn int8(&mut self) -> anyhow::Result<i64> {
        self.get(&Type::INT8)
    }

    /// An 8-byte field of type `ty` as the integer it is sent as.
    fn int8_of(&mut self, ty: &Type) -> anyhow::Result<i64> {
        let raw = self.raw()?;
        let bytes: [u8; 8] = raw.try_into().map_err(|_| anyhow::anyhow!("a {ty} field of {} bytes", raw.len()))?;
        Ok(i64::from_be_bytes(bytes))
    }

    fn end(&self) -> anyhow::Result<()> {
        if self.bytes.is_empty() { Ok(()) } else { bail!("more fields than expected") }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Order, decode};
    use postgres::types::ToSql;

    /// A row as binary COPY sends it, less the field count.
    fn row(fields: &[&(dyn ToSql + Sync)], types: &[Type]) -> Vec<u8> {
        let mut row = Vec::new();
        for (value, ty) in fields.iter().zip(types) {
            let mut bytes = bytes::BytesMut::new();
            value.to_sql_checked(ty, &mut bytes).unwrap();
            row.extend((bytes.len() as i32).to_be_bytes());
            row.extend(&bytes[..]);
        }
        row
    }

    /// The order as the warm-up reads it: its head row, and its item rows (added last to
    /// first, so that their order must come from their positions).
    fn rows_of(o: &Order, items: &mut Items) -> Vec<u8> {
        for (position, i) in o.items.iter().enumerate().rev() {
            let position = position as i32;
            items.bytes.extend(row(
                &[
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
                ],
                &ORDER_ITEMS.types(),
            ));
            items.add_last().unwrap();
        }
        let (d, p) = (&o.delivery, &o.payment);
        let sha256: &[u8] = &[7; 32];
        let types: Vec<Type> = ORDERS.types()[..12]
            .iter()
            .cloned()
            .chain([Type::TIMESTAMPTZ])
            .chain(DELIVERIES.types()[1..].iter().cloned())
            .chain(PAYMENTS.types()[1..].iter().cloned())
            .collect();
        row(
            &[
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
                &sha256,
                &o.date_created,
                &d.name,
                &d.phone,
                &d.zip,
                &d.city,
                &d.address,
                &d.region,
                &d.email,
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
            ],
            &types,
        )
    }

    #[test]
    fn the_json_written_from_rows_is_the_order_s_own() {
        let corpus = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus")).unwrap();
        let mut orders: Vec<Order> = corpus
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.file_name().unwrap().to_str().unwrap().starts_with("stored--"))
            .map(|path| decode(Some(&std::fs::read(&path).unwrap()), &Default::default()).unwrap())
            .collect();
        assert_eq!(orders.len(), 8);
        orders.push(decode(Some(include_bytes!("../../demo/model.json")), &Default::default()).unwrap());
        let mut generator = crate::tools::generate::Generator::new(5, 4);
        orders.extend((0..200).map(|_| generator.order()));
        let mut items = Items::default();
        let heads: Vec<Vec<u8>> = orders.iter().map(|o| rows_of(o, &mut items)).collect();
        let mut json = Vec::new();
        for (order, head) in orders.iter().zip(&heads) {
            let stored = stored_order(head, &items, &mut json).unwrap();
            assert_eq!(String::from_utf8_lossy(&stored.json), String::from_utf8_lossy(&order.to_json()));
            assert_eq!((stored.uid.as_str(), &stored.sha256[..]), (order.order_uid.as_str(), &[7; 32][..]));
        }
    }

    #[test]
    fn the_columns_are_in_the_order_they_are_decoded() {
        assert_eq!(
            head_columns(),
            "o.order_uid, o.track_number, o.entry, o.locale, o.internal_signature, o.customer_id, \
             o.delivery_service, o.shardkey, o.sm_id, o.date_created, o.oof_shard, o.content_sha256, o.ingested_at, \
             d.name, d.phone, d.zip, d.city, d.address, d.region, d.email, p.transaction, p.request_id, p.currency, \
             p.provider, p.amount, p.payment_dt, p.bank, p.delivery_cost, p.goods_total, p.custom_fee"
        );
        assert_eq!(
            item_columns(),
            "i.order_uid, i.position, i.chrt_id, i.track_number, i.price, i.rid, i.name, i.sale, i.size, \
             i.total_price, i.nm_id, i.brand, i.status"
        );
    }

    #[test]
    fn rows_are_read_field_by_field() {
        let mut stream = SIGNATURE.to_vec();
        stream.extend(0i32.to_be_bytes());
        stream.extend(4i32.to_be_bytes());
        stream.extend(b"skip");
        stream.extend(2i16.to_be_bytes());
        stream.extend(3i32.to_be_bytes());
        stream.extend(b"abc");
        stream.extend(8i32.to_be_bytes());
        stream.extend(42i64.to_be_bytes());
        stream.extend((-1i16).to_be_bytes());
        let mut rows = BinaryRows::new(&stream[..]).unwrap();
        let mut row = Vec::new();
        assert!(rows.next_into(&mut row).unwrap());
        let mut f = Fields::new(&row);
        assert_eq!((f.text().unwrap(), f.int8().unwrap()), ("abc", 42));
        f.end().unwrap();
        assert!(f.raw().unwrap_err().to_string().contains("fewer fields"));
        assert!(!rows.next_into(&mut row).unwrap());
    }

    #[test]
    fn a_row_split_between_reads_is_read_whole() {
        let mut stream = SIGNATURE.to_vec();
        stream.extend([0u8; 8]);
        stream.extend(1i16.to_be_bytes());
        stream.extend(3i32.to_be_bytes());
        stream.extend(b"abc");
        stream.extend((-1i16).to_be_bytes());
        // A buffer of 5 bytes: the row arrives in pieces.
        let mut rows = BinaryRows::new(std::io::BufReader::with_capacity(5, &stream[..])).unwrap();
        let mut row = Vec::new();
        assert!(rows.next_into(&mut row).unwrap());
        assert_eq!(Fields::new(&row).text().unwrap(), "abc");
        assert!(!rows.next_into(&mut row).unwrap());
        assert_eq!(whole_row(&[0, 2, 0, 0, 0, 1, b'x', 0, 0]), None);
        assert_eq!(whole_row(&[0, 1, 0, 0, 0, 1, b'x', 9]), Some((1, 7)));
        assert_eq!(whole_row(&[0, 1, 255, 255, 255, 255]), Some((1, 6)));
    }

    #[test]
    fn a_null_or_a_short_field_is_an_error() {
        let mut row = (-1i32).to_be_bytes().to_vec();
        assert_eq!(Fields::new(&row).text().unwrap_err().to_string(), "a NULL where a value was expected");
        row = 5i32.to_be_bytes().to_vec();
        row.extend(b"abc");
        assert_eq!(Fields::new(&row).text().unwrap_err().to_string(), "a field cut short");
    }

    #[test]
    fn literals_double_their_quotes() {
        assert_eq!(literal("it's"), "'it''s'");
    }
}
