-- Each order's JSON as the service serves it: the bytes whose SHA-256 is content_sha256,
-- written by the same COPY as the order's rows. Filling the cache at start reads this
-- one column instead of joining the four tables and writing the JSON again, which was
-- most of a start's time. The rows stay the record; the document is derived from them
-- and replaced with them.
--
-- NULL for orders stored before this migration: those are still read from their rows,
-- found through the partial index, which holds only them.
ALTER TABLE orders ADD COLUMN document text;

CREATE INDEX orders_without_document_idx ON orders (order_uid) WHERE document IS NULL;
