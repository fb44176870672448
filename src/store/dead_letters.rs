//! Dead letters: the messages that could not become orders, kept in `rejected_messages`
//! with the rule they broke. Written with their batch; read back to list and show them
//! (`replay` stores them again).

use anyhow::Context;
use postgres::types::ToSql;
use postgres::{Client, Row, Transaction};
use sha2::{Digest, Sha256};

use super::tables::{DEAD_LETTER_INSERT, DEAD_LETTER_SELECT};
use crate::model::{Message, Rejection, Rule};

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

/// A redelivered dead letter hits the (topic, partition, offset, payload digest) key and
/// is not stored twice; a different message at a reused position is stored.
pub(super) fn insert_dead_letters(tx: &mut Transaction<'_>, dead: &[DeadLetter]) -> Result<(), postgres::Error> {
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
    tx.execute(DEAD_LETTER_INSERT.as_str(), &params)?;
    Ok(())
}

/// A row of `rejected_messages`: the dead letter, its id, and when.
#[derive(Debug, Clone)]
pub struct StoredDeadLetter {
    pub id: i64,
    pub letter: DeadLetter,
    pub rejected_at: time::OffsetDateTime,
    pub replayed_at: Option<time::OffsetDateTime>,
}

/// A row of `rejected_messages`. A rule name this version does not know is an error:
/// the row was written by a newer version, and guessing its meaning could mislead.
pub(super) fn dead_letter_from_row(row: &Row) -> anyhow::Result<StoredDeadLetter> {
    let id: i64 = row.get("id");
    let rule: &str = row.get("rule");
    let rule = Rule::from_name(rule).with_context(|| format!("dead letter {id} names an unknown rule {rule:?}"))?;
    let sha256: Vec<u8> = row.get("payload_sha256");
    Ok(StoredDeadLetter {
        id,
        letter: DeadLetter {
            topic: row.get("topic"),
            partition: row.get("partition"),
            offset: row.get("offset"),
            key: row.get("message_key"),
            payload: row.get("payload"),
            payload_size: row.get("payload_size"),
            // Written from a SHA-256 digest; another length would be a corrupt row.
            payload_sha256: sha256.try_into().unwrap_or([0; 32]),
            rule,
            detail: row.get("detail"),
        },
        rejected_at: row.get("rejected_at"),
        replayed_at: row.get("replayed_at"),
    })
}

/// The newest `limit` dead letters, newest first.
pub fn dead_letters(client: &mut Client, limit: i64) -> anyhow::Result<Vec<StoredDeadLetter>> {
    let rows = client
        .query(&format!("{} ORDER BY r.id DESC LIMIT $1", *DEAD_LETTER_SELECT), &[&limit])
        .context("read dead letters")?;
    rows.iter().map(dead_letter_from_row).collect()
}

pub fn dead_letter(client: &mut Client, id: i64) -> anyhow::Result<Option<StoredDeadLetter>> {
    let row = client
        .query_opt(&format!("{} WHERE r.id = $1", *DEAD_LETTER_SELECT), &[&id])
        .with_context(|| format!("read dead letter {id}"))?;
    row.as_ref().map(dead_letter_from_row).transpose()
}

/// Ids of the dead letters not replayed yet, oldest first.
pub fn dead_letters_to_replay(client: &mut Client) -> anyhow::Result<Vec<i64>> {
    let rows = client
        .query("SELECT id FROM rejected_messages WHERE replayed_at IS NULL ORDER BY id", &[])
        .context("read dead letters")?;
    Ok(rows.iter().map(|r| r.get("id")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

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
