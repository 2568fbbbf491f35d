//! Black-box tests of the HTTP API: each test starts a real server on port 0 with a
//! fresh data dir and talks to it over HTTP.

mod errors;
mod helpers;
mod kv;
mod limits;
mod openapi;
mod system;
