//! Which database a test runs on. Every backend test runs twice: on a fresh SQLite file,
//! and on a fresh PostgreSQL database when `KAMIYO_TEST_POSTGRES_URL` names a server
//! (otherwise the PostgreSQL variant prints a notice and passes without running).

use std::future::Future;
use std::path::Path;

use sqlx::Connection as _;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

tokio::task_local! {
    static BACKEND: Backend;
}

pub const POSTGRES_URL_VAR: &str = "KAMIYO_TEST_POSTGRES_URL";

/// The backend of the running test (SQLite outside `run`).
pub fn current() -> Backend {
    BACKEND.try_with(|b| *b).unwrap_or(Backend::Sqlite)
}

fn postgres_admin_url() -> Option<String> {
    std::env::var(POSTGRES_URL_VAR)
        .ok()
        .filter(|u| !u.trim().is_empty())
}

/// Runs a test body on `backend`.
pub async fn run<F: Future<Output = ()>>(backend: Backend, test: F) {
    if backend == Backend::Postgres && postgres_admin_url().is_none() {
        eprintln!("notice: skipping the PostgreSQL variant: {POSTGRES_URL_VAR} is not set");
        return;
    }
    BACKEND.scope(backend, test).await
}

/// A fresh database for one test, removed when dropped.
pub struct TestDatabase {
    pub url: String,
    postgres: Option<(String, String)>,
}

impl TestDatabase {
    /// A new empty database of the current backend (SQLite files go in `dir`).
    pub async fn create(dir: &Path, name: &str) -> TestDatabase {
        match current() {
            Backend::Sqlite => TestDatabase {
                url: format!("sqlite://{}", dir.join(format!("{name}.db")).display()),
                postgres: None,
            },
            Backend::Postgres => {
                let admin = postgres_admin_url().expect("checked by run");
                let db = format!(
                    "kamiyo_test_{}_{}",
                    std::process::id(),
                    rand::random::<u64>() % 1_000_000_000_000
                );
                let mut conn = sqlx::PgConnection::connect(&admin)
                    .await
                    .expect("connect to the PostgreSQL test server");
                sqlx::query(&format!("CREATE DATABASE {db}"))
                    .execute(&mut conn)
                    .await
                    .expect("create a test database");
                let _ = conn.close().await;
                let mut url = url::Url::parse(&admin).expect("a PostgreSQL URL");
                url.set_path(&db);
                TestDatabase {
                    url: url.to_string(),
                    postgres: Some((admin, db)),
                }
            }
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some((admin, db)) = self.postgres.take() else {
            return;
        };
        // Drop runs inside the test's runtime; a small runtime of its own on another
        // thread avoids blocking it.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                    let _ = conn.close().await;
                }
            });
        })
        .join();
    }
}

/// Declares each listed `async fn` (taking no arguments) as a test on every backend:
/// `sqlite::NAME` and `postgres::NAME`.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    $crate::backend::run($crate::backend::Backend::Sqlite, super::$name()).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    $crate::backend::run($crate::backend::Backend::Postgres, super::$name()).await
                }
            )*
        }
    };
}
