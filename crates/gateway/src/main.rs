//! `trunkline`: the gateway binary.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use trunkline_gateway::config::{Config, Secrets};

/// Trunkline: a SIP trunk ↔ ElevenLabs Conversational AI voice gateway.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a configuration file and explain what it does.
    CheckConfig {
        /// The TOML file.
        #[arg(long, default_value = "config/trunkline.toml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => check_config(&config),
    }
}

fn check_config(path: &std::path::Path) -> ExitCode {
    let cfg = match Config::load(path).and_then(|c| c.validate().map(|()| c)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let secrets = Secrets::from_env(|k| std::env::var(k).ok());
    println!("{}: OK\n", path.display());
    print!("{}", cfg.explain(&secrets));
    ExitCode::SUCCESS
}
