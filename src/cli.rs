//! The command line: `serve`, `migrate`, account and key management, and `ingest`.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};

use crate::api::exploits::ingest_values;
use crate::config::{Config, Role};
use crate::domain::secret::{generate_api_key, hash_api_key};
use crate::domain::secretbox::SecretBox;
use crate::domain::tier::Tier;
use crate::startup::{Application, CancellationToken};
use crate::store::secrets::{reencrypt_secrets, REENCRYPT_BATCH};
use crate::store::{self, Store};

#[derive(Debug, Parser)]
#[command(
    name = "kamiyo-webhooks",
    version,
    about = "Signed, retried and logged webhook delivery of crypto exploit alerts"
)]
pub struct Cli {
    /// Database URL (overrides KAMIYO_DATABASE_URL): sqlite://PATH or postgres://...
    #[arg(long, global = true)]
    pub database_url: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API and/or the delivery workers; migrates on start.
    Serve {
        #[arg(long, value_enum, default_value_t = Role::All)]
        role: Role,
        /// Address to listen on (overrides KAMIYO_LISTEN).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Apply the database schema and exit.
    Migrate,
    /// Manage accounts.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Ingest exploits from a JSON array or JSON lines file (`-` for stdin).
    Ingest { file: String },
    /// Webhook secrets at rest.
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// Measure the service on this machine: in-process service, fresh database, own receiver.
    Bench(crate::bench::BenchArgs),
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Create a user; prints its first API key (shown only now).
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, value_parser = parse_tier)]
        tier: Tier,
    },
    /// List users, one JSON object per line.
    List,
    /// Change a user's tier.
    SetTier {
        id: i64,
        #[arg(value_parser = parse_tier)]
        tier: Tier,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Issue another API key for a user.
    Create { user_id: i64 },
    /// Revoke an API key.
    Revoke { key: String },
}

#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Seal every stored webhook secret with KAMIYO_ENCRYPTION_KEY: plain ones, and (for
    /// key rotation) ones sealed with the old key. Batches of 500, one transaction each.
    Reencrypt {
        /// The previous key (base64 of 32 bytes); prefer the environment variable, which
        /// does not show in the process list.
        #[arg(long, env = "KAMIYO_OLD_ENCRYPTION_KEY", hide_env_values = true)]
        old_key: Option<String>,
    },
}

fn parse_tier(s: &str) -> Result<Tier, String> {
    s.parse()
}

/// Runs a parsed command line. Returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    if let Command::Bench(args) = cli.command {
        // The bench configures its own services; the environment must not skew them.
        return crate::bench::run(args, cli.database_url).await;
    }
    let mut config = Config::from_env()?;
    if let Some(url) = cli.database_url {
        config.database_url = url;
    }
    match cli.command {
        Command::Serve { role, listen } => {
            config.role = role;
            if let Some(l) = listen {
                config.listen = l;
            }
            serve(config).await?;
            Ok(0)
        }
        Command::Migrate => {
            open(&config).await?;
            println!("{}", json!({"migrated": true}));
            Ok(0)
        }
        Command::Users(cmd) => users(&*open(&config).await?, cmd).await,
        Command::Keys(cmd) => keys(&*open(&config).await?, cmd).await,
        Command::Ingest { file } => ingest(&*open(&config).await?, &file).await,
        Command::Secrets(SecretsCommand::Reencrypt { old_key }) => {
            reencrypt(&config, old_key.as_deref()).await
        }
        Command::Bench(_) => unreachable!("handled above"),
    }
}

async fn open(config: &Config) -> anyhow::Result<std::sync::Arc<dyn Store>> {
    config.validate()?;
    let store = store::open(
        &config.database_url,
        config.db_pool_size,
        config.secret_codec()?,
    )
    .await?;
    store.migrate().await?;
    Ok(store)
}

async fn reencrypt(config: &Config, old_key: Option<&str>) -> anyhow::Result<i32> {
    let Some(new_key) = config.encryption_key.as_deref() else {
        bail!("KAMIYO_ENCRYPTION_KEY is not set: it names the key to encrypt with");
    };
    let new = SecretBox::from_base64(new_key)
        .map_err(|m| anyhow::anyhow!("KAMIYO_ENCRYPTION_KEY: {m}"))?;
    let old = old_key
        .map(SecretBox::from_base64)
        .transpose()
        .map_err(|m| anyhow::anyhow!("--old-key / KAMIYO_OLD_ENCRYPTION_KEY: {m}"))?;
    let store = open(config).await?;
    let (summary, unreadable) =
        reencrypt_secrets(&*store, old.as_ref(), &new, REENCRYPT_BATCH).await?;
    println!("{}", serde_json::to_string(&summary)?);
    if unreadable.is_empty() {
        return Ok(0);
    }
    let shown: Vec<String> = unreadable.iter().take(20).map(i64::to_string).collect();
    eprintln!(
        "error: {} webhook secret(s) open with neither KAMIYO_ENCRYPTION_KEY nor the old key; \
         left unchanged (webhook ids {}{})",
        unreadable.len(),
        shown.join(", "),
        if unreadable.len() > shown.len() {
            ", ..."
        } else {
            ""
        }
    );
    Ok(1)
}

