//! Tools around the service, not part of its pipeline: a generator of realistic orders,
//! a Kafka producer to put them on the topic, the text of the `rejected` and
//! `reset-offsets` commands, and an HTTP probe. The binary's commands, the integration tests and the benchmarks use
//! them; nothing in the pipeline does.

pub mod generate;
pub mod offsets;
pub mod probe;
pub mod produce;
pub mod rejected;
