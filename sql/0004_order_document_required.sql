-- Every order has its document. Before this file runs, in the same transaction, the
-- migration's Rust step (src/store/migrate/documents.rs) gives each order stored without
-- one (by a version before 0003) the document this version would store for it, made
-- from its rows and checked against its content_sha256; an order whose rows do not give
-- back that digest stops the migration. The warm-up and a cache miss then read only
-- this column, and the rows are never turned into JSON again.
ALTER TABLE orders ALTER COLUMN document SET NOT NULL;

-- It held the orders without a document, for that step; there are none any more.
DROP INDEX orders_without_document_idx;
