//! Rows for `COPY … FROM STDIN BINARY`, encoded into one buffer of ours and handed to the
//! driver in large pieces. The driver's own binary writer encodes each field into a
//! buffer that it sends every 4 KiB; while a piece is still being sent the buffer cannot
//! be reused, so it was regrown, and what it held copied, field after field: that
//! copying was most of the consumer thread's time.

use std::io::Write as _;

use bytes::{BufMut, BytesMut};
use postgres::types::{ToSql, Type};
use postgres::{CopyInWriter, Statement, Transaction};

use super::arrays::put_field;
use super::tables::Table;

/// How much is encoded before it is handed to the driver.
const PIECE: usize = 256 * 1024;

/// The binary format's header: its signature, no flags, no extension.
const HEADER: &[u8; 19] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

pub(super) struct CopyIn<'a> {
    writer: CopyInWriter<'a>,
    types: Vec<Type>,
    buf: BytesMut,
}

impl<'a> CopyIn<'a> {
    /// Starts `statement`, `table`'s `COPY <table> (<every column>) FROM STDIN BINARY`.
    pub fn start(tx: &'a mut Transaction<'_>, statement: &Statement, table: &Table) -> anyhow::Result<CopyIn<'a>> {
        let writer = tx.copy_in(statement)?;
        let mut buf = BytesMut::with_capacity(PIECE + PIECE / 4);
        buf.put_slice(HEADER);
        Ok(CopyIn { writer, types: table.types(), buf })
    }

    /// One row: a value for each column, in the table's order.
    pub fn write(&mut self, values: &[&(dyn ToSql + Sync)]) -> anyhow::Result<()> {
        assert_eq!(values.len(), self.types.len(), "one value per column");
        self.buf.put_i16(values.len() as i16);
        for (i, (value, ty)) in values.iter().zip(&self.types).enumerate() {
            put_field(&mut self.buf, *value, ty)
                .map_err(|e| anyhow::anyhow!(e).context(format!("encode column {} as {ty}", i + 1)))?;
        }
        if self.buf.len() >= PIECE {
            self.send()?;
        }
        Ok(())
    }

    /// Ends the COPY; returns the number of rows written.
    pub fn finish(mut self) -> anyhow::Result<u64> {
        self.buf.put_i16(-1);
        self.send()?;
        Ok(self.writer.finish()?)
    }

    fn send(&mut self) -> anyhow::Result<()> {
        let sent = self.writer.write_all(&self.buf);
        self.buf.clear();
        sent.map_err(database_error)
    }
}

/// The driver reports what the server said during a COPY as an I/O error around its own
/// error type: that error itself, so that callers can tell what the server refused.
fn database_error(e: std::io::Error) -> anyhow::Error {
    match e.downcast::<postgres::Error>() {
        Ok(db) => db.into(),
        Err(e) => e.into(),
    }
}
