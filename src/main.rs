//! The `orders-svc` binary: parses the command line, loads the config, starts the
//! service, waits for SIGINT or SIGTERM and shuts down in order.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use log::{error, info};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use orders_svc::Service;
use orders_svc::config::Config;
use orders_svc::produce::Producer;

#[derive(Parser)]
#[command(version, about = "Takes orders from Kafka, keeps them in PostgreSQL, serves them over HTTP")]
struct Cli {
    /// Configuration file (TOML). Without it, defaults that match the local stack.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Put order JSON files on the topic, each keyed by its order_uid.
    Produce {
        /// JSON files to send, one message each.
        #[arg(long = "file", value_name = "FILE", required = true)]
        files: Vec<PathBuf>,
        /// Brokers to send to (default: kafka.brokers from the config).
        #[arg(long)]
        brokers: Option<String>,
        /// Topic to send to (default: kafka.topic from the config).
        #[arg(long)]
        topic: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("orders-svc: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    match cli.command {
        None => serve(config),
        Some(Command::Produce { files, brokers, topic }) => produce(&config, &files, brokers, topic),
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("install signal handlers")?;
    info!("event=starting version={}", env!("CARGO_PKG_VERSION"));
    let service = Service::start(config)?;
    info!("event=started http={}", service.http_addr());
    let signal = signals.forever().next().unwrap_or(SIGTERM);
    info!("event=stopping signal={signal}");
    // A second signal means: stop now, without finishing the batch in hand.
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            error!("event=forced_exit reason=second_signal");
            std::process::exit(1);
        }
    });
    service.shutdown();
    Ok(())
}

fn produce(config: &Config, files: &[PathBuf], brokers: Option<String>, topic: Option<String>) -> anyhow::Result<()> {
    let brokers = brokers.unwrap_or_else(|| config.kafka.brokers.clone());
    let topic = topic.unwrap_or_else(|| config.kafka.topic.clone());
    let producer = Producer::new(&brokers, &topic)?;
    for file in files {
        producer.send_order_json(&read(file)?)?;
    }
    let delivered = producer.flush()?;
    info!("event=produced messages={delivered} topic={topic} brokers={brokers}");
    Ok(())
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("read {}", path.display()))
}
