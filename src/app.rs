//! Wiring: open the store, build [`Control`], bind the listeners and run until stopped.
//! Tests and `main` use the same entry points ([`App::build`] binds port 0 if asked and
//! reports the address; [`App::run_until_stopped`] drains gracefully).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::api::{self, AppState};
use crate::config::ServeConfig;
use crate::control::{Control, NewCredentials};
use crate::domain::AccountId;
use crate::store::{self, Store};

/// The account created on first start of the embedded default database.
pub const DEV_ACCOUNT: &str = "dev";

/// A built, bound, not yet running server.
pub struct App {
    control: Control,
    listener: TcpListener,
    http_addr: SocketAddr,
    /// Credentials of the dev account, when this start created it.
    pub dev_credentials: Option<NewCredentials>,
}

impl App {
    pub async fn build(config: &ServeConfig) -> anyhow::Result<App> {
        let (url, embedded) = config.database.resolve()?;
        let store = store::open(&url)
            .await
            .map_err(|e| anyhow::anyhow!("cannot open database {}: {e}", redact(&url)))?;
        let store: Arc<dyn Store> = Arc::new(store);
        let control = Control::new(store.clone()).await?;
        let dev_credentials = if embedded && store.account_count().await? == 0 {
            Some(
                control
                    .create_account(AccountId::parse(DEV_ACCOUNT)?)
                    .await?,
            )
        } else {
            None
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
        let http_addr = listener.local_addr()?;
        Ok(App {
            control,
            listener,
            http_addr,
            dev_credentials,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn control(&self) -> &Control {
        &self.control
    }

    /// Serves until `shutdown` completes, then lets in-flight requests finish.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let router = api::router(AppState {
            control: self.control,
        })
        .layer(tower_http::trace::TraceLayer::new_for_http());
        axum::serve(self.listener, router)
            .with_graceful_shutdown(shutdown)
            .await?;
        Ok(())
    }
}

/// A database URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}
