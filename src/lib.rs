//! orders-svc: takes orders from a Kafka topic, keeps them in PostgreSQL and serves them
//! over HTTP from an in-memory cache. `service::Service::start` runs the whole pipeline
//! in-process; the binary and the integration tests both use it.
//!
//! The modules in pipeline order, each using only those before it: `config`, `model`
//! (types, decoding, validation) and `runtime` (health, the stop signal, backoff); `store`
//! (all SQL); `cache`; `metrics`; `consumer` (the Kafka loop), `listener` (the warm-up
//! and change notifications), `http` and `pages`; and `service`, which starts and stops
//! them and which nothing uses. `tools` holds what the commands, tests and benchmarks use
//! to feed and inspect the service; the pipeline never uses it.

pub mod cache;
pub mod config;
pub mod consumer;
#[cfg(debug_assertions)]
mod fault;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod model;
pub mod pages;
pub mod runtime;
pub mod service;
pub mod store;
pub mod tools;
