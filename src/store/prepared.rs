//! The statements every batch runs, which the consumer's connection (a `pool::Conn`, as
//! the read path's) prepares once. A statement given as text is parsed on each use, in a
//! round trip of its own before the one that runs it: a batch of a few orders took about
//! twenty round trips, half of them parsing the same statements again. Prepared, each
//! statement is one round trip. The read of the stored versions is sent with its types
//! instead (`EXISTING`), to be planned for its own ids.

use std::sync::LazyLock;

use postgres::Statement;

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
/// what it wrote. Not prepared: a prepared statement is planned once for any parameters
/// after its fifth run, and a plan made while `orders` was small scans the whole table.
/// Sent with its parameter's type (`query_typed`), it is planned for its own ids, in the
/// same single round trip.
pub(super) const EXISTING: &str = "SELECT order_uid, content_sha256, source_topic, source_partition, \
     source_offset FROM orders WHERE order_uid = ANY($1) FOR UPDATE";

/// One notification on the channel ($1, `notify::CHANNEL`) for each payload ($2).
const NOTIFY: &str = "SELECT pg_notify($1, p) FROM UNNEST($2::text[]) AS p";

/// `COPY … FROM STDIN BINARY` into orders, deliveries, payments and order_items.
static COPY_IN: LazyLock<[String; 4]> =
    LazyLock::new(|| [ORDERS.copy_in(), DELIVERIES.copy_in(), PAYMENTS.copy_in(), ORDER_ITEMS.copy_in()]);

/// Every order table's rows, each column an array (`arrays`): orders from $1, deliveries,
/// payments and items after them; then the notification of the orders written, on the
/// channel in the parameter after the last column and with the payloads in the one after
/// it. The check of each foreign key waits for the end of the statement, by when the
/// orders are there.
static INSERT_ORDERS: LazyLock<String> = LazyLock::new(|| {
    let mut first = 1;
    let mut inserts = Vec::new();
    for table in [&ORDERS, &DELIVERIES, &PAYMENTS, &ORDER_ITEMS] {
        inserts.push(format!("{}_rows AS ({})", table.name, table.insert_from_arrays(first)));
        first += table.columns.len();
    }
    format!("WITH {} SELECT pg_notify(${first}, p) FROM UNNEST(${}::text[]) AS p", inserts.join(", "), first + 1)
});

/// The statements of a batch's transaction, prepared on one connection.
pub(super) struct Prepared {
    pub advance: Statement,
    pub first_claim: Statement,
    pub notify: Statement,
    /// `COPY … FROM STDIN BINARY` into orders, deliveries, payments and order_items.
    pub copy: [Statement; 4],
    /// `INSERT_ORDERS`: a few orders in one statement.
    pub insert: Statement,
}

impl Prepared {
    /// Each statement as `prepare` gives it: `Client::prepare` for a single write,
    /// `Conn::prepared` for a connection that keeps them.
    pub fn with(
        mut prepare: impl FnMut(&'static str) -> Result<Statement, postgres::Error>,
    ) -> Result<Prepared, postgres::Error> {
        let copy = &*COPY_IN;
        Ok(Prepared {
            advance: prepare(ADVANCE)?,
            first_claim: prepare(FIRST_CLAIM)?,
            notify: prepare(NOTIFY)?,
            copy: [prepare(&copy[0])?, prepare(&copy[1])?, prepare(&copy[2])?, prepare(&copy[3])?],
            insert: prepare(&INSERT_ORDERS)?,
        })
    }
}
