//! The `orders-svc` binary: parses the command line, loads the config, starts the
//! service, waits for SIGINT or SIGTERM and shuts down in order.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use log::{error, info};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use std::time::Duration;

use orders_svc::config::Config;
use orders_svc::produce::{self, Plan, Producer};
use orders_svc::rejected::{self, Target};
use orders_svc::service::Service;
use orders_svc::store;

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
    /// Put orders on the topic, each keyed by its order_uid: JSON files, or generated
    /// orders that pass every validation rule.
    Produce {
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
    },
    /// Ask a running service whether it is ready (GET /readyz on http.addr); exit 0 if
    /// so, 1 with the reason if not. For container healthchecks.
    Probe {
        /// Path to ask instead of /readyz, such as /healthz.
        #[arg(long, default_value = "/readyz")]
        path: String,
    },
    /// Inspect and replay the messages kept in `rejected_messages`.
    Rejected {
        #[command(subcommand)]
        action: RejectedAction,
    },
}

#[derive(Subcommand)]
enum RejectedAction {
    /// The newest dead letters, one line each.
    List {
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Everything kept of one dead letter, its payload included.
    Show { id: i64 },
    /// Run dead letters through validation again (with the config's rules) and store
    /// those that now pass as orders.
    Replay {
        /// The dead letter to replay.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<i64>,
        /// Replay every dead letter not replayed yet.
        #[arg(long)]
        all: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
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
        Some(Command::Produce { files, count, seed, max_items, invalid_rate, rate, uids, brokers, topic }) => {
            let brokers = brokers.unwrap_or_else(|| config.kafka.brokers.clone());
            let topic = topic.unwrap_or_else(|| config.kafka.topic.clone());
            let producer = Producer::new(&brokers, &topic)?;
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
        Some(Command::Probe { path }) => {
            let (status, body) = orders_svc::http::probe(config.http.addr, &path, Duration::from_secs(3))?;
            if status != 200 {
                anyhow::bail!("{path} answered {status}: {}", body.trim());
            }
            Ok(())
        }
        Some(Command::Rejected { action }) => {
            let mut client = store::connect(&config.database)?;
            let text = match action {
                RejectedAction::List { limit } => rejected::list(&mut client, limit)?,
                RejectedAction::Show { id } => rejected::show(&mut client, id)?,
                RejectedAction::Replay { id: Some(id), .. } => {
                    rejected::replay(&mut client, Target::One(id), &config.validation)?
                }
                RejectedAction::Replay { id: None, .. } => {
                    rejected::replay(&mut client, Target::All, &config.validation)?
                }
            };
            print!("{text}");
            Ok(())
        }
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("install signal handlers")?;
    info!("event=starting version={}", env!("CARGO_PKG_VERSION"));
    let service = Service::spawn(config)?;
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
