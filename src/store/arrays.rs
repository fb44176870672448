//! Rows sent as one array per column: `INSERT … SELECT * FROM UNNEST($1, $2, …)` writes
//! any number of rows in one statement, and one statement can fill several tables. A
//! binary COPY takes two round trips a table (its start, then its rows); for the few
//! orders a batch holds when orders arrive one by one, those round trips were most of the
//! write. Each value is encoded by its own `ToSql`, as in a COPY's rows (`copy_in`).

use std::error::Error;

use bytes::{BufMut, BytesMut};
use postgres::types::{IsNull, Kind, ToSql, Type, to_sql_checked};

/// One column's values, bound as one array parameter of the column's type.
#[derive(Debug, Default)]
pub(super) struct Column<'a> {
    values: Vec<&'a (dyn ToSql + Sync)>,
}

impl<'a> Column<'a> {
    pub fn push(&mut self, value: &'a (dyn ToSql + Sync)) {
        self.values.push(value);
    }
}

/// `n` empty columns, filled a row at a time by `push_row`.
pub(super) fn columns<'a>(n: usize) -> Vec<Column<'a>> {
    (0..n).map(|_| Column::default()).collect()
}

/// Adds a row: its values, one to each column in order.
pub(super) fn push_row<'a>(columns: &mut [Column<'a>], row: &[&'a (dyn ToSql + Sync)]) {
    assert_eq!(columns.len(), row.len(), "one value per column");
    for (column, value) in columns.iter_mut().zip(row) {
        column.push(*value);
    }
}

/// Encodes `value` as `ty` after its length, as both a COPY row and an array hold their
/// fields: the length is -1 for NULL.
pub(super) fn put_field(
    out: &mut BytesMut,
    value: &dyn ToSql,
    ty: &Type,
) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
    let at = out.len();
    out.put_i32(0);
    let null = value.to_sql_checked(ty, out)?;
    let len = match null {
        IsNull::Yes => -1,
        IsNull::No => i32::try_from(out.len() - at - 4).map_err(|_| "a value over 2 GiB")?,
    };
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    Ok(null)
}

impl ToSql for Column<'_> {
    /// PostgreSQL's binary array: one dimension, a flag for NULLs, the member type, the
    /// length and lower bound, then each value after its length.
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        let Kind::Array(member) = ty.kind() else { return Err(format!("{ty} is not an array type").into()) };
        let len = i32::try_from(self.values.len()).map_err(|_| "more than 2^31 values in one array")?;
        out.put_i32(1);
        let nulls_at = out.len();
        out.put_i32(0);
        out.put_u32(member.oid());
        out.put_i32(len);
        out.put_i32(1);
        let mut nulls = false;
        for value in &self.values {
            nulls |= matches!(put_field(out, *value, member)?, IsNull::Yes);
        }
        if nulls {
            out[nulls_at..nulls_at + 4].copy_from_slice(&1i32.to_be_bytes());
        }
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        matches!(ty.kind(), Kind::Array(_))
    }

    to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_column_is_a_one_dimensional_array_of_its_values() {
        let (a, b): (Option<i64>, Option<i64>) = (Some(7), None);
        let mut columns = columns(1);
        push_row(&mut columns, &[&a]);
        push_row(&mut columns, &[&b]);
        let mut out = BytesMut::new();
        assert!(matches!(columns[0].to_sql_checked(&Type::INT8_ARRAY, &mut out), Ok(IsNull::No)));
        let mut expected = Vec::new();
        for word in [1, 1, 20, 2, 1, 8] {
            expected.extend_from_slice(&i32::to_be_bytes(word)); // dims, NULLs, int8's oid, len, lower bound, 8 bytes
        }
        expected.extend_from_slice(&7i64.to_be_bytes());
        expected.extend_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(&out[..], &expected[..]);
    }

    #[test]
    fn a_value_of_the_wrong_type_is_refused_with_its_type() {
        let text = "x";
        let mut columns = columns(1);
        push_row(&mut columns, &[&text]);
        let err = columns[0].to_sql_checked(&Type::INT8_ARRAY, &mut BytesMut::new()).err().expect("refused");
        assert!(err.to_string().contains("int8"), "{err}");
        assert!(!Column::accepts(&Type::INT8));
    }
}
