//! The schema: the files of `sql/`, applied in order at start and recorded in
//! `schema_version`, under a lock so that concurrent starts apply them once.

use anyhow::Context;
use log::info;
use postgres::Client;

/// The files of `sql/`, applied in this order and recorded in `schema_version`.
/// A test checks that every `sql/*.sql` file is listed here.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "0001_orders.sql", include_str!("../../sql/0001_orders.sql")),
    (2, "0002_exactly_once.sql", include_str!("../../sql/0002_exactly_once.sql")),
    (3, "0003_order_documents.sql", include_str!("../../sql/0003_order_documents.sql")),
];

/// Any fixed number: concurrent starts of several instances take this advisory lock so
/// that one of them applies the migrations and the others then see them applied.
const MIGRATION_LOCK: i64 = 0x6f72_6465_7273;

/// Applies the migrations not yet recorded in `schema_version`, in one transaction.
/// Returns how many were applied; a second start applies none.
pub fn migrate(client: &mut Client) -> anyhow::Result<usize> {
    let mut tx = client.transaction().context("begin migration")?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).context("take migration lock")?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (
             version    integer     PRIMARY KEY,
             name       text        NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .context("create schema_version")?;
    let mut applied = 0;
    for &(version, name, sql) in MIGRATIONS {
        let done = tx.query_opt("SELECT 1 FROM schema_version WHERE version = $1", &[&version])?.is_some();
        if done {
            continue;
        }
        tx.batch_execute(sql).with_context(|| format!("apply migration sql/{name}"))?;
        tx.execute("INSERT INTO schema_version (version, name) VALUES ($1, $2)", &[&version, &name])?;
        info!("event=migration_applied version={version} name={name}");
        applied += 1;
    }
    tx.commit().context("commit migrations")?;
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sql_file_is_a_listed_migration_in_order() {
        let mut files: Vec<String> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/sql"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        let listed: Vec<&str> = MIGRATIONS.iter().map(|m| m.1).collect();
        assert_eq!(files, listed);
        let versions: Vec<i32> = MIGRATIONS.iter().map(|m| m.0).collect();
        assert_eq!(versions, (1..=MIGRATIONS.len() as i32).collect::<Vec<_>>());
    }
}
