//! The gateway's view of every site, in memory: hostname, write key and measurement id to site.
//!
//! Collect requests must not touch the database before they are durable, so the gateway looks
//! sites up here. The directory is the one deliberately unscoped reader of `sites`: it routes
//! traffic for the whole deployment and never answers an API request. Each process reloads it
//! every few seconds (other processes' changes), and at once after a change it made itself.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use platform::db::Db;
use platform::id::WorkspaceId;
use platform::with_db;
use tokio_util::sync::CancellationToken;

use super::{LoaderSettings, SiteId};

/// What the gateway needs to know about a site.
#[derive(Debug, Clone)]
pub struct SiteConfig {
    pub id: SiteId,
    pub workspace_id: WorkspaceId,
    pub hostnames: Vec<String>,
    pub measurement_ids: Vec<String>,
    pub web_container_id: Option<String>,
    pub tagging_server_url: Option<String>,
    pub preview_server_url: Option<String>,
    pub allowed_origins: Vec<String>,
    pub loader: LoaderSettings,
    pub write_key: String,
    pub mp_secret_hash: String,
    pub truncate_ip: bool,
}

impl SiteConfig {
    /// Whether CORS allows `origin`.
    pub fn allows_origin(&self, origin: &str) -> bool {
        self.allowed_origins
            .iter()
            .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
    }
}

#[derive(Default)]
struct Snapshot {
    by_host: HashMap<String, Arc<SiteConfig>>,
    by_write_key: HashMap<String, Arc<SiteConfig>>,
    by_measurement_id: HashMap<String, Arc<SiteConfig>>,
}

pub struct SiteDirectory {
    db: Db,
    snapshot: RwLock<Arc<Snapshot>>,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: SiteId,
    workspace_id: WorkspaceId,
    hostnames: String,
    measurement_ids: String,
    web_container_id: Option<String>,
    tagging_server_url: Option<String>,
    preview_server_url: Option<String>,
    allowed_origins: String,
    loader: String,
    write_key: String,
    mp_secret_hash: String,
    truncate_ip: bool,
}

impl SiteDirectory {
    pub async fn load(db: Db) -> anyhow::Result<Arc<SiteDirectory>> {
        let directory = Arc::new(SiteDirectory {
            db,
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
        });
        directory.reload().await?;
        Ok(directory)
    }

    /// Reads every site again and swaps the snapshot.
    pub async fn reload(&self) -> anyhow::Result<()> {
        let rows: Vec<Row> = with_db!(&self.db, pool => sqlx::query_as(
            "SELECT id, workspace_id, hostnames, measurement_ids, web_container_id, tagging_server_url,
                    preview_server_url, allowed_origins, loader, write_key, mp_secret_hash, truncate_ip
             FROM sites ORDER BY id",
        ).fetch_all(pool).await)?;
        let mut snapshot = Snapshot::default();
        for row in rows {
            let site = Arc::new(SiteConfig {
                id: row.id,
                workspace_id: row.workspace_id,
                hostnames: serde_json::from_str(&row.hostnames).unwrap_or_default(),
                measurement_ids: serde_json::from_str(&row.measurement_ids).unwrap_or_default(),
                web_container_id: row.web_container_id,
                tagging_server_url: row.tagging_server_url,
                preview_server_url: row.preview_server_url,
                allowed_origins: serde_json::from_str(&row.allowed_origins).unwrap_or_default(),
                loader: serde_json::from_str(&row.loader).unwrap_or_default(),
                write_key: row.write_key,
                mp_secret_hash: row.mp_secret_hash,
                truncate_ip: row.truncate_ip,
            });
            for host in &site.hostnames {
                snapshot.by_host.insert(host.clone(), site.clone());
            }
            for id in &site.measurement_ids {
                // The oldest site claiming a measurement id wins; ids are usually unique.
                snapshot
                    .by_measurement_id
                    .entry(id.clone())
                    .or_insert_with(|| site.clone());
            }
            snapshot
                .by_write_key
                .insert(site.write_key.clone(), site.clone());
        }
        *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(snapshot);
        Ok(())
    }

    fn current(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The site serving `host` (a `Host` header value; any port is ignored).
    pub fn by_host(&self, host: &str) -> Option<Arc<SiteConfig>> {
        let host = host
            .rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(host, |(h, _)| h);
        let snapshot = self.current();
        snapshot
            .by_host
            .get(host)
            .or_else(|| snapshot.by_host.get(&host.to_ascii_lowercase()))
            .cloned()
    }

    pub fn by_write_key(&self, key: &str) -> Option<Arc<SiteConfig>> {
        self.current().by_write_key.get(key).cloned()
    }

    pub fn by_measurement_id(&self, id: &str) -> Option<Arc<SiteConfig>> {
        self.current().by_measurement_id.get(id).cloned()
    }

    /// Reloads every `every` until `shutdown`.
    pub async fn refresh_loop(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            if let Err(err) = self.reload().await {
                tracing::warn!(error = %err, "site directory reload failed; keeping the previous one");
            }
        }
    }
}
