//! The `orders-svc` binary: parses the command line, loads the config, starts the logger,
//! then runs the service until SIGINT or SIGTERM, or one of the commands.

mod probe;
mod produce;
mod rejected;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use log::{error, info};
use orders_svc::config::Config;
use orders_svc::service::Service;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

#[derive(Parser)]
#[command(version, about = "Takes orders from Kafka, keeps them in PostgreSQL, serves them over HTTP")]
struct Cli {
    /// Configuration file (TOML). Without it, defaults that match the local stack.
    /// `ORDERS_<SECTION>_<KEY>` environment variables override it.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Put orders on the topic, each keyed by its order_uid: JSON files, or generated
    /// orders that pass every validation rule.
    Produce(produce::Args),
    /// Ask a running service whether it is ready (GET /readyz on http.addr); exit 0 if
    /// so, 1 with the reason if not. For container healthchecks.
    Probe(probe::Args),
    /// Inspect and replay the messages kept in `rejected_messages`.
    Rejected {
        #[command(subcommand)]
        action: rejected::Action,
    },
    /// Set the group's offsets stored in PostgreSQL to the start of each partition of the
    /// topic, and let the next message for each stored order replace it: after the topic
    /// was deleted and created again, or the broker lost its data.
    ResetOffsets,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Milliseconds: at hundreds of batches a second, a second says little.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("orders-svc: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(cli.config.as_deref())?;
    match cli.command {
        None => serve(config),
        Some(Command::Produce(args)) => produce::run(args, &config),
        Some(Command::Probe(args)) => probe::run(args, &config),
        Some(Command::Rejected { action }) => rejected::run(action, &config),
        Some(Command::ResetOffsets) => {
            print!("{}", orders_svc::tools::offsets::reset(&config)?);
            Ok(())
        }
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("install signal handlers")?;
    info!("event=starting version={}", env!("CARGO_PKG_VERSION"));
    raise_open_files_limit(config.http.max_connections);
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

/// Each HTTP connection holds two descriptors. The soft limit on open files (often 1024)
/// is raised as far as the hard limit allows; if that is still too low for
/// `http.max_connections`, the log says so, and past it accepting fails until
/// connections close.
fn raise_open_files_limit(max_connections: usize) {
    let needed = (2 * max_connections + 256) as libc::rlim_t;
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read or write the struct they are given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur < needed && limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit { rlim_cur: needed.min(limit.rlim_max), rlim_max: limit.rlim_max };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    if limit.rlim_cur < needed {
        log::warn!(
            "event=open_files_limit_low limit={} needed={needed} max_connections={max_connections} \
             detail=\"raise the limit (ulimit -n, LimitNOFILE=) or lower http.max_connections\"",
            limit.rlim_cur
        );
    }
}
