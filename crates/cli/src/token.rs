//! `vigil token new`: a random bearer token for a client, and the entry that grants it its
//! scopes in a server's tokens file (which keeps only the token's SHA-256).

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use vigil_security::Scope;

#[derive(Args, Debug)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Make a token: the token goes to the client (stdout, first line), the [[token]] entry into
    /// the server's `security.auth.tokens_file`.
    New {
        /// Who holds it (shown in logs, refusals and audit entries), e.g. line-3 or maria.
        #[arg(long)]
        name: String,
        /// What it may do: infer, analyst, operator, admin, control (repeat or comma-separate).
        #[arg(long = "scope", value_delimiter = ',', required = true)]
        scopes: Vec<String>,
    },
}

pub fn run(args: TokenArgs) -> Result<u8> {
    match args.command {
        TokenCommand::New { name, scopes } => {
            let names: Vec<&str> = Scope::ALL.iter().map(|s| s.name()).collect();
            let mut parsed = Vec::new();
            for scope in &scopes {
                match Scope::parse(scope.trim()) {
                    Some(s) if !parsed.contains(&s) => parsed.push(s),
                    Some(_) => {}
                    None => bail!("unknown scope '{scope}' (one of: {})", names.join(", ")),
                }
            }
            if name.trim().is_empty() || name.chars().any(char::is_control) {
                bail!("--name must be a non-empty name without control characters");
            }
            let (token, hash) = vigil_security::auth::new_token();
            println!("{token}");
            println!();
            println!("# add to the server's tokens file (security.auth.tokens_file); the token itself is not kept:");
            print!("{}", vigil_security::auth::token_entry(&name, &hash, &parsed));
            Ok(0)
        }
    }
}
