//! `orders-svc probe`: asks the running service at `http.addr` one path and fails unless
//! it answers 200.

use std::time::Duration;

use orders_svc::config::Config;
use orders_svc::tools::probe;

#[derive(clap::Args)]
pub struct Args {
    /// Path to ask instead of /readyz, such as /healthz.
    #[arg(long, default_value = "/readyz")]
    path: String,
}

pub fn run(args: Args, config: &Config) -> anyhow::Result<()> {
    let path = args.path;
    let (status, body) = probe::get(config.http.addr, &path, Duration::from_secs(3))?;
    if status != 200 {
        anyhow::bail!("{path} answered {status}: {}", body.trim());
    }
    Ok(())
}
