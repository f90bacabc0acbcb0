//! Integration tests: the real server on port 0, over HTTP, on SQLite and on PostgreSQL.
//! One test binary, so it links once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod accounts;
mod activities;
mod analytics;
mod automation;
mod automation_triggers;
mod capture;
mod cli;
mod collect;
mod contacts;
mod conventions;
mod conversions;
mod crash;
mod deals;
mod demo;
mod forward;
mod imports;
mod listener;
mod loader;
mod segment_client;
mod sites;
mod support;
mod tenancy;
mod webhooks;
mod workspaces;
