//! Rebuilds the store when a migration is added: `sqlx::migrate!` reads the migration folders
//! at compile time, and cargo watches only the files it has seen, not new ones.
fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
