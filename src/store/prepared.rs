//! The consumer's connection, with the statements every batch runs prepared on it once.
//! A statement given as text is parsed on each use, in a round trip of its own before
//! the one that runs it: a batch of a few orders took about twenty round trips, half of
//! them parsing the same statements again. Prepared, each statement is one round trip.

use anyhow::Context;
use postgres::{Client, Statement};

use super::notify::NOTIFY;
use super::offsets::{ADVANCE, FIRST_CLAIM};
use super::tables::{DELIVERIES, ORDER_ITEMS, ORDERS, PAYMENTS};
use super::write::{EXISTING, Written, write_batch_prepared};
use super::{Claim, DeadLetter};
use crate::model::{Encoded, Message};

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

/// A connection that writes batches (`store::connect_writer`), with their statements
/// prepared on it by the first.
pub struct Writer {
    client: Client,
    prepared: Option<Prepared>,
}

impl Writer {
    pub fn new(client: Client) -> Writer {
        Writer { client, prepared: None }
    }

    /// The connection, for anything else it runs.
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// `store::write_batch` on this connection. After an error the statements are
    /// prepared again for the next batch: the error may have been one of theirs (a
    /// pooler or a `DISCARD` that dropped them, a table changed under them).
    pub fn write_batch(
        &mut self,
        group: &str,
        claims: &[Claim],
        orders: &[(&Message, Encoded)],
        dead: &[DeadLetter],
    ) -> anyhow::Result<Written> {
        let prepared = match self.prepared.take() {
            Some(prepared) => prepared,
            None => Prepared::on(&mut self.client).context("prepare the batch's statements")?,
        };
        let written = write_batch_prepared(&mut self.client, &prepared, group, claims, orders, dead);
        if written.is_ok() {
            self.prepared = Some(prepared);
        }
        written
    }
}
