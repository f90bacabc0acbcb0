//! The SQL the server really runs, for the query plans: sqlx emits every statement it executes
//! as a `sqlx::query` tracing event (text, rows, elapsed) when that target is enabled. This layer
//! enables it only while [`on`] is set, so the timed runs pay nothing.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::field::{Field, Visit};
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

/// One executed statement.
#[derive(Debug, Clone)]
pub struct Statement {
    pub sql: String,
    pub elapsed_secs: f64,
}

static ON: AtomicBool = AtomicBool::new(false);
static STATEMENTS: Mutex<Vec<Statement>> = Mutex::new(Vec::new());

const TARGET: &str = "sqlx::query";

struct CaptureLayer;

impl<S: Subscriber> Layer<S> for CaptureLayer {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        if metadata.target() == TARGET && metadata.is_event() {
            Interest::sometimes()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>, _: Context<'_, S>) -> bool {
        metadata.target() == TARGET && ON.load(Ordering::Relaxed)
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut v = Visitor::default();
        event.record(&mut v);
        let sql = if v.statement.trim().is_empty() {
            v.summary
        } else {
            v.statement.trim().to_owned()
        };
        STATEMENTS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Statement {
                sql,
                elapsed_secs: v.elapsed_secs,
            });
    }
}

#[derive(Default)]
struct Visitor {
    summary: String,
    statement: String,
    elapsed_secs: f64,
}

impl Visit for Visitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "summary" => value.clone_into(&mut self.summary),
            "db.statement" => value.clone_into(&mut self.statement),
            _ => {}
        }
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        if field.name() == "elapsed_secs" {
            self.elapsed_secs = value;
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        // Strings recorded through `Debug` arrive quoted and escaped.
        let text = format!("{value:?}");
        let text = serde_json::from_str::<String>(&text).unwrap_or(text);
        self.record_str(field, &text);
    }
}

/// Installs the layer as the global subscriber (nothing else is logged).
pub fn install() {
    tracing_subscriber::registry().with(CaptureLayer).init();
}

/// Starts recording statements (dropping earlier ones).
pub fn start() {
    STATEMENTS.lock().unwrap_or_else(|e| e.into_inner()).clear();
    ON.store(true, Ordering::SeqCst);
}

/// Stops recording and returns what was recorded.
pub fn stop() -> Vec<Statement> {
    ON.store(false, Ordering::SeqCst);
    std::mem::take(&mut *STATEMENTS.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Collapses runs of whitespace, to compare SQL texts.
pub fn squash(sql: &str) -> String {
    sql.split_whitespace().collect::<Vec<_>>().join(" ")
}
