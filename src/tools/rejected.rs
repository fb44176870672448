//! What the `rejected` commands say: dead letters listed and shown, and the outcome of
//! replaying them through the current validation rules. Each function returns the text
//! the binary prints, so that tests can check it.

use std::fmt::Write as _;

use postgres::Client;

use crate::model::{self, Rules};
use crate::store::{self, Replay, StoredDeadLetter};

/// One line per dead letter, newest first.
pub fn list(client: &mut Client, limit: i64) -> anyhow::Result<String> {
    let letters = store::dead_letters(client, limit)?;
    let mut out = String::new();
    writeln!(
        out,
        "{:>8}  {:<20}  {:<24}  {:<20}  {:>9}  {:<8}  detail",
        "id", "rejected_at", "topic/partition@offset", "rule", "bytes", "replayed"
    )?;
    for stored in &letters {
        let d = &stored.letter;
        writeln!(
            out,
            "{:>8}  {:<20}  {:<24}  {:<20}  {:>9}  {:<8}  {}",
            stored.id,
            short_time(stored.rejected_at),
            format!("{}/{}@{}", d.topic, d.partition, d.offset),
            d.rule,
            d.payload_size,
            if stored.replayed_at.is_some() { "yes" } else { "no" },
            clip(&d.detail, 80)
        )?;
    }
    writeln!(out, "{} dead letters shown", letters.len())?;
    Ok(out)
}

/// Everything stored of one dead letter, the payload as text when it is UTF-8.
pub fn show(client: &mut Client, id: i64) -> anyhow::Result<String> {
    let Some(d) = store::dead_letter(client, id)? else {
        anyhow::bail!("no dead letter with id {id}");
    };
    Ok(describe(&d))
}

fn describe(stored: &StoredDeadLetter) -> String {
    let d = &stored.letter;
    let mut out = String::new();
    let _ = writeln!(out, "id:           {}", stored.id);
    let _ = writeln!(out, "position:     {}/{}@{}", d.topic, d.partition, d.offset);
    let _ = writeln!(out, "rejected_at:  {}", short_time(stored.rejected_at));
    let _ = writeln!(out, "replayed_at:  {}", stored.replayed_at.map_or("-".to_string(), short_time));
    let _ = writeln!(out, "rule:         {}", d.rule);
    let _ = writeln!(out, "detail:       {}", d.detail);
    let _ = writeln!(out, "key:          {}", d.key.as_deref().map_or("-".to_string(), printable));
    let _ = writeln!(out, "size:         {} bytes", d.payload_size);
    let _ = writeln!(out, "sha256:       {}", hex(&d.payload_sha256));
    if d.payload.len() as i64 != d.payload_size {
        let _ = writeln!(out, "payload:      first {} bytes kept", d.payload.len());
    }
    let _ = writeln!(out, "payload:\n{}", printable(&d.payload));
    out
}

/// What `replay` is given on the command line.
pub enum Target {
    One(i64),
    All,
}

/// Replays one or every not-yet-replayed dead letter; one line per dead letter.
pub fn replay(client: &mut Client, target: Target, rules: &Rules) -> anyhow::Result<String> {
    let ids = match target {
        Target::One(id) => vec![id],
        Target::All => store::dead_letters_to_replay(client)?,
    };
    let mut out = String::new();
    let mut stored = 0;
    for &id in &ids {
        let outcome = store::replay(client, id, |payload| model::decode(Some(payload), rules))?;
        let line = match &outcome {
            Replay::Stored(uid) => {
                stored += 1;
                log::info!("event=dead_letter_replayed id={id} order_uid={uid}");
                format!("stored as order {uid}")
            }
            Replay::Superseded(uid) => {
                log::info!("event=dead_letter_replayed id={id} order_uid={uid} outcome=superseded");
                format!("passes now, but order {uid} is stored from a later message: left as it is")
            }
            Replay::StillRejected(r) => format!("still rejected: {r}"),
            Replay::Truncated => "cannot be replayed: only the first part of it was kept".to_string(),
            Replay::AlreadyReplayed => "already replayed".to_string(),
            Replay::NotFound => "no such dead letter".to_string(),
        };
        writeln!(out, "{id}: {line}")?;
    }
    writeln!(out, "{stored} of {} dead letters stored as orders", ids.len())?;
    Ok(out)
}

fn short_time(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    t.format(time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z"))
        .unwrap_or_else(|_| t.to_string())
}

fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// UTF-8 text as it is (control characters escaped), anything else as hex.
fn printable(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text
            .chars()
            .flat_map(|c| if c.is_control() && c != '\n' { c.escape_default().collect::<Vec<_>>() } else { vec![c] })
            .collect(),
        Err(_) => format!("(not UTF-8, hex) {}", hex(bytes)),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_print_as_text_or_hex() {
        assert_eq!(printable(b"{\"a\":1}\n"), "{\"a\":1}\n");
        assert_eq!(printable(b"a\0b"), "a\\u{0}b");
        assert_eq!(printable(&[0xff, 0x01]), "(not UTF-8, hex) ff01");
    }

    #[test]
    fn long_details_are_clipped() {
        assert_eq!(clip("abcdef", 3), "abc…");
        assert_eq!(clip("abc", 3), "abc");
    }
}
