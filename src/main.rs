//! The `patchbay` binary: parse the command line, start telemetry, run the command.

use patchbay::app::{init_logs, App};
use patchbay::config::{Cli, Command, ConfigCommand, LogFormat};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let parsed = Cli::parse_layered();
    init_logs(match &parsed.cli.command {
        Command::Serve(config) => config.telemetry.log_format,
        _ => LogFormat::Text,
    });
    match parsed.cli.command {
        Command::Serve(config) => serve(*config).await,
        Command::Config(ConfigCommand::Example) => {
            use clap::CommandFactory;
            let cli = Cli::command();
            let serve = cli
                .find_subcommand("serve")
                .ok_or_else(|| anyhow::anyhow!("no `serve` command"))?;
            print!("{}", patchbay::config_file::example(serve));
            Ok(())
        }
        Command::Config(ConfigCommand::Print(_)) => {
            use clap::CommandFactory;
            let cli = Cli::command();
            let print = cli
                .find_subcommand("config")
                .and_then(|c| c.find_subcommand("print"))
                .ok_or_else(|| anyhow::anyhow!("no `config print` command"))?;
            let matches = parsed
                .matches
                .subcommand_matches("config")
                .and_then(|m| m.subcommand_matches("print"))
                .ok_or_else(|| anyhow::anyhow!("no `config print` arguments"))?;
            print!(
                "{}",
                patchbay::config_file::render(print, matches, &parsed.from_file)
            );
            Ok(())
        }
        Command::Account(command) => {
            print!("{}", patchbay::cli::account(command).await?);
            Ok(())
        }
        Command::Session(command) => {
            print!(
                "{}",
                patchbay::cli::session(command, patchbay::store::epoch_ms()).await?
            );
            Ok(())
        }
        Command::Cluster(command) => {
            print!("{}", patchbay::cli::cluster(command).await?);
            Ok(())
        }
        Command::TokenSecret(command) => {
            print!("{}", patchbay::cli::token_secret(command).await?);
            Ok(())
        }
    }
}

async fn serve(config: patchbay::config::ServeConfig) -> anyhow::Result<()> {
    let app = App::build(&config).await?;
    if let Some(creds) = &app.dev_credentials {
        let scheme = if app.tls() { "https" } else { "http" };
        let (account, user, pass) = (creds.account.as_str(), &creds.username, &creds.password);
        println!(
            "patchbay created the account {account:?} on first start (shown once; lost them? \
             `patchbay account rotate {account}` prints new ones):\n  username: {user}\n  \
             password: {pass}\n  webhook secret: {}\n  try: curl -u {user}:{pass} -X POST \
             {scheme}://{}/v1/accounts/{account}/sessions",
            creds.webhook_secret,
            app.http_addr(),
        );
    }
    if app.no_account {
        println!(
            "patchbay: this database has no account yet; make one with `patchbay account \
             create ACCOUNT_ID` given the same --database-url or --data-dir (it prints the API \
             credentials once)"
        );
    }
    println!("{}", app.addresses());
    println!("patchbay SIP on {} (UDP and TCP)", app.sip_addr());
    if app.tls() {
        println!(
            "patchbay listening on https://{0} (device WebSocket wss://{0})",
            app.http_addr()
        );
    } else {
        println!("patchbay listening on http://{}", app.http_addr());
    }
    if let Some(addr) = app.metrics_addr() {
        println!("patchbay metrics on http://{addr}/metrics");
    }
    tracing::info!(addr = %app.http_addr(), "serving");
    app.run_until_stopped(shutdown_signal()).await
}

/// The first SIGTERM or SIGINT starts the graceful stop ([`App::run_until_stopped`] drains);
/// a second one exits at once (status 130), without waiting for devices or calls.
async fn shutdown_signal() {
    signal().await;
    tracing::info!("stopping: draining first (a second signal stops at once)");
    #[allow(clippy::disallowed_methods)] // the binary owns the process's signals
    tokio::spawn(async {
        signal().await;
        tracing::warn!("second signal: stopping now");
        std::process::exit(130);
    });
}

async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
