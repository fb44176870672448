//! Replaying a dead letter: its payload runs through the rules again and, if it passes
//! now, is stored as an order, at the dead letter's position.

use anyhow::Context;
use postgres::Client;

use super::dead_letters::dead_letter_from_row;
use super::prepared::Prepared;
use super::tables::DEAD_LETTER_SELECT;
use super::write::write_orders;
use crate::model::{Message, Order, Rejection};

/// What replaying one dead letter did.
#[derive(Debug, PartialEq, Eq)]
pub enum Replay {
    /// It passes now and is stored as this order; the dead letter is marked replayed.
    Stored(String),
    /// It passes now, but the stored order came from a later position of its partition:
    /// the order is left as it is, and the dead letter is marked replayed.
    Superseded(String),
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
    let prepared = Prepared::with(|sql| client.prepare(sql)).context("prepare the write")?;
    let mut tx = client.transaction().context("begin replay")?;
    let row = tx
        .query_opt(&format!("{} WHERE r.id = $1 FOR UPDATE", *DEAD_LETTER_SELECT), &[&id])
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
    // Its position is the dead letter's, so a newer version of the order stays.
    let source =
        Message { topic: dead.topic.clone(), partition: dead.partition, offset: dead.offset, key: None, payload: None };
    let counts = write_orders(&mut tx, &prepared, &[(&source, &encoded)])
        .with_context(|| format!("store order {uid} of dead letter {id}"))?;
    tx.execute("UPDATE rejected_messages SET replayed_at = now() WHERE id = $1", &[&id])?;
    tx.commit().context("commit replay")?;
    Ok(if counts.stale == 1 { Replay::Superseded(uid) } else { Replay::Stored(uid) })
}