async fn serve(config: Config) -> anyhow::Result<()> {
    tracing::info!(?config, "starting");
    let app = Application::build(config).await?;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        stop.cancel();
    });
    app.run_until_stopped(shutdown).await
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn user_json(u: &store::User) -> Value {
    json!({"id": u.id, "name": u.name, "tier": u.tier, "created_at": crate::domain::time::format_ms(u.created_at_ms)})
}

async fn users(store: &dyn Store, cmd: UsersCommand) -> anyhow::Result<i32> {
    match cmd {
        UsersCommand::Create { name, tier } => {
            let name =
                crate::api::admin::validate_user_name(&name).map_err(|e| anyhow::anyhow!("{e}"))?;
            let key = generate_api_key();
            let user = store.create_user(&name, tier, &hash_api_key(&key)).await?;
            println!(
                "{}",
                json!({"id": user.id, "name": user.name, "tier": user.tier, "api_key": key})
            );
        }
        UsersCommand::List => {
            for u in store.list_users().await? {
                println!("{}", user_json(&u));
            }
        }
        UsersCommand::SetTier { id, tier } => {
            let user = store
                .update_user(id, None, Some(tier))
                .await
                .with_context(|| format!("user {id}"))?;
            println!("{}", user_json(&user));
        }
    }
    Ok(0)
}

async fn keys(store: &dyn Store, cmd: KeysCommand) -> anyhow::Result<i32> {
    match cmd {
        KeysCommand::Create { user_id } => {
            let key = generate_api_key();
            store
                .add_api_key(user_id, &hash_api_key(&key))
                .await
                .with_context(|| format!("user {user_id}"))?;
            println!("{}", json!({"api_key": key}));
            Ok(0)
        }
        KeysCommand::Revoke { key } => {
            if store.revoke_api_key(&hash_api_key(key.trim())).await? {
                println!("{}", json!({"revoked": true}));
                Ok(0)
            } else {
                bail!("no active API key matches")
            }
        }
    }
}

/// Exploits per transaction when ingesting a file.
const INGEST_BATCH: usize = 500;

/// One item of an ingest file: its JSON, or why its line is not JSON.
struct Item {
    line: Option<usize>,
    value: Result<Value, String>,
}

fn read_items(text: &str) -> anyhow::Result<Vec<Item>> {
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    if trimmed.starts_with('[') {
        let values: Vec<Value> = serde_json::from_str(trimmed)
            .context("the file starts with [ but is not a valid JSON array")?;
        return Ok(values
            .into_iter()
            .map(|v| Item {
                line: None,
                value: Ok(v),
            })
            .collect());
    }
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| Item {
            line: Some(i + 1),
            value: serde_json::from_str(l).map_err(|e| format!("not valid JSON: {e}")),
        })
        .collect())
}

async fn ingest(store: &dyn Store, file: &str) -> anyhow::Result<i32> {
    let mut text = String::new();
    if file == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading stdin")?;
    } else {
        let path = PathBuf::from(file);
        text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
    }
    let items = read_items(&text)?;
    let progress = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(items.len() as u64).with_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} exploits {per_sec} eta {eta}",
            )
            .expect("template"),
        )
    } else {
        indicatif::ProgressBar::hidden()
    };
    let (mut new, mut duplicates, mut rejected, mut queued) = (0u64, 0u64, 0u64, 0u64);
    let describe = |index: usize, item: &Item| match item.line {
        Some(line) => format!("exploit {index} (line {line})"),
        None => format!("exploit {index}"),
    };
    for (chunk_no, chunk) in items.chunks(INGEST_BATCH).enumerate() {
        let base = chunk_no * INGEST_BATCH;
        let mut values = Vec::with_capacity(chunk.len());
        let mut positions = Vec::with_capacity(chunk.len());
        for (i, item) in chunk.iter().enumerate() {
            match &item.value {
                Ok(v) => {
                    values.push(v.clone());
                    positions.push(i);
                }
                Err(e) => {
                    rejected += 1;
                    progress.suspend(|| eprintln!("{}: {e}", describe(base + i, item)));
                }
            }
        }
        for (pos, result) in positions
            .into_iter()
            .zip(ingest_values(store, &values).await?)
        {
            match result {
                Ok(o) if o.duplicate => duplicates += 1,
                Ok(o) => {
                    new += 1;
                    queued += u64::from(o.matched);
                }
                Err(message) => {
                    rejected += 1;
                    progress
                        .suspend(|| eprintln!("{}: {message}", describe(base + pos, &chunk[pos])));
                }
            }
        }
        progress.inc(chunk.len() as u64);
    }
    progress.finish_and_clear();
    println!(
        "ingested {} exploits: {new} new, {duplicates} duplicates, {rejected} rejected; {queued} deliveries queued",
        items.len()
    );
    Ok(if rejected > 0 { 1 } else { 0 })
}
