//! Rebuilds when a migration is added: `sqlx::migrate!` embeds the directory's files,
//! and cargo does not otherwise know to look at them.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
