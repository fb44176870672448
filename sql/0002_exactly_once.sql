-- Exactly-once ingest. The consumer keeps its position in PostgreSQL, advanced in the
-- same transaction as the rows a batch writes: a batch commits only if each of its
-- partitions still stands where the consumer started reading it (compare-and-set under
-- the row's lock), so an instance that lost its partitions, however late it wakes, can
-- never commit. Kafka's own committed offsets follow, for lag tools only.

CREATE TABLE consumer_offsets (
    group_id    text        NOT NULL,
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    -- The offset of the next message to write: one past the last one written.
    next_offset bigint      NOT NULL CHECK (next_offset >= 0),
    -- Messages written through this row, orders and dead letters: over a partition read
    -- once from its start, exactly next_offset (less any gaps in the offsets).
    messages    bigint      NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, partition)
);

-- Where each order's stored version came from. A message replaces an order only if it
-- comes from a later offset of the same partition, or from another partition (the last
-- one committed wins); a replay of older messages leaves it alone. NULL for orders
-- stored before this migration and after `orders-svc reset-offsets`: any message
-- replaces those.
ALTER TABLE orders
    ADD COLUMN source_topic     text,
    ADD COLUMN source_partition integer,
    ADD COLUMN source_offset    bigint;

-- A dead letter is one message at one position. A topic deleted and created again reuses
-- positions, so the payload's digest is part of the key: a redelivered message is not
-- stored twice, and a new message at an old position is not lost.
ALTER TABLE rejected_messages DROP CONSTRAINT rejected_messages_topic_partition_offset_key;
ALTER TABLE rejected_messages ADD CONSTRAINT rejected_messages_position_payload_key
    UNIQUE (topic, partition, "offset", payload_sha256);
