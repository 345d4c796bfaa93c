//! `vigil migrate`: applies the database migrations (prediction log, monitoring, registry) and
//! says what the database holds, for deployments that migrate in a step of their own before
//! the services start.

use anyhow::{Context, Result};
use clap::Args;
use vigil_store::{Backend, PredictionStore};

#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// The database: postgres://... or sqlite://...
    #[arg(long, env = "VIGIL_DATABASE_URL", hide_env_values = true, default_value = "postgres://127.0.0.1/vigil")]
    pub database_url: String,
}

pub async fn run(args: MigrateArgs) -> Result<u8> {
    let url = crate::query::redact(&args.database_url);
    let backend = Backend::connect(&args.database_url).await.with_context(|| format!("--database-url {url}"))?;
    vigil_store::with_store!(backend, store => store.migrate().await)
        .with_context(|| format!("cannot migrate the database at {url}"))?;
    println!("{url}: migrations applied");
    Ok(0)
}
