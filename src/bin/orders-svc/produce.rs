//! `orders-svc produce`: puts JSON files or generated orders on the topic with
//! `tools::produce`, and writes the uids of the generated valid orders.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use log::info;
use orders_svc::config::Config;
use orders_svc::tools::produce::{self, Plan, Producer};

#[derive(clap::Args)]
pub struct Args {
    /// JSON files to send, one message each.
    #[arg(long = "file", value_name = "FILE", required_unless_present = "count", conflicts_with = "count")]
    files: Vec<PathBuf>,
    /// How many orders to generate and send.
    #[arg(long)]
    count: Option<u64>,
    /// Seed of the generator: the same seed gives the same orders.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Most items in a generated order (at least one).
    #[arg(long, default_value_t = 5)]
    max_items: u64,
    /// Share of generated messages that are bad on purpose (0 to 1), each kind of
    /// bad message in turn.
    #[arg(long, default_value_t = 0.0, value_parser = share)]
    invalid_rate: f64,
    /// Messages per second at most (default: as fast as the broker takes them).
    #[arg(long)]
    rate: Option<u64>,
    /// Write the uids of the valid orders to FILE instead of standard output.
    #[arg(long, value_name = "FILE")]
    uids: Option<PathBuf>,
    /// Brokers to send to (default: kafka.brokers from the config).
    #[arg(long)]
    brokers: Option<String>,
    /// Topic to send to (default: kafka.topic from the config).
    #[arg(long)]
    topic: Option<String>,
}

pub fn run(args: Args, config: &Config) -> anyhow::Result<()> {
    let Args { files, count, seed, max_items, invalid_rate, rate, uids, brokers, topic } = args;
    let brokers = brokers.unwrap_or_else(|| config.kafka.brokers.clone());
    let topic = topic.unwrap_or_else(|| config.kafka.topic.clone());
    let kafka = orders_svc::config::Kafka { brokers: brokers.clone(), ..config.kafka.clone() };
    let producer = Producer::with_config(&kafka, &topic, &[])?;
    match count {
        Some(count) => {
            let mut out: Box<dyn Write> = match &uids {
                Some(path) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?,
                )),
                None => Box::new(std::io::stdout().lock()),
            };
            let plan = Plan { count, seed, max_items, invalid_rate, rate };
            let sent = produce::send_generated(&producer, &plan, &mut out)?;
            out.flush().context("write uids")?;
            info!("event=generated valid={} invalid={} seed={seed}", sent.valid, sent.invalid);
        }
        None => {
            for file in &files {
                producer.send_order_json(&read(file)?)?;
            }
        }
    }
    let delivered = producer.flush()?;
    info!("event=produced messages={delivered} topic={topic} brokers={brokers}");
    Ok(())
}

/// A share: a number from 0 to 1.
fn share(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("expected a number from 0 to 1, found {text:?}")),
    }
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("read {}", path.display()))
}
