//! The service under test, started in-process from a `Config` on a fresh database (a
//! SQLite file, or a database of its own on the PostgreSQL server given), and stopped
//! through its cancellation token at the end of each scenario.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tempfile::TempDir;
use tokio::task::JoinHandle;

use crate::config::{Config, Role};
use crate::startup::{Application, CancellationToken};
use crate::store::Store;

use super::api::Api;

/// How long a stopping service may take before the bench gives up on it.
const STOP_DEADLINE: Duration = Duration::from_secs(15);

/// What a scenario changes in the service's configuration.
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    /// `None`: a fresh SQLite file in a temporary directory. A PostgreSQL URL names the
    /// server and a role allowed to create databases: each scenario gets a new database
    /// there, dropped when it ends.
    pub database_url: Option<String>,
    /// The CA to trust for HTTPS deliveries; `None` delivers over plain HTTP.
    pub ca_pem: Option<PathBuf>,
    pub max_in_flight: usize,
    pub max_in_flight_per_endpoint: usize,
    pub retry_schedule: Vec<Duration>,
    pub delivery_timeout: Duration,
    /// `Role::Api` leaves deliveries queued (no workers).
    pub role: Role,
    /// Child `serve --role worker` processes doing the delivering instead of this one.
    pub worker_processes: usize,
}

pub struct Service {
    pub api: Arc<Api>,
    store: Arc<dyn Store>,
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
    /// External worker processes; killed when the service stops or is dropped.
    workers: Vec<tokio::process::Child>,
    /// Stops the service if a scenario fails before `stop` (before the files go).
    _cancel_on_drop: tokio_util::sync::DropGuard,
    /// The URL the service runs on (the scratch database's, on PostgreSQL).
    database_url: String,
    /// A PostgreSQL database made for this service; dropped after it stops. Declared
    /// after the drop guard, so a service dropped unstopped is cancelled first.
    scratch: Option<ScratchDatabase>,
    /// Holds the SQLite file; removed when the service is dropped.
    _dir: Option<TempDir>,
}

impl Service {
    pub async fn start(opts: &ServiceOptions) -> anyhow::Result<Service> {
        let (database_url, dir, scratch) = match &opts.database_url {
            Some(url) if crate::store::is_postgres_url(url) => {
                let scratch = ScratchDatabase::create(url).await?;
                (scratch.url.clone(), None, Some(scratch))
            }
            Some(url) => (url.clone(), None, None),
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("kamiyo-bench-")
                    .tempdir()
                    .context("creating a temporary directory for the database")?;
                let url = format!("sqlite://{}", dir.path().join("bench.db").display());
                (url, Some(dir), None)
            }
        };
        let admin_token = format!("bench-admin-{:032x}", rand::random::<u128>());
        let config = Config {
            database_url: database_url.clone(),
            listen: "127.0.0.1:0".into(),
            admin_token: Some(admin_token.clone()),
            retry_schedule: opts.retry_schedule.clone(),
            delivery_timeout: opts.delivery_timeout,
            allow_http: opts.ca_pem.is_none(),
            // The receiver is on loopback, which the outbound network guard refuses.
            allow_private_networks: vec!["127.0.0.0/8".into()],
            extra_ca_certs: opts.ca_pem.clone(),
            role: if opts.worker_processes > 0 && opts.role == Role::All {
                Role::Api
            } else {
                opts.role
            },
            max_in_flight: opts.max_in_flight,
            max_in_flight_per_endpoint: opts.max_in_flight_per_endpoint,
            // The bench is one client making thousands of calls on purpose.
            rate_limit: crate::config::RateLimit::DISABLED,
            ..Config::default()
        };
        let app = Application::build(config.clone())
            .await
            .context("starting the service")?;
        let mut workers = Vec::new();
        if opts.role != Role::Api {
            for _ in 0..opts.worker_processes {
                workers.push(spawn_worker(&config)?);
            }
        }
        let store = app.store();
        let base_url = format!("http://127.0.0.1:{}", app.port());
        let stop = CancellationToken::new();
        let task = tokio::spawn(app.run_until_stopped(stop.clone()));
        Ok(Service {
            api: Arc::new(Api::new(base_url, admin_token)?),
            store,
            workers,
            _cancel_on_drop: stop.clone().drop_guard(),
            stop,
            task,
            database_url,
            scratch,
            _dir: dir,
        })
    }

    /// The database the service runs on.
    pub fn database_url(&self) -> &str {
        &self.database_url
    }

    /// Pending deliveries, read straight from the store.
    pub async fn queue_depth(&self) -> anyhow::Result<i64> {
        Ok(self.store.queue_depth().await?)
    }

    /// Cancels the service and waits (bounded) for it to drain and stop.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        for worker in &mut self.workers {
            let _ = worker.start_kill();
            let _ = worker.wait().await;
        }
        self.stop.cancel();
        let abort = self.task.abort_handle();
        let stopped = match tokio::time::timeout(STOP_DEADLINE, &mut self.task).await {
            Ok(Ok(result)) => result.context("the service failed"),
            Ok(Err(join)) => Err(anyhow::anyhow!("the service task panicked: {join}")),
            Err(_) => {
                abort.abort();
                tracing::warn!("the service did not stop within {STOP_DEADLINE:?}; aborted");
                Ok(())
            }
        };
        if let Some(scratch) = self.scratch.take() {
            // The store's pool goes first: the drop would cut its connections short.
            drop(self.store);
            scratch.remove().await?;
        }
        stopped
    }
}

