//! The platform's integration tests: one binary (it links once), every store test run on SQLite
//! and, when `SWITCHYARD_TEST_POSTGRES_URL` is set, on PostgreSQL (see `harness`).

// A failing test should panic where it fails; `unwrap` is how it says so.
#![allow(clippy::unwrap_used)]

mod harness;

mod cron;
mod jobs_api;
mod jobs_queue;
mod jobs_worker;
mod outbox;
