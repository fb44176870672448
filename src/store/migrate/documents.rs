//! The conversion run before `sql/0004_order_document_required.sql`: every order stored
//! without a document (by a version before `sql/0003_order_documents.sql`) gets the one
//! this version would store for it, made from its rows and checked against the digest it
//! was stored with. This is the only code that turns an order's rows back into an order.

use std::time::Instant;

use anyhow::{Context, bail};
use log::info;
use postgres::Transaction;

use crate::model::{Order, version_of};

/// Orders read, made and written per statement: the conversion holds one batch at a
/// time, however many orders there are.
const BATCH: i64 = 1000;

/// After the id `$1`, the next `$2` orders without a document, by id (through the partial
/// index that holds only them): each one's id, stored digest, and rows as one JSON
/// object. `to_jsonb` makes each row an object of its columns by name, and the columns
/// are named as the model's fields: the order's row, with its delivery's and payment's
/// rows and its item rows (in their order) under the names `Order` gives them. Columns
/// that are not fields (the digest, the source, `position`, `order_uid` in the other
/// tables) are passed over when the object is read as an `Order`. A missing delivery or
/// payment row is a null, which is not one.
const WITHOUT_DOCUMENT: &str = "
    SELECT o.order_uid, o.content_sha256,
           (to_jsonb(o) || jsonb_build_object(
               'delivery', to_jsonb(d),
               'payment', to_jsonb(p),
               'items', COALESCE((SELECT jsonb_agg(i ORDER BY i.position) FROM order_items i
                                  WHERE i.order_uid = o.order_uid), '[]'::jsonb)))::text AS order_rows
    FROM orders o
    LEFT JOIN deliveries d ON d.order_uid = o.order_uid
    LEFT JOIN payments p ON p.order_uid = o.order_uid
    WHERE o.document IS NULL AND o.order_uid > $1
    ORDER BY o.order_uid
    LIMIT $2";

/// Gives each order of `$1` the document of `$2` beside it, unless it has one: one a
/// concurrent write replaced keeps the one written with it.
const SET_DOCUMENT: &str = "
    UPDATE orders o SET document = f.document
    FROM UNNEST($1::text[], $2::text[]) AS f (order_uid, document)
    WHERE o.order_uid = f.order_uid AND o.document IS NULL";

/// Fills `orders.document` for every order without one, batch after batch, in `tx`. An
/// order whose rows do not make an order, or make one whose JSON has another digest than
/// the one stored, is an error naming it: the migration then stops with nothing filled.
pub(super) fn fill(tx: &mut Transaction<'_>) -> anyhow::Result<()> {
    let started = Instant::now();
    let without: i64 = tx
        .query_one("SELECT count(*) AS orders FROM orders WHERE document IS NULL", &[])
        .context("count the orders without a document")?
        .get("orders");
    if without == 0 {
        return Ok(());
    }
    info!("event=order_documents_filling orders={without}");
    // Timestamps in the rows' JSON as in the model's: in UTC.
    tx.batch_execute("SET LOCAL TimeZone = 'UTC'")?;
    let (mut after, mut filled) = (String::new(), 0);
    loop {
        let rows = tx.query(WITHOUT_DOCUMENT, &[&after, &BATCH]).context("read orders without a document")?;
        let Some(last) = rows.last() else { break };
        after = last.get("order_uid");
        let mut uids: Vec<&str> = Vec::with_capacity(rows.len());
        let mut documents = Vec::with_capacity(rows.len());
        for row in &rows {
            let uid = row.get("order_uid");
            documents.push(document(uid, row.get("content_sha256"), row.get("order_rows"))?);
            uids.push(uid);
        }
        tx.execute(SET_DOCUMENT, &[&uids, &documents]).context("store the documents")?;
        filled += rows.len();
    }
    info!("event=order_documents_filled orders={filled} ms={}", started.elapsed().as_millis());
    Ok(())
}

/// The document this version stores for order `uid`, made from its rows (`rows`, as
/// `WITHOUT_DOCUMENT` gives them): the JSON `Order::encode` gives, which must be the one
/// whose digest was stored with the order (`stored_sha256`).
fn document(uid: &str, stored_sha256: &[u8], rows: &str) -> anyhow::Result<String> {
    let order: Order =
        serde_json::from_str(rows).with_context(|| format!("order {uid}: its rows do not make an order"))?;
    let encoded = order.encode();
    if encoded.sha256[..] != *stored_sha256 {
        bail!(
            "order {uid}: the JSON made from its rows is version {}, but content_sha256 says it was stored as \
             version {}; its rows do not give back the order that was stored, so it cannot have a document",
            encoded.version(),
            version_of(stored_sha256)
        );
    }
    String::from_utf8(encoded.json.to_vec()).context("an order's JSON is not UTF-8")
}