/// A database of its own for one scenario on the PostgreSQL server the bench was given.
/// Reusing the given database let each run start on the rows and dead tuples of the runs
/// before it (a run of `latency` after a few others: p50 4 to 19 ms, p99 8 to 58 ms).
struct ScratchDatabase {
    /// The URL given: connects as a role that may create databases.
    admin: String,
    name: String,
    url: String,
}

impl ScratchDatabase {
    async fn create(admin: &str) -> anyhow::Result<ScratchDatabase> {
        use sqlx::Connection as _;
        let mut url = url::Url::parse(admin).context("--database-url is not a valid URL")?;
        let name = format!(
            "kamiyo_bench_{}_{}",
            std::process::id(),
            rand::random::<u32>()
        );
        let server = format!(
            "{}:{}",
            url.host_str().unwrap_or("localhost"),
            url.port().unwrap_or(5432)
        );
        let mut conn = sqlx::PgConnection::connect(admin)
            .await
            .with_context(|| format!("connecting to PostgreSQL at {server}"))?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .with_context(|| {
                format!(
                    "creating the bench's database {name} at {server} (each scenario runs on a \
                     new database; the role in --database-url needs CREATEDB)"
                )
            })?;
        conn.close().await.ok();
        url.set_path(&name);
        Ok(ScratchDatabase {
            admin: admin.to_string(),
            url: url.to_string(),
            name,
        })
    }

    /// Drops the database, closing any connection still on it.
    async fn remove(mut self) -> anyhow::Result<()> {
        let name = std::mem::take(&mut self.name);
        drop_database(&self.admin, &name)
            .await
            .with_context(|| format!("dropping the bench's database {name}"))
    }
}

async fn drop_database(admin: &str, name: &str) -> Result<(), sqlx::Error> {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(admin).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await?;
    conn.close().await.ok();
    Ok(())
}

/// A scenario that failed drops its service without `stop`: the database still goes.
impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        if self.name.is_empty() {
            return;
        }
        let (admin, name) = (self.admin.clone(), std::mem::take(&mut self.name));
        // Inside the bench's runtime: a runtime of its own on another thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            if let Err(e) = rt.block_on(drop_database(&admin, &name)) {
                eprintln!("warning: could not drop the bench's database {name}: {e}");
            }
            std::io::Result::Ok(())
        })
        .join();
    }
}

/// A `serve --role worker` child process with the same configuration.
fn spawn_worker(config: &Config) -> anyhow::Result<tokio::process::Child> {
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    let schedule: Vec<String> = config.retry_schedule.iter().map(|d| ms(*d)).collect();
    let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
    cmd.args(["serve", "--role", "worker"])
        .env("KAMIYO_DATABASE_URL", &config.database_url)
        .env("KAMIYO_ALLOW_HTTP", config.allow_http.to_string())
        .env(
            "KAMIYO_ALLOW_PRIVATE_NETWORKS",
            config.allow_private_networks.join(","),
        )
        .env("KAMIYO_RETRY_SCHEDULE", schedule.join(","))
        .env("KAMIYO_DELIVERY_TIMEOUT", ms(config.delivery_timeout))
        .env("KAMIYO_MAX_IN_FLIGHT", config.max_in_flight.to_string())
        .env(
            "KAMIYO_MAX_IN_FLIGHT_PER_ENDPOINT",
            config.max_in_flight_per_endpoint.to_string(),
        )
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Some(ca) = &config.extra_ca_certs {
        cmd.env("KAMIYO_EXTRA_CA_CERTS", ca);
    }
    cmd.spawn().context("starting a worker process")
}
