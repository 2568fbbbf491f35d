//! Black-box tests of the HTTP API: each test starts a real server on port 0 with
//! fresh storage and talks to it over HTTP. The tests of the API's behaviour run twice,
//! once per storage backend: `<test>::redb` and `<test>::postgres`. Then the PostgreSQL
//! backend on its own against a real server in a container (`postgres`: openraft's
//! storage suite, outages, crashes, a cluster sharing one server), and the API over
//! TLS (`tls`).

#[path = "../support/mod.rs"]
mod support;

/// Runs each named `async fn(Backend)` as two tests, one per backend. Without Docker
/// the PostgreSQL variants say they are skipped (and fail if `KV_REQUIRE_DOCKER` is
/// set).
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn redb() {
                    super::$name($crate::helpers::Backend::Redb).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    if $crate::support::postgres::docker_available() {
                        super::$name($crate::helpers::Backend::Postgres).await
                    }
                }
            }
        )*
    };
}

mod auth;
mod errors;
mod helpers;
mod kv;
mod leases;
mod limits;
mod list;
mod membership;
mod openapi;
mod postgres;
mod revisions;
mod system;
mod tls;
