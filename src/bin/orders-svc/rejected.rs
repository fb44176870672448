//! `orders-svc rejected …`: prints what `tools::rejected` says about the dead letters.

use clap::Subcommand;
use orders_svc::config::Config;
use orders_svc::store;
use orders_svc::tools::rejected::{self, Target};

#[derive(Subcommand)]
pub enum Action {
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

pub fn run(action: Action, config: &Config) -> anyhow::Result<()> {
    let mut client = store::connect(&config.database)?;
    let text = match action {
        Action::List { limit } => rejected::list(&mut client, limit)?,
        Action::Show { id } => rejected::show(&mut client, id)?,
        Action::Replay { id: Some(id), .. } => rejected::replay(&mut client, Target::One(id), &config.validation)?,
        Action::Replay { id: None, .. } => rejected::replay(&mut client, Target::All, &config.validation)?,
    };
    print!("{text}");
    Ok(())
}
