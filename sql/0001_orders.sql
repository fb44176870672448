-- Orders as they arrive from Kafka, normalized into one row per order, delivery and
-- payment and one row per item. Money, ids and counters are integers; `date_created`
-- is a timestamptz. `content_sha256` fingerprints the canonical JSON of the order so a
-- redelivered message can be recognised without comparing every column.

CREATE TABLE orders (
    order_uid          text        PRIMARY KEY,
    track_number       text        NOT NULL,
    entry              text        NOT NULL,
    locale             text        NOT NULL,
    internal_signature text        NOT NULL,
    customer_id        text        NOT NULL,
    delivery_service   text        NOT NULL,
    shardkey           text        NOT NULL,
    sm_id              bigint      NOT NULL,
    date_created       timestamptz NOT NULL,
    oof_shard          text        NOT NULL,
    content_sha256     bytea       NOT NULL,
    ingested_at        timestamptz NOT NULL DEFAULT now()
);

-- Warming the cache reads the most recently ingested orders first.
CREATE INDEX orders_ingested_at_idx ON orders (ingested_at DESC);

CREATE TABLE deliveries (
    order_uid text PRIMARY KEY REFERENCES orders (order_uid) ON DELETE CASCADE,
    name      text NOT NULL,
    phone     text NOT NULL,
    zip       text NOT NULL,
    city      text NOT NULL,
    address   text NOT NULL,
    region    text NOT NULL,
    email     text NOT NULL
);

CREATE TABLE payments (
    order_uid     text   PRIMARY KEY REFERENCES orders (order_uid) ON DELETE CASCADE,
    transaction   text   NOT NULL,
    request_id    text   NOT NULL,
    currency      text   NOT NULL,
    provider      text   NOT NULL,
    amount        bigint NOT NULL,
    payment_dt    bigint NOT NULL,
    bank          text   NOT NULL,
    delivery_cost bigint NOT NULL,
    goods_total   bigint NOT NULL,
    custom_fee    bigint NOT NULL
);

-- `position` keeps the items in the order the message listed them.
CREATE TABLE order_items (
    order_uid    text    NOT NULL REFERENCES orders (order_uid) ON DELETE CASCADE,
    position     integer NOT NULL,
    chrt_id      bigint  NOT NULL,
    track_number text    NOT NULL,
    price        bigint  NOT NULL,
    rid          text    NOT NULL,
    name         text    NOT NULL,
    sale         integer NOT NULL,
    size         text    NOT NULL,
    total_price  bigint  NOT NULL,
    nm_id        bigint  NOT NULL,
    brand        text    NOT NULL,
    status       integer NOT NULL,
    PRIMARY KEY (order_uid, position)
);

-- Every message that could not become an order, kept with why. One row per Kafka
-- position, so a redelivered bad message is not stored twice.
CREATE TABLE rejected_messages (
    id             bigserial   PRIMARY KEY,
    topic          text        NOT NULL,
    partition      integer     NOT NULL,
    "offset"       bigint      NOT NULL,
    message_key    bytea,
    payload        bytea       NOT NULL,
    payload_size   bigint      NOT NULL,
    payload_sha256 bytea       NOT NULL,
    rule           text        NOT NULL,
    detail         text        NOT NULL,
    rejected_at    timestamptz NOT NULL DEFAULT now(),
    replayed_at    timestamptz,
    UNIQUE (topic, partition, "offset")
);
