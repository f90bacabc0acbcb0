//! Per-site traffic counters: Prometheus counters for operators, and daily totals in the state
//! database for the API (and billing, later).
//!
//! The gateway counts in memory and a flusher adds the totals to `site_usage` every few seconds
//! (and at shutdown), so counting never puts a database write on the request path. A crash
//! loses at most one flush interval of counts, never hits.

use std::borrow::Cow;
use std::sync::Mutex;
use std::time::Duration;

use chrono::NaiveDate;
use rustc_hash::FxHashMap;

use platform::db::Db;
use platform::id::WorkspaceId;
use platform::with_tx;
use tokio_util::sync::CancellationToken;

use crate::sites::SiteId;

/// (site, workspace, UTC day, metric): the accepted metrics are static names, so counting an
/// accepted request allocates nothing.
type Key = (SiteId, WorkspaceId, NaiveDate, Cow<'static, str>);

/// Counts waiting for the next flush, and each site's Prometheus counters. Both maps are keyed
/// by our own ids and metric names, never by what a client sends, so they use `FxHash`:
/// SipHash's flood resistance buys nothing there, and the gateway hashes three keys a request.
#[derive(Default)]
pub struct Usage {
    pending: Mutex<FxHashMap<Key, i64>>,
    /// Each site's Prometheus counters for accepted traffic, registered once: looking a labelled
    /// counter up formats the site id and hashes the labels, which the request path should not
    /// pay every time.
    accepted_counters: Mutex<FxHashMap<SiteId, (metrics::Counter, metrics::Counter)>>,
}

impl Usage {
    /// Adds `counts` for today under one clock read and one lock (this is on the request path).
    fn add(&self, site: SiteId, workspace: WorkspaceId, counts: &[(Cow<'static, str>, i64)]) {
        let day = chrono::Utc::now().date_naive();
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for (metric, n) in counts {
            // Cloning a borrowed name copies a pointer.
            *pending
                .entry((site, workspace, day, metric.clone()))
                .or_default() += n;
        }
    }

    pub fn accepted(&self, site: SiteId, workspace: WorkspaceId, events: usize) {
        let (requests, events_counter) = self
            .accepted_counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(site)
            .or_insert_with(|| {
                let label = site.to_string();
                (
                    metrics::counter!("tracking_requests_total", "site" => label.clone(), "outcome" => "accepted"),
                    metrics::counter!("tracking_events_total", "site" => label),
                )
            })
            .clone();
        requests.increment(1);
        events_counter.increment(events as u64);
        self.add(
            site,
            workspace,
            &[
                (Cow::Borrowed("accepted_requests"), 1),
                (Cow::Borrowed("accepted_events"), events as i64),
            ],
        );
    }

    /// A refused request; `site` is known for most reasons, not for an unknown host.
    pub fn rejected(&self, site: Option<(SiteId, WorkspaceId)>, reason: &str) {
        let label = site.map_or_else(|| "unknown".to_owned(), |(s, _)| s.to_string());
        metrics::counter!("tracking_requests_total", "site" => label, "outcome" => "rejected", "reason" => reason.to_owned())
            .increment(1);
        if let Some((site, workspace)) = site {
            self.add(
                site,
                workspace,
                &[(Cow::Owned(format!("rejected.{reason}")), 1)],
            );
        }
    }

    /// Adds what was counted since the last flush to `site_usage`. On failure the counts are
    /// put back for the next flush.
    pub async fn flush(&self, db: &Db) -> Result<(), sqlx::Error> {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        if pending.is_empty() {
            return Ok(());
        }
        let result = write(db, &pending).await;
        if result.is_err() {
            let mut current = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            for (key, count) in pending {
                *current.entry(key).or_default() += count;
            }
        }
        result
    }

    /// Flushes every `every` until `shutdown`, then once more.
    pub async fn flush_loop(&self, db: Db, every: Duration, shutdown: CancellationToken) {
        loop {
            let stop = tokio::select! {
                _ = shutdown.cancelled() => true,
                _ = tokio::time::sleep(every) => false,
            };
            if let Err(err) = self.flush(&db).await {
                tracing::warn!(error = %err, "usage flush failed; counts kept for the next one");
            }
            if stop {
                return;
            }
        }
    }
}

async fn write(db: &Db, pending: &FxHashMap<Key, i64>) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    for ((site, workspace, day, metric), count) in pending {
        // A site deleted since it was counted has nothing to add to (the insert would violate
        // the foreign key).
        with_tx!(&mut tx, conn => sqlx::query(
            "INSERT INTO site_usage (site_id, workspace_id, day, metric, count)
             SELECT $1, $2, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM sites WHERE id = $1)
             ON CONFLICT (site_id, day, metric) DO UPDATE SET count = site_usage.count + excluded.count",
        )
        .bind(*site).bind(*workspace).bind(day.to_string()).bind(metric.as_ref()).bind(*count)
        .execute(conn).await.map(|_| ()))?;
    }
    tx.commit().await
}
