//! `--database-url`: the registry and prediction log the database commands open.

use anyhow::{Context, Result};
use clap::Args;
use vigil_store::Backend;

/// The database a command opens (also from `VIGIL_DATABASE_URL`, never shown in `--help`).
#[derive(Args, Debug)]
pub struct DatabaseArg {
    /// The database: postgres://... or sqlite://... (the embedded default's is
    /// sqlite://.vigil/vigil.db).
    #[arg(
        long,
        env = "VIGIL_DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://127.0.0.1/vigil",
        global = true
    )]
    pub database_url: String,
}

impl DatabaseArg {
    /// Opens the database; the error names the URL with its credentials hidden.
    pub async fn connect(&self) -> Result<Backend> {
        Backend::connect(&self.database_url)
            .await
            .with_context(|| format!("--database-url {}", vigil_store::redact_url(&self.database_url)))
    }
}
