//! Phase B on ClickHouse: the bench database (created, reused or dropped) and the hand-written
//! reference queries, sent straight to ClickHouse's HTTP interface in the plain form someone
//! would write against a table that holds each hit once (`count()`, one `GROUP BY` per widget),
//! so their time is ClickHouse's own time for the widget.

use std::time::Duration;

use anyhow::Context;
use reqwest::Url;
use serde_json::Value;
use tracking::analytics::clickhouse::quote;
use tracking::analytics::{Query, Summary};
use tracking::sites::SiteId;

use crate::{Answer, BREAKDOWNS, summary_answer};

pub struct Reference {
    client: reqwest::Client,
    /// The server's HTTP endpoint as given (credentials and settings included).
    server: Url,
    database: String,
}

impl Reference {
    pub fn new(server: &str, database: &str) -> anyhow::Result<Reference> {
        anyhow::ensure!(
            !database.is_empty()
                && database
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "the ClickHouse database name must be letters, digits and `_`"
        );
        Ok(Reference {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(600))
                .build()?,
            server: Url::parse(server).context("invalid --clickhouse URL")?,
            database: database.to_owned(),
        })
    }

    /// The analytics URL the store opens: the server with `database=` added.
    pub fn store_url(&self) -> String {
        let mut url = self.server.clone();
        url.query_pairs_mut()
            .append_pair("database", &self.database);
        url.to_string()
    }

    fn table(&self) -> String {
        format!("`{}`.events", self.database)
    }

    async fn send(&self, sql: String) -> anyhow::Result<String> {
        let mut request = self.client.post(self.server.clone()).body(sql);
        if !self.server.username().is_empty() {
            request = request.basic_auth(self.server.username(), self.server.password());
        }
        let response = request.send().await.context("ClickHouse unreachable")?;
        let status = response.status();
        let text = response.text().await?;
        anyhow::ensure!(status.is_success(), "ClickHouse answered {status}: {text}");
        Ok(text)
    }

    async fn rows(&self, sql: String) -> anyhow::Result<Vec<Value>> {
        let text = self.send(format!("{sql}\nFORMAT JSONEachRow")).await?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).with_context(|| format!("bad row {l}")))
            .collect()
    }

    /// The one site stored and its event count, when the database already holds a loaded run
    /// (`None` when it does not exist or is empty).
    pub async fn loaded(&self) -> anyhow::Result<Option<(SiteId, u64)>> {
        let exists = self
            .send(format!(
                "SELECT count() FROM system.tables WHERE database = {} AND name = 'events'",
                quote(&self.database)
            ))
            .await?;
        if exists.trim() == "0" {
            return Ok(None);
        }
        let rows = self
            .rows(format!(
                "SELECT site_id, count() AS n FROM {} GROUP BY site_id",
                self.table()
            ))
            .await?;
        match rows.as_slice() {
            [] => Ok(None),
            [row] => {
                let site: uuid::Uuid = row["site_id"].as_str().context("site_id")?.parse()?;
                Ok(Some((SiteId(site), int(&row["n"])? as u64)))
            }
            _ => anyhow::bail!("database {} holds several sites", self.database),
        }
    }

    /// Bytes of the table's active parts, and their count.
    pub async fn size(&self) -> anyhow::Result<(u64, u64)> {
        let rows = self
            .rows(format!(
                "SELECT sum(bytes_on_disk) AS bytes, count() AS parts FROM system.parts
                 WHERE database = {} AND table = 'events' AND active",
                quote(&self.database)
            ))
            .await?;
        let row = rows.first().context("no size row")?;
        Ok((int(&row["bytes"])? as u64, int(&row["parts"])? as u64))
    }

    pub async fn drop_database(&self) -> anyhow::Result<()> {
        self.send(format!("DROP DATABASE IF EXISTS `{}`", self.database))
            .await
            .map(drop)
    }

    /// `site_id = … AND ts in [from, to) AND bot = 0` for a range of whole seconds.
    fn range(&self, query: &Query) -> String {
        format!(
            "site_id = {} AND ts >= toDateTime({}) AND ts < toDateTime({}) AND bot = 0",
            quote(&query.site_id.uuid().to_string()),
            query.from.as_millis().div_euclid(1000),
            query.to.as_millis().div_euclid(1000),
        )
    }

    async fn summary(&self, query: &Query) -> anyhow::Result<Answer> {
        let rows = self
            .rows(format!(
                "SELECT uniqExact(visitor) AS visitors, count() AS sessions,
                        sum(pv) AS pageviews, sum(n) AS events,
                        avg(pv <= 1 AND eng = 0) AS bounce_rate, avg(dur) AS seconds
                 FROM (SELECT any(visitor) AS visitor, countIf(event_name = 'page_view') AS pv,
                              count() AS n, max(engaged) AS eng,
                              (max(time_ms) - min(time_ms)) / 1000 AS dur
                       FROM {} WHERE {} GROUP BY session)",
                self.table(),
                self.range(query)
            ))
            .await?;
        let row = rows.first().context("no summary row")?;
        let rate = |v: &Value| v.as_f64().filter(|f| f.is_finite()).unwrap_or(0.0);
        Ok(summary_answer(&Summary {
            visitors: int(&row["visitors"])?,
            sessions: int(&row["sessions"])?,
            pageviews: int(&row["pageviews"])?,
            events: int(&row["events"])?,
            bounce_rate: rate(&row["bounce_rate"]),
            avg_session_seconds: rate(&row["seconds"]),
            visitors_estimated: false,
        }))
    }

    /// Widget `index` (see `crate::WIDGETS`) as one hand-written statement.
    pub async fn widget(
        &self,
        index: usize,
        query: &Query,
        realtime: &Query,
    ) -> anyhow::Result<Answer> {
        Ok(match index {
            0 => self.summary(query).await?,
            1 => self
                .rows(format!(
                    "SELECT intDiv(time_ms, 86400000) * 86400000 AS day,
                            uniqExact(visitor) AS visitors, uniqExact(session) AS sessions,
                            countIf(event_name = 'page_view') AS pageviews, count() AS events
                     FROM {} WHERE {} GROUP BY day ORDER BY day",
                    self.table(),
                    self.range(query)
                ))
                .await?
                .iter()
                .map(|r| {
                    Ok((
                        Some(int(&r["day"])?.to_string()),
                        int(&r["visitors"])?,
                        int(&r["sessions"])?,
                        int(&r["pageviews"])?,
                        int(&r["events"])?,
                    ))
                })
                .collect::<anyhow::Result<_>>()?,
            2..=5 => self
                .rows(format!(
                    "SELECT {} AS dim, uniqExact(visitor) AS visitors, count() AS events
                     FROM {} WHERE {} GROUP BY dim
                     ORDER BY visitors DESC, events DESC, isNotNull(dim), dim LIMIT 10",
                    BREAKDOWNS[index - 2],
                    self.table(),
                    self.range(query)
                ))
                .await?
                .iter()
                .map(|r| {
                    Ok((
                        r["dim"].as_str().map(str::to_owned),
                        int(&r["visitors"])?,
                        int(&r["events"])?,
                        0,
                        0,
                    ))
                })
                .collect::<anyhow::Result<_>>()?,
            _ => self.summary(realtime).await?,
        })
    }
}

/// A 64-bit integer from ClickHouse JSON, which quotes them.
fn int(v: &Value) -> anyhow::Result<i64> {
    match v {
        Value::String(s) => Ok(s.parse()?),
        Value::Number(n) => n.as_i64().context("not an integer"),
        other => anyhow::bail!("not an integer: {other}"),
    }
}
