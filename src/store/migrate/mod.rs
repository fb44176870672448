//! The schema: the files of `sql/`, applied in order at start and recorded in
//! `schema_version`, under a lock so that concurrent starts apply them once. A migration
//! that must also convert what is stored, which SQL alone cannot do, runs a Rust step
//! first, in the same transaction (`documents`).

mod documents;

use anyhow::Context;
use log::info;
use postgres::{Client, Transaction};

/// One migration: a file of `sql/`, recorded in `schema_version` under its number and
/// name once it is applied.
pub struct Migration {
    pub version: i32,
    /// The file's name, recorded as the migration's.
    pub name: &'static str,
    pub sql: &'static str,
    /// Run before the SQL, in its transaction: a conversion of the stored rows that needs
    /// the service's own code.
    pub convert: Option<fn(&mut Transaction<'_>) -> anyhow::Result<()>>,
}

/// The files of `sql/`, applied in this order. A test checks that every `sql/*.sql` file
/// is listed here.
pub const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "0001_orders.sql", sql: include_str!("../../../sql/0001_orders.sql"), convert: None },
    Migration {
        version: 2,
        name: "0002_exactly_once.sql",
        sql: include_str!("../../../sql/0002_exactly_once.sql"),
        convert: None,
    },
    Migration {
        version: 3,
        name: "0003_order_documents.sql",
        sql: include_str!("../../../sql/0003_order_documents.sql"),
        convert: None,
    },
    Migration {
        version: 4,
        name: "0004_order_document_required.sql",
        sql: include_str!("../../../sql/0004_order_document_required.sql"),
        convert: Some(documents::fill),
    },
];

/// Any fixed number: concurrent starts of several instances take this advisory lock so
/// that one of them applies a migration and the others then see it applied.
const MIGRATION_LOCK: i64 = 0x6f72_6465_7273;

/// Applies the migrations not yet recorded in `schema_version`. Returns how many were
/// applied; a second start applies none.
pub fn migrate(client: &mut Client) -> anyhow::Result<usize> {
    migrate_to(client, i32::MAX)
}

/// Applies the migrations up to `version` not yet recorded in `schema_version`, each in a
/// transaction of its own: the schema a version of the service that knew only those
/// would leave (the tests make databases as older versions left them). A migration that
/// fails leaves nothing of itself, and those after it are not applied. Returns how many
/// were applied.
pub fn migrate_to(client: &mut Client, version: i32) -> anyhow::Result<usize> {
    let mut applied = 0;
    for migration in MIGRATIONS.iter().filter(|m| m.version <= version) {
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
        let done = tx.query_opt("SELECT 1 FROM schema_version WHERE version = $1", &[&migration.version])?.is_some();
        if done {
            continue;
        }
        let (version, name) = (migration.version, migration.name);
        if let Some(convert) = migration.convert {
            convert(&mut tx).with_context(|| format!("apply migration sql/{name}"))?;
        }
        tx.batch_execute(migration.sql).with_context(|| format!("apply migration sql/{name}"))?;
        tx.execute("INSERT INTO schema_version (version, name) VALUES ($1, $2)", &[&version, &name])?;
        tx.commit().with_context(|| format!("commit migration sql/{name}"))?;
        info!("event=migration_applied version={version} name={name}");
        applied += 1;
    }
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
        let listed: Vec<&str> = MIGRATIONS.iter().map(|m| m.name).collect();
        assert_eq!(files, listed);
        for (m, number) in MIGRATIONS.iter().zip(1..) {
            assert_eq!(m.version, number);
            assert!(m.name.starts_with(&format!("{number:04}_")), "{}", m.name);
            let file = std::fs::read_to_string(format!("{}/sql/{}", env!("CARGO_MANIFEST_DIR"), m.name)).unwrap();
            assert_eq!(m.sql, file, "{}", m.name);
        }
        let converting: Vec<i32> = MIGRATIONS.iter().filter(|m| m.convert.is_some()).map(|m| m.version).collect();
        assert_eq!(converting, [4]);
    }
}
