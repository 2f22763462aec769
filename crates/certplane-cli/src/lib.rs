//! The customer CLI: `certplane certs …`, `certplane apps …`, `certplane orgs …`.
//!
//! Each command is one or a few API calls through [`certplane_client`], printed as aligned
//! tables for people or as the API's JSON with `--json`. This crate holds the argument
//! definitions and the printing; the binary only dispatches to [`run`].

#![forbid(unsafe_code)]

mod output;

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use certplane_api_types::{CertificateDetail, CertificateSummary};
use certplane_client::{Client, ClientError, DeleteScope};
use clap::{Args, Subcommand};
use serde::Serialize;

pub use output::{dns_records, table};

/// Where the API is and who is calling; every customer command takes these.
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// The certplane API's URL.
    #[arg(
        long,
        env = "CERTPLANE_API_URL",
        default_value = "http://127.0.0.1:4000",
        global = true
    )]
    pub api_url: String,
    /// An API token (an org's, or the admin token).
    #[arg(long, env = "CERTPLANE_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

/// The app a certificate command works on.
#[derive(Debug, Clone, Args)]
pub struct AppArg {
    /// The app's name.
    #[arg(short = 'a', long = "app", env = "CERTPLANE_APP")]
    pub app: String,
}

#[derive(Debug, Clone, Subcommand)]
pub enum CertsCommand {
    /// List the app's hostnames and their status.
    List {
        #[command(flatten)]
        app: AppArg,
    },
    /// Add a hostname and ask for an ACME certificate; prints the DNS records to set.
    Add {
        hostname: String,
        #[command(flatten)]
        app: AppArg,
    },
    /// Import your own certificate for a hostname.
    Import {
        hostname: String,
        /// PEM file: the certificate, then its intermediates.
        #[arg(long)]
        fullchain: PathBuf,
        /// PEM file: the unencrypted private key.
        #[arg(long = "private-key")]
        private_key: PathBuf,
        #[command(flatten)]
        app: AppArg,
    },
    /// Run the DNS checks for a hostname now.
    Check {
        hostname: String,
        #[command(flatten)]
        app: AppArg,
    },
    /// Show a hostname's status, certificates and DNS records.
    Show {
        hostname: String,
        #[command(flatten)]
        app: AppArg,
    },
    /// Show the DNS records to set for a hostname.
    Setup {
        hostname: String,
        #[command(flatten)]
        app: AppArg,
    },
    /// Remove a hostname, or only its ACME or custom certificate.
    Remove {
        hostname: String,
        #[command(flatten)]
        app: AppArg,
        /// Only the ACME certificate (a custom one stays).
        #[arg(long, conflicts_with = "custom")]
        acme: bool,
        /// Only the custom certificate (ACME stays).
        #[arg(long)]
        custom: bool,
        /// Do not ask for confirmation.
        #[arg(short = 'y', long)]
        yes: bool,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum AppsCommand {
    /// Create an app with its dedicated IPv6 address.
    Create {
        name: String,
        /// A backend address `host:port`; repeat for several.
        #[arg(long = "backend")]
        backends: Vec<String>,
        /// Also give the app an IPv4 address of its own (from the operator's pool).
        #[arg(long)]
        dedicated_ipv4: bool,
    },
    /// List your apps.
    List,
    /// Show an app's addresses and DNS targets.
    Show { name: String },
    /// Delete an app and release its hostnames.
    Delete {
        name: String,
        /// Do not ask for confirmation.
        #[arg(short = 'y', long)]
        yes: bool,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum OrgsCommand {
    /// Create an org (admin token) and print its API token, once.
    Create {
        name: String,
        /// Print only the new org's API token (for `export CERTPLANE_TOKEN=$(…)`).
        #[arg(long)]
        token_only: bool,
    },
}

/// `certplane edges …` (admin).
#[derive(Debug, Clone, Subcommand)]
pub enum EdgesCommand {
    /// Each edge: the revision it serves, when it was last heard from, whether it is connected.
    List,
    /// Create an edge token for `certplane edge --token` and print it, once.
    Token,
}

/// Which customer command to run.
#[derive(Debug, Clone)]
pub enum Command {
    Certs(CertsCommand),
    Apps(AppsCommand),
    Orgs(OrgsCommand),
    Edges(EdgesCommand),
}

/// Why a command failed; printed as one line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    #[error(transparent)]
    Api(#[from] ClientError),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
    #[error("no API token: pass --token or set CERTPLANE_TOKEN")]
    NoToken,
    #[error("not removed: {0}")]
    NotConfirmed(String),
}

/// Runs one customer command, printing to `out`.
pub async fn run(command: Command, api: &ApiArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let token = api
        .token
        .clone()
        .filter(|t| !t.is_empty())
        .ok_or(CliError::NoToken)?;
    let client = Client::new(&api.api_url, Some(token))?;
    match command {
        Command::Certs(c) => certs(&client, c, api.json, out).await,
        Command::Apps(c) => apps(&client, c, api.json, out).await,
        Command::Orgs(c) => orgs(&client, c, api.json, out).await,
        Command::Edges(c) => edges(&client, c, api.json, out).await,
    }
}

async fn edges(
    client: &Client,
    command: EdgesCommand,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match command {
        EdgesCommand::List => {
            let list = client.edges().await?;
            if json {
                return print_json(out, &list);
            }
            let rows: Vec<Vec<String>> = list
                .edges
                .iter()
                .map(|e| {
                    vec![
                        e.id.clone(),
                        e.revision.to_string(),
                        if e.revision >= list.revision {
                            "yes"
                        } else {
                            "no"
                        }
                        .to_owned(),
                        yes_no(e.connected),
                        e.last_seen.clone(),
                    ]
                })
                .collect();
            write!(
                out,
                "{}",
                output::table(
                    &["EDGE", "REVISION", "CURRENT", "CONNECTED", "LAST SEEN"],
                    &rows
                )
            )?;
            writeln!(out, "Latest revision: {}", list.revision)?;
        }
        EdgesCommand::Token => {
            let created = client.create_edge_token().await?;
            if json {
                return print_json(out, &created);
            }
            writeln!(out, "{}", created.token)?;
        }
    }
    Ok(())
}

fn print_json(out: &mut dyn Write, value: &impl Serialize) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| CliError::Output(e.into()))?;
    writeln!(out, "{text}")?;
    Ok(())
}

async fn certs(
    client: &Client,
    command: CertsCommand,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match command {
        CertsCommand::List { app } => {
            let mut all: Vec<CertificateSummary> = Vec::new();
            let mut cursor: Option<String> = None;
            let total = loop {
                let page = client
                    .certificates(&app.app, cursor.as_deref(), 500)
                    .await?;
                all.extend(page.certificates);
                match page.next_cursor {
                    Some(next) => cursor = Some(next),
                    None => break page.total_count,
                }
            };
            if json {
                return print_json(
                    out,
                    &serde_json::json!({"certificates": all, "total_count": total}),
                );
            }
            if all.is_empty() {
                writeln!(
                    out,
                    "No hostnames on {}. Add one with `certplane certs add HOSTNAME -a {}`.",
                    app.app, app.app
                )?;
                return Ok(());
            }
            let rows: Vec<Vec<String>> = all
                .iter()
                .map(|c| {
                    vec![
                        c.hostname.clone(),
                        c.status.as_str().to_owned(),
                        yes_no(c.configured),
                        yes_no(c.acme_requested),
                        c.created_at.clone(),
                    ]
                })
                .collect();
            write!(
                out,
                "{}",
                table(
                    &["HOSTNAME", "STATUS", "CONFIGURED", "ACME", "ADDED"],
                    &rows
                )
            )?;
        }
        CertsCommand::Add { hostname, app } => {
            let detail = client.add_acme(&app.app, &hostname).await?;
            if json {
                return print_json(out, &detail);
            }
            writeln!(
                out,
                "Added {} to {} (status: {}).\n",
                detail.hostname,
                detail.app,
                detail.status.as_str()
            )?;
            write!(out, "{}", dns_records(&detail))?;
        }
        CertsCommand::Import {
            hostname,
            fullchain,
            private_key,
            app,
        } => {
            let read = |path: &PathBuf| {
                std::fs::read_to_string(path).map_err(|source| CliError::Read {
                    path: path.clone(),
                    source,
                })
            };
            let (chain, key) = (read(&fullchain)?, read(&private_key)?);
            let detail = client
                .import_custom(&app.app, &hostname, &chain, &key)
                .await?;
            if json {
                return print_json(out, &detail);
            }
            writeln!(
                out,
                "Imported a certificate for {} (status: {}).",
                detail.hostname,
                detail.status.as_str()
            )?;
            for w in &detail.warnings {
                writeln!(
                    out,
                    "Warning {}: {}\n  -> {}",
                    w.code, w.message, w.remediation
                )?;
            }
            let next = match detail.served.as_deref() {
                Some("custom") => "It is served now.".to_owned(),
                _ if !detail.validation.ownership_verified => format!(
                    "It is served once ownership is verified: see `certplane certs setup {} -a {}`.",
                    detail.hostname, app.app
                ),
                _ => "It is not served: see `certplane certs show`.".to_owned(),
            };
            writeln!(out, "{next}")?;
        }
        CertsCommand::Check { hostname, app } => {
            let detail = client.check(&app.app, &hostname).await?;
            if json {
                return print_json(out, &detail);
            }
            show(&detail, out, false)?;
        }
        CertsCommand::Show { hostname, app } => {
            let detail = client.certificate(&app.app, &hostname).await?;
            if json {
                return print_json(out, &detail);
            }
            show(&detail, out, true)?;
        }
        CertsCommand::Setup { hostname, app } => {
            let detail = client.certificate(&app.app, &hostname).await?;
            if json {
                return print_json(out, &detail.dns_requirements);
            }
            write!(out, "{}", dns_records(&detail))?;
        }
        CertsCommand::Remove {
            hostname,
            app,
            acme,
            custom,
            yes,
        } => {
            let (scope, what) = match (acme, custom) {
                (true, _) => (
                    DeleteScope::Acme,
                    format!("the ACME certificate of {hostname}"),
                ),
                (_, true) => (
                    DeleteScope::Custom,
                    format!("the custom certificate of {hostname}"),
                ),
                _ => (
                    DeleteScope::All,
                    format!("{hostname} and all its certificates"),
                ),
            };
            confirm(yes, &format!("Remove {what} from {}?", app.app))?;
            let left = client
                .delete_certificate(&app.app, &hostname, scope)
                .await?;
            if json {
                return print_json(out, &serde_json::json!({"removed": true, "hostname": left}));
            }
            match left {
                None => writeln!(out, "Removed {hostname} from {}.", app.app)?,
                Some(detail) => writeln!(
                    out,
                    "Removed {what}; {} stays with status {}.",
                    detail.hostname,
                    detail.status.as_str()
                )?,
            }
        }
    }
    Ok(())
}

fn show(detail: &CertificateDetail, out: &mut dyn Write, with_setup: bool) -> Result<(), CliError> {
    let proofs = if detail.ownership_proofs.is_empty() {
        String::new()
    } else {
        format!(" (by {})", detail.ownership_proofs.join(", "))
    };
    let mut fields = vec![
        ("Hostname", detail.hostname.clone()),
        ("App", detail.app.clone()),
        ("Status", detail.status.as_str().to_owned()),
        (
            "Ownership verified",
            format!("{}{proofs}", yes_no(detail.validation.ownership_verified)),
        ),
        ("Configured", yes_no(detail.configured)),
        ("ACME requested", yes_no(detail.acme_requested)),
    ];
    if detail.is_proxied {
        let by = detail
            .proxy_provider
            .as_deref()
            .map(|p| format!(" ({p})"))
            .unwrap_or_default();
        fields.push(("Proxied", format!("yes{by}")));
    }
    fields.push((
        "Last checked",
        detail.checked_at.clone().unwrap_or_else(|| "never".into()),
    ));
    if let Some(next) = &detail.next_check_at {
        fields.push(("Next check", next.clone()));
    }
    if let Some(until) = &detail.rate_limited_until {
        fields.push(("Rate limited until", until.clone()));
    }
    if let Some(order) = &detail.acme_order {
        let renewal = if order.renewal { ", renewal" } else { "" };
        fields.push((
            "ACME order",
            format!(
                "{} ({} {}{renewal}, {})",
                order.state, order.key_type, order.challenge, order.updated_at
            ),
        ));
    }
    if let Some(next) = &detail.next_issuance_at {
        fields.push(("Next issuance", next.clone()));
    }
    if let Some(ca) = &detail.certificate_authority
        && detail.acme_requested
    {
        fields.push(("Certificate authority", ca.clone()));
    }
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in &fields {
        writeln!(out, "{k:<width$}  {v}")?;
    }
    writeln!(out, "\n{}\n", detail.status_detail)?;
    if let Some(found) = &detail.dns_records {
        writeln!(out, "DNS records found:")?;
        let req = &detail.dns_requirements;
        let mut rows: Vec<Vec<String>> = Vec::new();
        let host = &detail.hostname;
        rows.extend(
            found
                .cname_chain
                .iter()
                .map(|t| vec!["CNAME".into(), host.clone(), t.clone()]),
        );
        rows.extend(
            found
                .a
                .iter()
                .map(|a| vec!["A".into(), host.clone(), a.clone()]),
        );
        rows.extend(
            found
                .aaaa
                .iter()
                .map(|a| vec!["AAAA".into(), host.clone(), a.clone()]),
        );
        rows.extend(
            found
                .ownership_txt
                .iter()
                .map(|t| vec!["TXT".into(), req.ownership.name.clone(), format!("\"{t}\"")]),
        );
        rows.extend(
            found
                .acme_challenge_cname
                .iter()
                .map(|t| vec!["CNAME".into(), req.acme_challenge.name.clone(), t.clone()]),
        );
        let caa_at = found.caa_at.clone().unwrap_or_default();
        rows.extend(
            found
                .caa
                .iter()
                .map(|c| vec!["CAA".into(), caa_at.clone(), c.clone()]),
        );
        if rows.is_empty() {
            writeln!(out, "     (none)")?;
        } else {
            for line in table(&["TYPE", "NAME", "VALUE"], &rows).lines() {
                writeln!(out, "     {line}")?;
            }
        }
        writeln!(out)?;
    }
    if detail.certificates.is_empty() {
        writeln!(out, "No certificate issued or imported yet.\n")?;
    } else {
        let rows: Vec<Vec<String>> = detail
            .certificates
            .iter()
            .map(|c| {
                let types: Vec<&str> = c.issued.iter().map(|k| k.key_type.as_str()).collect();
                vec![
                    c.source.clone(),
                    c.role.clone(),
                    c.status.clone(),
                    types.join("+"),
                    c.issuer.clone(),
                    c.expires_at.clone(),
                ]
            })
            .collect();
        writeln!(
            out,
            "{}",
            table(
                &["SOURCE", "ROLE", "STATUS", "KEYS", "ISSUER", "EXPIRES"],
                &rows
            )
        )?;
    }
    if !detail.warnings.is_empty() {
        writeln!(out, "Warnings:")?;
        for w in &detail.warnings {
            writeln!(out, "  {}: {}\n    -> {}", w.code, w.message, w.remediation)?;
        }
        writeln!(out)?;
    }
    if !detail.validation_errors.is_empty() {
        writeln!(out, "Problems:")?;
        for e in &detail.validation_errors {
            writeln!(out, "  {}: {}\n    -> {}", e.code, e.message, e.remediation)?;
        }
        writeln!(out)?;
    }
    let next = match detail.validation_errors.last() {
        Some(e) => e.remediation.clone(),
        None if detail.validation.ownership_verified => {
            "Nothing to do: ownership is verified.".into()
        }
        None => format!(
            "Run `certplane certs check {} -a {}` once the records are set.",
            detail.hostname, detail.app
        ),
    };
    writeln!(out, "Next step: {next}")?;
    if with_setup {
        writeln!(out)?;
        write!(out, "{}", dns_records(detail))?;
    } else if !detail.validation.ownership_verified {
        writeln!(
            out,
            "The records to set: `certplane certs setup {} -a {}`.",
            detail.hostname, detail.app
        )?;
    }
    Ok(())
}

async fn apps(
    client: &Client,
    command: AppsCommand,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match command {
        AppsCommand::Create {
            name,
            backends,
            dedicated_ipv4,
        } => {
            let app = client.create_app(&name, &backends, dedicated_ipv4).await?;
            if json {
                return print_json(out, &app);
            }
            writeln!(out, "Created app {}.\n", app.name)?;
            app_fields(&app, out)?;
        }
        AppsCommand::List => {
            let list = client.apps().await?;
            if json {
                return print_json(out, &list);
            }
            if list.apps.is_empty() {
                writeln!(
                    out,
                    "No apps yet. Create one with `certplane apps create NAME`."
                )?;
                return Ok(());
            }
            let rows: Vec<Vec<String>> = list
                .apps
                .iter()
                .map(|a| {
                    vec![
                        a.name.clone(),
                        a.ipv6.clone(),
                        a.cname_target.clone(),
                        a.backends.join(","),
                    ]
                })
                .collect();
            write!(
                out,
                "{}",
                table(&["NAME", "IPV6", "CNAME TARGET", "BACKENDS"], &rows)
            )?;
        }
        AppsCommand::Show { name } => {
            let app = client.app(&name).await?;
            if json {
                return print_json(out, &app);
            }
            app_fields(&app, out)?;
        }
        AppsCommand::Delete { name, yes } => {
            confirm(
                yes,
                &format!("Delete the app {name} and release its hostnames?"),
            )?;
            client.delete_app(&name).await?;
            if json {
                return print_json(out, &serde_json::json!({"deleted": name}));
            }
            writeln!(out, "Deleted app {name}.")?;
        }
    }
    Ok(())
}

fn app_fields(app: &certplane_api_types::AppResponse, out: &mut dyn Write) -> Result<(), CliError> {
    let fields = [
        ("Name", app.name.clone()),
        ("Org", app.org.clone()),
        ("IPv6 (dedicated)", app.ipv6.clone()),
        (
            if app.dedicated_ipv4.is_some() {
                "IPv4 (dedicated)"
            } else {
                "IPv4 (shared)"
            },
            app.ipv4.join(", "),
        ),
        ("CNAME target", app.cname_target.clone()),
        ("Ownership value", app.ownership_value.clone()),
        ("Org ownership value", app.org_ownership_value.clone()),
        ("Backends", app.backends.join(", ")),
        ("Created", app.created_at.clone()),
    ];
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in &fields {
        writeln!(out, "{k:<width$}  {v}")?;
    }
    Ok(())
}

async fn orgs(
    client: &Client,
    command: OrgsCommand,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match command {
        OrgsCommand::Create { name, token_only } => {
            let org = client.create_org(&name).await?;
            if json {
                return print_json(out, &org);
            }
            if token_only {
                writeln!(out, "{}", org.token)?;
                return Ok(());
            }
            writeln!(out, "Created org {} ({}).", org.name, org.slug)?;
            writeln!(out, "API token (shown once, keep it safe): {}", org.token)?;
            writeln!(
                out,
                "Ownership TXT value for all its apps: {}",
                org.ownership_value
            )?;
        }
    }
    Ok(())
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_owned()
}

/// Asks on the terminal unless `yes`; without a terminal, refuses rather than guess.
fn confirm(yes: bool, question: &str) -> Result<(), CliError> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(CliError::NotConfirmed(format!(
            "{question} Pass -y to confirm without a terminal."
        )));
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(CliError::NotConfirmed("you did not confirm".into()))
    }
}
