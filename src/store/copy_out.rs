//! The rows of a `COPY … TO STDOUT BINARY`, read field by field as PostgreSQL sends
//! them: the fastest way out of PostgreSQL, for the warm-up's read of every document.

use std::io::{BufRead, Read};

use anyhow::{Context, bail};

/// The rows of `COPY (<query>) TO STDOUT BINARY`.
pub(super) fn copy_out<'a>(
    tx: &'a mut postgres::Transaction<'_>,
    query: &str,
) -> anyhow::Result<BinaryRows<postgres::CopyOutReader<'a>>> {
    BinaryRows::new(tx.copy_out(&format!("COPY ({query}) TO STDOUT BINARY"))?)
}

/// The rows of a `COPY … TO STDOUT BINARY`.
pub(super) struct BinaryRows<R> {
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

    /// Hands the next row's fields (each its length and bytes, as sent) to `read`, and
    /// returns what it made of them; None at the end. PostgreSQL sends each row in a
    /// message of its own, so a row is nearly always whole in the reader's buffer, and
    /// read there; one split between reads is gathered in `scratch` first.
    pub fn next_with<T>(
        &mut self,
        scratch: &mut Vec<u8>,
        read: impl FnOnce(&[u8]) -> anyhow::Result<T>,
    ) -> anyhow::Result<Option<T>> {
        let buffered = self.reader.fill_buf().context("read a COPY row")?;
        match whole_row(buffered) {
            Some((-1, _)) => {
                self.reader.consume(2);
                Ok(None)
            }
            Some((_, len)) => {
                let made = read(&buffered[2..len])?;
                self.reader.consume(len);
                Ok(Some(made))
            }
            None => {
                scratch.clear();
                if self.next_into_in_pieces(scratch)? { read(scratch).map(Some) } else { Ok(None) }
            }
        }
    }

    /// Appends the next row's fields to `out`, however the reads split it; false at the
    /// end.
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
pub(super) struct Fields<'a> {
    bytes: &'a [u8],
}

impl<'a> Fields<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Fields { bytes }
    }

    /// The next field's bytes; an error if it is NULL.
    pub fn raw(&mut self) -> anyhow::Result<&'a [u8]> {
        let Some((len, rest)) = self.bytes.split_first_chunk::<4>() else { bail!("fewer fields than expected") };
        let len = i32::from_be_bytes(*len);
        let Ok(len) = usize::try_from(len) else { bail!("a NULL where a value was expected") };
        let (value, rest) = rest.split_at_checked(len).context("a field cut short")?;
        self.bytes = rest;
        Ok(value)
    }

    /// A text field: in binary COPY, its UTF-8 bytes.
    pub fn text(&mut self) -> anyhow::Result<&'a str> {
        Ok(std::str::from_utf8(self.raw()?)?)
    }

    /// An 8-byte field as the integer it is sent as: a bigint, or a timestamptz as the
    /// microseconds since 2000 that PostgreSQL counts.
    pub fn int8(&mut self) -> anyhow::Result<i64> {
        let raw = self.raw()?;
        let bytes: [u8; 8] = raw.try_into().map_err(|_| anyhow::anyhow!("an 8-byte field of {} bytes", raw.len()))?;
        Ok(i64::from_be_bytes(bytes))
    }

    pub fn end(&self) -> anyhow::Result<()> {
        if self.bytes.is_empty() { Ok(()) } else { bail!("more fields than expected") }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut scratch = Vec::new();
        let row = rows.next_with(&mut scratch, |row| {
            let mut f = Fields::new(row);
            let fields = (f.text()?.to_string(), f.int8()?);
            f.end()?;
            assert!(f.raw().unwrap_err().to_string().contains("fewer fields"));
            Ok(fields)
        });
        assert_eq!(row.unwrap(), Some(("abc".to_string(), 42)));
        // Read in place: nothing was gathered.
        assert!(scratch.is_empty());
        assert_eq!(rows.next_with(&mut scratch, |_| Ok(())).unwrap(), None);
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
        let mut scratch = Vec::new();
        let text = rows.next_with(&mut scratch, |row| Ok(Fields::new(row).text()?.to_string()));
        assert_eq!(text.unwrap().as_deref(), Some("abc"));
        assert_eq!(scratch, [0, 0, 0, 3, b'a', b'b', b'c']);
        assert_eq!(rows.next_with(&mut scratch, |_| Ok(())).unwrap(), None);
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
}
