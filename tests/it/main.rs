//! Integration tests against a real PostgreSQL and a real Apache Kafka broker, as
//! brought up by `scripts/stack up`. One binary, one module per area.

#[path = "../support/mod.rs"]
#[macro_use]
mod support;

mod api;
mod broker;
mod browser;
mod coherence;
mod connections;
mod exactly_once;
mod ingest;
mod migration;
mod operations;
mod pipeline;
mod prometheus;
mod read_path;
mod reads;
mod reliability;
mod security;
mod store;
