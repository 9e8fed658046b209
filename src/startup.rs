//! Building and running the service from a `Config`: tests and `serve` share this path.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Notify;
pub use tokio_util::sync::CancellationToken;

use crate::api::ratelimit::RateLimiter;
use crate::api::{self, AppState};
use crate::config::Config;
use crate::delivery::{Dispatcher, Sender};
use crate::store::secrets::check_stored_secrets;
use crate::store::{self, Store};

pub struct Application {
    state: AppState,
    listener: Option<TcpListener>,
    port: u16,
}

impl Application {
    /// Opens (and migrates) the database and binds the listen address.
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        config.validate()?;
        let secrets = config.secret_codec()?;
        let store = store::open(&config.database_url, config.db_pool_size, secrets.clone()).await?;
        store.migrate().await?;
        // A key that cannot open the stored secrets stops the start, not each delivery.
        let census = check_stored_secrets(&*store, &secrets).await?;
        if secrets.encrypts() && census.plaintext > 0 {
            tracing::warn!(
                plaintext = census.plaintext,
                "some webhook secrets are stored unencrypted; run `kamiyo-webhooks secrets reencrypt`"
            );
        }
        let (listener, port) = if config.role.runs_api() {
            let addr: SocketAddr = config.listen.parse()?;
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
            let port = listener.local_addr()?.port();
            (Some(listener), port)
        } else {
            (None, 0)
        };
        let sender = Arc::new(Sender::new(&config)?);
        let config_network = config.network_policy()?;
        crate::metrics::handle();
        let state = AppState {
            store,
            limiter: Arc::new(RateLimiter::new(config.rate_limit)),
            config: Arc::new(config),
            wake: Arc::new(Notify::new()),
            sender,
            network: Arc::new(config_network),
        };
        Ok(Application {
            state,
            listener,
            port,
        })
    }

    /// The bound API port (0 when this process runs no API).
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn store(&self) -> Arc<dyn Store> {
        self.state.store.clone()
    }

    /// Serves until `shutdown` is cancelled, then drains in-flight requests.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Application {
            state, listener, ..
        } = self;
        let mut tasks = tokio::task::JoinSet::new();
        if let Some(listener) = listener {
            let app = api::app(state.clone());
            let stop = shutdown.clone();
            tracing::info!(address = %listener.local_addr()?, "API listening");
            tasks.spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await
                    .map_err(anyhow::Error::from)
            });
        }
        if state.config.role.runs_workers() {
            if state.store.single_process() {
                // Only this process uses the database: claims left in it are a dead
                // process's, and waiting out their lease would only delay delivery.
                state.store.take_workers()?;
                state.store.release_all_claims().await?;
            }
            state.store.subscribe_wakeups(state.wake.clone()).await?;
            let dispatcher = Dispatcher::new(
                state.store.clone(),
                state.sender.clone(),
                state.config.clone(),
                state.wake.clone(),
            );
            let stop = shutdown.clone();
            tasks.spawn(async move {
                dispatcher.run(stop).await;
                Ok(())
            });
        }
        if tasks.is_empty() {
            shutdown.cancelled().await;
        }
        while let Some(res) = tasks.join_next().await {
            res??;
        }
        Ok(())
    }
}
