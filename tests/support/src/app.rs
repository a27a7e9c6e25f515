//! The whole server in-process: [`App`] built on a given database with port 0 for every
//! listener (HTTP, media, SIP, RTP), running on the caller's tokio runtime until stopped.

use std::net::SocketAddr;

use patchbay::app::App;
use patchbay::config::ServeConfig;
use patchbay::control::Control;
use patchbay::runtime::media::MediaHandle;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running server. Dropping it asks the server to stop; [`RunningApp::stop`] also waits
/// for it and returns how it ended.
pub struct RunningApp {
    /// The REST API and the device WebSocket.
    pub http: SocketAddr,
    /// The SIP listener (UDP and TCP).
    pub sip: SocketAddr,
    /// The media shards' public addresses.
    pub media: Vec<SocketAddr>,
    /// The control handle, as the API uses it.
    pub control: Control,
    /// The media plane, as control's port drives it.
    pub media_port: MediaHandle,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Builds the app on `database_url` with every listener on 127.0.0.1 port 0 and runs it.
pub async fn spawn_app(database_url: &str) -> RunningApp {
    spawn_app_with(&ServeConfig::for_database(database_url)).await
}

/// Builds the app with `config` (start from [`ServeConfig::for_database`]) and runs it.
pub async fn spawn_app_with(config: &ServeConfig) -> RunningApp {
    let app = App::build(config).await.expect("build app");
    let (http, sip, media) = (
        app.http_addr(),
        app.sip_addr(),
        app.media_public_addrs().to_vec(),
    );
    let control = app.control().clone();
    let media_port = app.media().clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    RunningApp {
        http,
        sip,
        media,
        control,
        media_port,
        stop: Some(stop),
        task: Some(task),
    }
}

impl RunningApp {
    /// Stops the server and waits until it has drained; panics if the server task panicked.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.expect("server task panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for RunningApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
