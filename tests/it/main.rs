//! Integration tests against a real PostgreSQL and a real Kafka-compatible broker, as
//! brought up by `scripts/stack up`. One binary, one module per area.

mod support;

mod browser;
mod ingest;
mod operations;
mod pipeline;
mod read_path;
mod reliability;
