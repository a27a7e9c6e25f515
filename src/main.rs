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
    let banner = Banner {
        json: config.telemetry.log_format == LogFormat::Json,
    };
    let app = App::build(&config).await?;
    if let Some(creds) = &app.dev_credentials {
        let scheme = if app.tls() { "https" } else { "http" };
        let (account, user, pass) = (creds.account.as_str(), &creds.username, &creds.password);
        let headline = format!(
            "patchbay created the account {account:?} on first start (shown once; lost them? \
             `patchbay account rotate {account}` prints new ones)"
        );
        if banner.json {
            banner.with(
                &headline,
                serde_json::json!({
                    "account": account,
                    "username": user,
                    "password": pass,
                    "webhookSecret": creds.webhook_secret,
                }),
            );
        } else {
            println!(
                "{headline}:\n  username: {user}\n  password: {pass}\n  webhook secret: {}\n  \
                 try: curl -u {user}:{pass} -X POST {scheme}://{}/v1/accounts/{account}/sessions",
                creds.webhook_secret,
                app.http_addr(),
            );
        }
    }
    if app.no_account {
        banner.line(
            "patchbay: this database has no account yet; make one with `patchbay account \
             create ACCOUNT_ID` given the same --database-url or --data-dir (it prints the API \
             credentials once)",
        );
    }
    for line in app.addresses().to_string().lines() {
        banner.line(line);
    }
    banner.line(&format!("patchbay SIP on {} (UDP and TCP)", app.sip_addr()));
    if app.tls() {
        banner.line(&format!(
            "patchbay listening on https://{0} (device WebSocket wss://{0})",
            app.http_addr()
        ));
    } else {
        banner.line(&format!("patchbay listening on http://{}", app.http_addr()));
    }
    if let Some(addr) = app.metrics_addr() {
        banner.line(&format!("patchbay metrics on http://{addr}/metrics"));
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

/// What `serve` prints on stdout as it starts: plain lines, or under `--log-format json` one
/// JSON object per line with the fields of the JSON logs (`timestamp`, `level`, `target`,
/// `message`), so that every line a log shipper reads is JSON.
struct Banner {
    json: bool,
}

impl Banner {
    fn line(&self, text: &str) {
        self.with(text, serde_json::json!({}));
    }

    /// `text`, with `fields` beside the message in JSON (plain: the text alone).
    fn with(&self, text: &str, fields: serde_json::Value) {
        if !self.json {
            println!("{text}");
            return;
        }
        let ms = patchbay::store::epoch_ms();
        let timestamp = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
        let mut line = serde_json::json!({
            "timestamp": timestamp,
            "level": "INFO",
            "target": "patchbay::banner",
            "message": text,
        });
        if let (Some(line), Some(fields)) = (line.as_object_mut(), fields.as_object()) {
            line.extend(fields.clone());
        }
        println!("{line}");
    }
}
