//! The `kamiyo-webhooks` binary: parses the command line and hands over to the library.

use clap::Parser;
use kamiyo_webhooks::cli::{run, Cli};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // SAFETY: this is the process's only thread yet, so nothing else is using SQLite.
    unsafe { kamiyo_webhooks::store::pagecache::install() };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| {
            eprintln!("error: starting the async runtime: {e}");
            std::process::exit(2);
        });
    let code = runtime.block_on(async {
        kamiyo_webhooks::telemetry::init();
        let cli = Cli::parse();
        match run(cli).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                2
            }
        }
    });
    std::process::exit(code);
}
