//! The statements every batch runs, which the consumer's connection (`write::Writer`)
//! prepares once. A statement given as text is parsed on each use, in a round trip of
//! its own before the one that runs it: a batch of a few orders took about twenty round
//! trips, half of them parsing the same statements again. Prepared, each statement is
//! one round trip.

use postgres::{Client, Statement};

use super::tables::{DELIVERIES, ORDER_ITEMS, ORDERS, PAYMENTS};

/// Advances a claimed partition's stored offset ($4, $5 messages more) where it is still
/// where the batch began ($6). Under READ COMMITTED an UPDATE that waited for another
/// transaction's lock checks its WHERE again against the row that transaction committed.
const ADVANCE: &str = "UPDATE consumer_offsets SET next_offset = $4, messages = messages + $5, \
     updated_at = now() WHERE group_id = $1 AND topic = $2 AND partition = $3 AND next_offset = $6";

/// A partition's first stored offset. A concurrent first insert waits for the other
/// transaction, then does nothing.
const FIRST_CLAIM: &str = "INSERT INTO consumer_offsets (group_id, topic, partition, next_offset, \
     messages) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING";

/// The stored versions of a batch's orders ($1), locked, so that a writer of the same
/// order from another partition waits for this transaction and then compares against
/// what it wrote.
const EXISTING: &str = "SELECT order_uid, content_sha256, source_topic, source_partition, \
     source_offset FROM orders WHERE order_uid = ANY($1) FOR UPDATE";

/// One notification on the channel ($1, `notify::CHANNEL`) for each payload ($2).
const NOTIFY: &str = "SELECT pg_notify($1, p) FROM UNNEST($2::text[]) AS p";

/// The statements of a batch's transaction, prepared on one connection.
pub(super) struct Prepared {
    pub advance: Statement,
    pub first_claim: Statement,
    pub existing: Statement,
    pub notify: Statement,
    /// `COPY … FROM STDIN BINARY` into orders, deliveries, payments and order_items.
    pub copy: [Statement; 4],
}

impl Prepared {
    pub fn on(client: &mut Client) -> Result<Prepared, postgres::Error> {
        Ok(Prepared {
            advance: client.prepare(ADVANCE)?,
            first_claim: client.prepare(FIRST_CLAIM)?,
            existing: client.prepare(EXISTING)?,
            notify: client.prepare(NOTIFY)?,
            copy: [
                client.prepare(&ORDERS.copy_in())?,
                client.prepare(&DELIVERIES.copy_in())?,
                client.prepare(&PAYMENTS.copy_in())?,
                client.prepare(&ORDER_ITEMS.copy_in())?,
            ],
        })
    }
}
