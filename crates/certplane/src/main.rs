//! The `certplane` binary: parses arguments and hands over to the library crates.

#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use certplane_cli::{
    ApiArgs, AppsCommand, CertsCommand, Command as CustomerCommand, EdgesCommand, OrgsCommand,
};
use certplane_config::Config;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "certplane",
    version,
    about = "Custom hostnames and their TLS certificates for a hosting platform"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole platform on this machine: API, background checks, propagation and one edge.
    Serve {
        /// TOML configuration file; every key is optional.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run one more edge proxy that follows a control plane.
    Edge {
        #[arg(long = "control-plane")]
        control_plane: String,
        #[arg(long, env = "CERTPLANE_TOKEN", hide_env_values = true)]
        token: String,
        #[arg(long)]
        config: Option<PathBuf>,
        /// The id the control plane knows this edge by (default: edge.id, else
        /// `<host name>:<https port>`).
        #[arg(long)]
        id: Option<String>,
    },
    /// Run the challenge-zone DNS server alone (it also runs inside `serve`), over the
    /// configured database.
    Dns {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Hostnames and their certificates.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Apps.
    Apps {
        #[command(subcommand)]
        command: AppsCommand,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Master keys that seal stored private keys (operator).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Orgs (admin).
    Orgs {
        #[command(subcommand)]
        command: OrgsCommand,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Edges and edge tokens (admin).
    Edges {
        #[command(subcommand)]
        command: EdgesCommand,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Add a new master key and re-seal every stored private key under it. Run it where
    /// `serve` runs (same config); old keys stay in the key file.
    Rotate {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    match cli.command {
        Command::Serve { config } => {
            init_logging();
            let config = match Config::load(config.as_deref(), |k| std::env::var(k).ok()) {
                Ok(c) => c,
                Err(e) => return fail(&e.to_string()),
            };
            let served = runtime.block_on(certplane_server::serve(
                config,
                certplane_server::shutdown_signal(),
                |_| {},
            ));
            match served {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e.to_string()),
            }
        }
        Command::Dns { config } => {
            init_logging();
            let config = match Config::load(config.as_deref(), |k| std::env::var(k).ok()) {
                Ok(c) => c,
                Err(e) => return fail(&e.to_string()),
            };
            match runtime.block_on(certplane_server::serve_dns(
                config,
                certplane_server::shutdown_signal(),
            )) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e.to_string()),
            }
        }
        Command::Keys {
            command: KeysCommand::Rotate { config },
        } => {
            let config = match Config::load(config.as_deref(), |k| std::env::var(k).ok()) {
                Ok(c) => c,
                Err(e) => return fail(&e.to_string()),
            };
            match runtime.block_on(certplane_server::rotate_keys(&config)) {
                Ok((id, count)) => {
                    println!("New master key {id} is current; re-sealed {count} private key(s).");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e.to_string()),
            }
        }
        Command::Edge {
            control_plane,
            token,
            config,
            id,
        } => {
            init_logging();
            let mut config = match Config::load(config.as_deref(), |k| std::env::var(k).ok()) {
                Ok(c) => c,
                Err(e) => return fail(&e.to_string()),
            };
            if let Some(id) = id {
                config.edge.id = id;
            }
            let options = certplane_server::edge_options(&config, control_plane, token);
            let ran = runtime.block_on(certplane_edge::run(
                options,
                certplane_server::shutdown_signal(),
                |addrs| {
                    eprintln!(
                        "edge serving: https {} http {} admin {}",
                        addrs.https,
                        addrs.http,
                        addrs.admin.map(|a| a.to_string()).unwrap_or_default()
                    )
                },
            ));
            match ran {
                Ok(()) | Err(certplane_edge::EdgeError::StoppedBeforeReady) => ExitCode::SUCCESS,
                Err(e) => fail(&e.to_string()),
            }
        }
        Command::Certs { command, api } => {
            customer(&runtime, CustomerCommand::Certs(command), &api)
        }
        Command::Apps { command, api } => customer(&runtime, CustomerCommand::Apps(command), &api),
        Command::Orgs { command, api } => customer(&runtime, CustomerCommand::Orgs(command), &api),
        Command::Edges { command, api } => {
            customer(&runtime, CustomerCommand::Edges(command), &api)
        }
    }
}

fn customer(
    runtime: &tokio::runtime::Runtime,
    command: CustomerCommand,
    api: &ApiArgs,
) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match runtime.block_on(certplane_cli::run(command, api, &mut out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string()),
    }
}

fn fail(reason: &str) -> ExitCode {
    // The contract's one-line reason, whatever the message held.
    let line: Vec<&str> = reason.split_whitespace().collect();
    eprintln!("error: {}", line.join(" "));
    ExitCode::FAILURE
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}
