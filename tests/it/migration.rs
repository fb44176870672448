//! The schema's migrations against PostgreSQL: each applied once, and the step that gives
//! every order stored by an older version its document, checked against its digest.

use orders_svc::model::{Encoded, Message, Order};
use orders_svc::store;
use orders_svc::tools::generate::Generator;

use crate::support::*;

/// A database as version 3 of the schema left it, holding `count` orders; those at the
/// even places have no document, as if stored before there were documents.
fn left_by_version_3(count: usize) -> (TestDb, Vec<Order>) {
    let db = TestDb::new();
    assert_eq!(store::migrate_to(&mut db.client(), 3).unwrap(), 3);
    let mut generator = Generator::new(21, 3);
    let orders: Vec<Order> = (0..count).map(|_| generator.order()).collect();
    let messages: Vec<Message> = (0..count as i64)
        .map(|offset| Message {
            topic: "orders".into(),
            partition: 0,
            offset,
            key: None,
            payload: Some(b"{}".to_vec()),
        })
        .collect();
    let batch: Vec<(&Message, Encoded)> = messages.iter().zip(&orders).map(|(m, o)| (m, o.clone().encode())).collect();
    store::write_batch(&mut db.client(), "g", &[], &batch, &[]).unwrap().committed().expect("committed");
    let without: Vec<&str> = orders.iter().step_by(2).map(|o| o.order_uid.as_str()).collect();
    db.client().execute("UPDATE orders SET document = NULL WHERE order_uid = ANY($1)", &[&without]).unwrap();
    (db, orders)
}

fn document_nullable(db: &TestDb) -> String {
    db.client()
        .query_one(
            "SELECT is_nullable FROM information_schema.columns WHERE table_name = 'orders' AND column_name = 'document'",
            &[],
        )
        .unwrap()
        .get("is_nullable")
}

/// Migrations are recorded once: a second start applies nothing.
#[test]
fn migrations_apply_once() {
    let db = TestDb::new();
    let mut client = db.client();
    assert_eq!(store::migrate(&mut client).unwrap(), 4);
    assert_eq!(store::migrate(&mut client).unwrap(), 0);
    assert_eq!(db.count("SELECT count(*) FROM schema_version"), 4);
    assert_eq!(db.count("SELECT max(version)::bigint FROM schema_version"), 4);
    assert_eq!(document_nullable(&db), "NO");
}

/// Every order stored without a document gets the one this version would store for it,
/// made from its rows: the same bytes, so the same digest as stored. Then the column is
/// required.
#[test]
fn orders_stored_without_a_document_get_theirs_before_it_is_required() {
    let (db, orders) = left_by_version_3(301);
    assert!(orders.iter().any(|o| o.items.len() == 3), "some orders have several items");
    assert_eq!(db.count("SELECT count(*) FROM orders WHERE document IS NULL"), 151);
    assert_eq!(document_nullable(&db), "YES");

    assert_eq!(store::migrate(&mut db.client()).unwrap(), 1);
    assert_eq!(db.count("SELECT count(*) FROM orders WHERE document IS NULL"), 0);
    for order in &orders {
        let row = db
            .client()
            .query_one("SELECT document, content_sha256 FROM orders WHERE order_uid = $1", &[&order.order_uid])
            .unwrap();
        let encoded = order.clone().encode();
        let document: &str = row.get("document");
        assert_eq!(document.as_bytes(), &*encoded.json, "{}", order.order_uid);
        assert_eq!(row.get::<_, &[u8]>("content_sha256"), &encoded.sha256[..]);
    }
    assert_eq!(document_nullable(&db), "NO");
    assert_eq!(db.count("SELECT max(version)::bigint FROM schema_version"), 4);
}

/// An order whose rows no longer give back the JSON its digest names (here its city was
/// changed behind the service's back) stops the migration with its id and both versions,
/// and nothing of the migration is kept: no document filled, the column still optional.
#[test]
fn an_order_whose_rows_do_not_match_its_digest_stops_the_migration() {
    let (db, orders) = left_by_version_3(11);
    let changed = &orders[4].order_uid;
    db.client().execute("UPDATE deliveries SET city = 'Elsewhere' WHERE order_uid = $1", &[changed]).unwrap();

    let error = format!("{:#}", store::migrate(&mut db.client()).unwrap_err());
    assert!(error.contains("apply migration sql/0004_order_document_required.sql"), "{error}");
    assert!(error.contains(&format!("order {changed}: the JSON made from its rows is version ")), "{error}");
    assert!(
        error.contains(&format!(
            "content_sha256 says it was stored as version {}",
            orders[4].clone().encode().version()
        )),
        "{error}"
    );
    assert_eq!(db.count("SELECT count(*) FROM orders WHERE document IS NULL"), 6);
    assert_eq!(document_nullable(&db), "YES");
    assert_eq!(db.count("SELECT max(version)::bigint FROM schema_version"), 3);

    // Put right, the next start applies it.
    db.client()
        .execute("UPDATE deliveries SET city = $2 WHERE order_uid = $1", &[changed, &orders[4].delivery.city])
        .unwrap();
    assert_eq!(store::migrate(&mut db.client()).unwrap(), 1);
    assert_eq!(db.count("SELECT count(*) FROM orders WHERE document IS NULL"), 0);
}
