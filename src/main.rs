//! The `patchbay` binary: parse the command line, start telemetry, run the command.

use clap::Parser;
use patchbay::app::App;
use patchbay::config::{AccountCommand, Cli, Command, LogFormat};
use patchbay::control::Control;
use patchbay::domain::AccountId;
use tracing_subscriber::EnvFilter;

/// The log filter when `RUST_LOG` is not set: INFO, except the ICE library's STUN parser,
/// which warns about odd attributes in any datagram anyone sends to the media port (four
/// lines for one 96-byte packet); the media runtime counts such noise instead, in one line per
/// interval.
const DEFAULT_LOG_FILTER: &str = "info,is::stun=error";

/// Starts the log subscriber: `RUST_LOG` (else [`DEFAULT_LOG_FILTER`]) to stderr, as text or
/// as one JSON object per line with the fields of the current span (`request_id`, …).
fn init_logs(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
        // Colours only for a terminal: logs written to files stay plain text.
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logs(match &cli.command {
        Command::Serve(config) => config.telemetry.log_format,
        Command::Account(_) => LogFormat::Text,
    });
    match cli.command {
        Command::Serve(config) => serve(*config).await,
        Command::Account(AccountCommand::Create {
            account_id,
            json,
            database,
        }) => {
            let account = AccountId::parse(&account_id)?;
            let (url, _) = database.resolve()?;
            let store = patchbay::store::open(&url).await?;
            let control = Control::new(std::sync::Arc::new(store)).await?;
            let creds = control.create_account(account).await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"accountId": creds.account.as_str(), "username": creds.username, "password": creds.password, "webhookSecret": creds.webhook_secret})
                );
            } else {
                println!(
                    "account:  {}\nusername: {}\npassword: {}\nwebhook secret: {}",
                    creds.account, creds.username, creds.password, creds.webhook_secret
                );
            }
            Ok(())
        }
    }
}

async fn serve(config: patchbay::config::ServeConfig) -> anyhow::Result<()> {
    let app = App::build(&config).await?;
    if let Some(creds) = &app.dev_credentials {
        println!(
            "patchbay created the account {:?} on first start (shown once):\n  username: {}\n  password: {}\n  webhook secret: {}\n  try: curl -u {}:{} -X POST http://{}/v1/accounts/{}/sessions",
            creds.account.as_str(),
            creds.username,
            creds.password,
            creds.webhook_secret,
            creds.username,
            creds.password,
            app.http_addr(),
            creds.account
        );
    }
    println!("{}", app.addresses());
    println!("patchbay SIP on {} (UDP and TCP)", app.sip_addr());
    println!("patchbay listening on http://{}", app.http_addr());
    if let Some(addr) = app.metrics_addr() {
        println!("patchbay metrics on http://{addr}/metrics");
    }
    tracing::info!(addr = %app.http_addr(), "serving");
    app.run_until_stopped(shutdown_signal()).await
}

async fn shutdown_signal() {
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
    tracing::info!("shutting down");
}
