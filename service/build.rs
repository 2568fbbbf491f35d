//! `sqlx::migrate!` embeds `migrations/` (outside this crate) at compile time; without
//! this, adding a migration would not rebuild the crate and a node would start without
//! it.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
