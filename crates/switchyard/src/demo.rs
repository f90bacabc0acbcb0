//! `switchyard demo`: realistic synthetic tracking traffic for trying the dashboards and for
//! benchmarks. It provisions a demo user, workspace and sites through the library functions,
//! then writes GA4 gtag requests — as the gateway would have received them over the past days,
//! and stored as the gateway stores them (the request, not its parsed hits) — into the event
//! log, where the normal pipeline picks them up.
//!
//! Everything the traffic is made of is drawn from one seeded generator, so the same seed, site
//! list and end time give byte-identical log records (ids included: they are UUIDv7 built from
//! the backdated receive time and seeded random bits, so they stay time-ordered like the
//! gateway's). [`TrafficGenerator`] is public so the analytics benchmark reuses it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use futures::StreamExt;
use platform::db::Db;
use platform::http::PageParams;
use platform::id::WorkspaceId;
use platform::{Actor, Role, Scope, Timestamp};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tracking::RawRequest;
use tracking::analytics::AnalyticsStore;
use tracking::enrich::Enricher;
use tracking::gateway::{LogRecord, RecordError, RecordId, hit_id};
use tracking::log::EventLog;
use tracking::pipeline::Pipeline;
use tracking::sites::{SiteId, SiteRequest};

/// What `switchyard demo` is asked for.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub sites: u32,
    pub days: u32,
    pub visitors_per_day: u32,
    pub seed: u64,
    pub email: String,
    pub password: String,
    pub workspace: String,
}

/// The kind of business a demo site is: it decides its pages and what counts as a conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SiteKind {
    /// E-commerce: product views, carts, `purchase` with items and revenue.
    Shop,
    /// Software: pricing and docs, `generate_lead` (demo requests, with a value) and `sign_up`.
    Saas,
    /// Content: articles, newsletter `sign_up`.
    Publisher,
}

/// A site traffic is generated for.
#[derive(Debug, Clone, Serialize)]
pub struct DemoSite {
    pub site_id: SiteId,
    pub workspace_id: WorkspaceId,
    pub name: String,
    pub kind: SiteKind,
    /// The site's own domain, e.g. `northwind-outfitters.example`.
    pub domain: String,
    pub measurement_id: String,
}

impl DemoSite {
    /// The `index`-th demo site (0-based): kinds rotate shop, SaaS, publisher.
    pub fn nth(index: u32, site_id: SiteId, workspace_id: WorkspaceId) -> DemoSite {
        let kind = [SiteKind::Shop, SiteKind::Saas, SiteKind::Publisher][index as usize % 3];
        let (name, domain) = match kind {
            SiteKind::Shop => ("Northwind Outfitters", "northwind-outfitters"),
            SiteKind::Saas => ("Ledgerly", "ledgerly"),
            SiteKind::Publisher => ("The Daily Brief", "dailybrief"),
        };
        let round = index / 3;
        let (name, domain) = if round == 0 {
            (name.to_owned(), format!("{domain}.example"))
        } else {
            (
                format!("{name} {}", round + 1),
                format!("{domain}-{}.example", round + 1),
            )
        };
        DemoSite {
            site_id,
            workspace_id,
            name,
            kind,
            domain,
            measurement_id: format!("G-DEMO{:04}", index + 1),
        }
    }
}

/// What was generated for one site: exactly what its analytics must report back.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SiteTotals {
    /// Log records (gtag requests).
    pub records: u64,
    pub events: u64,
    pub visitors: u64,
    pub sessions: u64,
    pub pageviews: u64,
    /// Sessions with one page view and no engagement.
    pub bounced_sessions: u64,
    /// `purchase`, `generate_lead` and `sign_up` events.
    pub conversions: u64,
    /// Sum of the conversions' `value` (EUR).
    pub revenue: f64,
    /// Events per event name.
    pub event_names: BTreeMap<String, u64>,
    /// Events per country, for visitors whose address the MaxMind test databases
    /// (`shared/testdata/geoip`) place; the others are random public addresses.
    pub mapped_countries: BTreeMap<String, u64>,
}

impl SiteTotals {
    fn add(&mut self, other: &SiteTotals) {
        self.records += other.records;
        self.events += other.events;
        self.visitors += other.visitors;
        self.sessions += other.sessions;
        self.pageviews += other.pageviews;
        self.bounced_sessions += other.bounced_sessions;
        self.conversions += other.conversions;
        self.revenue += other.revenue;
        for (k, v) in &other.event_names {
            *self.event_names.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.mapped_countries {
            *self.mapped_countries.entry(k.clone()).or_default() += v;
        }
    }
}

/// What `switchyard demo` did.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    pub email: String,
    pub workspace_id: WorkspaceId,
    /// An admin API key, when this run created the workspace (shown once).
    pub api_key: Option<String>,
    /// The generated events lie in `[from, to)`.
    pub from: Timestamp,
    pub to: Timestamp,
    pub sites: Vec<(DemoSite, SiteTotals)>,
    pub totals: SiteTotals,
    pub seconds: f64,
}

/// Provisions the demo user, workspace and sites (reusing them on a second run), then appends
/// `options.days` days of traffic ending now to `log`.
pub async fn run(
    db: &Db,
    log: &dyn EventLog,
    options: &DemoOptions,
    progress: bool,
) -> anyhow::Result<DemoReport> {
    let started = Instant::now();
    let boot = platform::accounts::bootstrap(
        db,
        &options.email,
        &options.password,
        &options.workspace,
        false,
    )
    .await?;
    let scope = Scope {
        workspace_id: boot.workspace_id,
        actor: Actor::User(boot.user_id),
        role: Role::Owner,
    };
    let sites = provision_sites(db, &scope, options.sites).await?;
    let to = Timestamp::now();
    let mut generator = TrafficGenerator::new(
        sites,
        options.days,
        options.visitors_per_day,
        options.seed,
        to,
    );
    let mut appended = 0u64;
    while let Some(records) = generator.next_day() {
        append_all(log, &records).await?;
        appended += records.len() as u64;
        if progress {
            let (done, all) = generator.progress();
            eprint!(
                "\rdemo: day {done}/{all} ({:.0}%), {appended} requests appended",
                100.0 * f64::from(done) / f64::from(all.max(1))
            );
            let _ = std::io::stderr().flush();
        }
    }
    if progress {
        eprintln!();
    }
    let sites = generator.into_totals();
    let mut totals = SiteTotals::default();
    for (_, t) in &sites {
        totals.add(t);
    }
    Ok(DemoReport {
        email: options.email.clone(),
        workspace_id: boot.workspace_id,
        api_key: boot.api_key,
        from: to - Duration::from_secs(u64::from(options.days) * 86_400),
        to,
        sites,
        totals,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The demo sites of the workspace, created when missing (found again by name).
async fn provision_sites(db: &Db, scope: &Scope, count: u32) -> anyhow::Result<Vec<DemoSite>> {
    let existing = tracking::sites::store::list(
        db,
        scope,
        &PageParams {
            limit: Some(200),
            cursor: None,
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("listing sites: {}", e.message))?
    .data;
    let mut sites = Vec::new();
    for index in 0..count {
        let template = DemoSite::nth(index, SiteId::new(), scope.workspace_id);
        let site_id = match existing.iter().find(|s| s.name == template.name) {
            Some(site) => site.id,
            None => {
                let request = SiteRequest {
                    name: Some(template.name.clone()),
                    hostnames: Some(vec![format!("t.{}", template.domain)]),
                    measurement_ids: Some(vec![template.measurement_id.clone()]),
                    allowed_origins: Some(vec![format!("https://{}", template.domain)]),
                    ..SiteRequest::default()
                };
                tracking::sites::store::create(db, scope, &request)
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!("creating demo site {}: {}", template.name, e.message)
                    })?
                    .site
                    .id
            }
        };
        sites.push(DemoSite {
            site_id,
            ..template
        });
    }
    Ok(sites)
}

/// Appends records as the gateway does: one append per request, in the log's compact form
/// (the request without its hits, which reading parses again; see
/// [`tracking::gateway::CompactRecord`]), many at once so the log's group commit shares its
/// fsyncs.
pub async fn append_all(log: &dyn EventLog, records: &[LogRecord]) -> anyhow::Result<()> {
    let mut appends = futures::stream::iter(records)
        .map(|record| async move {
            let payload = stored_form(record)?;
            log.append(payload).await.map_err(anyhow::Error::from)
        })
        .buffer_unordered(512);
    while let Some(result) = appends.next().await {
        result?;
    }
    Ok(())
}

/// A generated record as the gateway would have stored it: [`tracking::gateway::CompactRecord`].
/// The generator gives each hit the id the reader derives ([`hit_id`]), so reading it back
/// yields the very hits the generator counted.
pub fn stored_form(record: &LogRecord) -> Result<Vec<u8>, RecordError> {
    let mut out = Vec::new();
    record.write_compact(&mut out)?;
    Ok(out)
}

/// Runs the analytics pipeline over everything in `log` not yet consumed, the way the worker
/// role's pipeline does (batch, process, acknowledge), and returns the records consumed. Stops
/// when the log has had nothing new for `idle`.
pub async fn ingest(
    log: &dyn EventLog,
    store: std::sync::Arc<dyn AnalyticsStore>,
    enricher: Enricher,
    idle: Duration,
) -> anyhow::Result<u64> {
    let pipeline = Pipeline::new(store, enricher);
    let mut subscription = log.subscribe(tracking::pipeline::GROUP).await?;
    let mut consumed = 0u64;
    loop {
        let batch = subscription.next_batch(2_000, idle).await?;
        if batch.is_empty() {
            return Ok(consumed);
        }
        pipeline.process_batch(&batch).await?;
        subscription.ack(&batch).await?;
        consumed += batch.len() as u64;
    }
}

/// Prints the report for people.
pub fn render(report: &DemoReport) -> String {
    let mut out = String::new();
    let t = &report.totals;
    let _ = writeln!(
        out,
        "demo traffic for {} ({}) from {} to {}, in {:.1}s ({:.0} requests/s)",
        report.email,
        report.workspace_id,
        report.from.to_rfc3339(),
        report.to.to_rfc3339(),
        report.seconds,
        t.records as f64 / report.seconds.max(1e-9)
    );
    let _ = writeln!(
        out,
        "{:<28} {:>9} {:>9} {:>9} {:>9} {:>10} {:>7} {:>6} {:>12}",
        "site",
        "requests",
        "events",
        "visitors",
        "sessions",
        "pageviews",
        "bounce",
        "conv",
        "revenue"
    );
    let row = |out: &mut String, name: &str, t: &SiteTotals| {
        let _ = writeln!(
            out,
            "{:<28} {:>9} {:>9} {:>9} {:>9} {:>10} {:>6.1}% {:>6} {:>12.2}",
            name,
            t.records,
            t.events,
            t.visitors,
            t.sessions,
            t.pageviews,
            100.0 * t.bounced_sessions as f64 / (t.sessions.max(1)) as f64,
            t.conversions,
            t.revenue
        );
    };
    for (site, totals) in &report.sites {
        row(
            &mut out,
            &format!("{} ({})", site.name, site.site_id),
            totals,
        );
    }
    row(&mut out, "total", t);
    if let Some(key) = &report.api_key {
        let _ = writeln!(out, "admin API key (shown once): {key}");
    }
    let _ = writeln!(
        out,
        "the records are in the event log; `switchyard serve` (worker role) ingests them into analytics"
    );
    out
}

// ---------------------------------------------------------------------------------------------
// The generator.

/// Real user agents with their share of traffic and a screen size that goes with them.
const AGENTS: &[(&str, &str, u32)] = &[
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
        "1920x1080",
        26,
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
        "390x844",
        20,
    ),
    (
        "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.6778.81 Mobile Safari/537.36",
        "412x915",
        16,
    ),
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.6 Safari/605.1.15",
        "1512x982",
        10,
    ),
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
        "1728x1117",
        8,
    ),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.2903.70",
        "1920x1080",
        7,
    ),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
        "1536x864",
        5,
    ),
    (
        "Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
        "820x1180",
        4,
    ),
    (
        "Mozilla/5.0 (Linux; Android 14; SAMSUNG SM-A546B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/26.0 Chrome/122.0.0.0 Mobile Safari/537.36",
        "384x854",
        3,
    ),
    (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
        "2560x1440",
        1,
    ),
];

/// Where visitors are: a country, its share, its language, and an address the MaxMind test
/// databases map to it (`None`: a random public address, which the test databases do not know
/// and a real GeoLite2 database places somewhere).
const COUNTRIES: &[(&str, u32, &str, Option<&str>)] = &[
    ("US", 30, "en-us", Some("216.160.83.56")),
    ("GB", 18, "en-gb", Some("81.2.69.142")),
    ("DE", 12, "de-de", None),
    ("SE", 6, "sv-se", Some("89.160.20.112")),
    ("FR", 6, "fr-fr", None),
    ("JP", 5, "ja-jp", Some("2001:218::1")),
    ("CN", 3, "zh-cn", Some("175.16.199.0")),
    ("PH", 3, "en-ph", Some("202.196.224.0")),
    ("BT", 2, "dz-bt", Some("67.43.156.0")),
    ("IN", 5, "en-in", None),
    ("BR", 4, "pt-br", None),
    ("ES", 6, "es-es", None),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Direct,
    OrganicSearch,
    Social,
    Email,
    PaidSearch,
    PaidSocial,
    Referral,
}

const SOURCES: &[(Source, u32)] = &[
    (Source::Direct, 24),
    (Source::OrganicSearch, 34),
    (Source::Social, 11),
    (Source::Email, 8),
    (Source::PaidSearch, 11),
    (Source::PaidSocial, 8),
    (Source::Referral, 4),
];

const SEARCH_ENGINES: &[(&str, u32)] = &[
    ("https://www.google.com/", 86),
    ("https://www.bing.com/", 8),
    ("https://duckduckgo.com/", 4),
    ("https://search.yahoo.com/", 2),
];

const SOCIAL: &[(&str, u32)] = &[
    ("https://l.facebook.com/", 30),
    ("https://l.instagram.com/", 22),
    ("https://t.co/", 12),
    ("https://www.linkedin.com/", 14),
    ("https://www.reddit.com/", 12),
    ("https://www.youtube.com/", 10),
];

const REFERRALS: &[(&str, u32)] = &[
    ("https://news.ycombinator.com/", 3),
    ("https://medium.com/", 4),
    ("https://www.producthunt.com/", 2),
    ("https://en.wikipedia.org/", 3),
    ("https://www.trustpilot.com/", 2),
];

const CAMPAIGNS: &[(&str, u32)] = &[
    ("black_friday_2026", 5),
    ("winter_sale", 3),
    ("brand", 4),
    ("retargeting_q4", 2),
    ("newsletter_weekly", 3),
];

const KEYWORDS: &[&str] = &[
    "buy online",
    "best price",
    "free shipping",
    "reviews",
    "alternative",
    "discount code",
];

/// A site kind's pages: path, title, weight as an entry or next page.
fn pages(kind: SiteKind) -> &'static [(&'static str, &'static str, u32)] {
    match kind {
        SiteKind::Shop => &[
            ("/", "Home", 30),
            ("/collections/new", "New arrivals", 10),
            ("/collections/sale", "Sale", 9),
            ("/products/merino-crew-sweater", "Merino crew sweater", 7),
            ("/products/waxed-field-jacket", "Waxed field jacket", 6),
            ("/products/canvas-tote", "Canvas tote", 6),
            ("/products/wool-beanie", "Wool beanie", 5),
            ("/products/trail-runner-shoes", "Trail runner shoes", 5),
            (
                "/blog/how-to-layer-for-winter",
                "How to layer for winter",
                6,
            ),
            ("/blog/caring-for-wool", "Caring for wool", 3),
            ("/pages/shipping", "Shipping & returns", 3),
            ("/pages/about", "About us", 2),
        ],
        SiteKind::Saas => &[
            ("/", "Home", 30),
            ("/pricing", "Pricing", 14),
            ("/features", "Features", 10),
            ("/features/invoicing", "Invoicing", 6),
            ("/features/expenses", "Expense tracking", 5),
            ("/customers", "Customers", 4),
            (
                "/blog/closing-the-books-faster",
                "Closing the books faster",
                8,
            ),
            ("/blog/vat-for-startups", "VAT for startups", 6),
            ("/docs/getting-started", "Getting started", 7),
            ("/docs/api", "API reference", 4),
            ("/about", "About", 2),
        ],
        SiteKind::Publisher => &[
            ("/", "Front page", 25),
            (
                "/news/markets-rally-on-rate-cut",
                "Markets rally on rate cut",
                12,
            ),
            (
                "/news/city-council-approves-budget",
                "City council approves budget",
                9,
            ),
            ("/news/new-rail-line-opens", "New rail line opens", 8),
            (
                "/news/storm-warning-for-weekend",
                "Storm warning for the weekend",
                8,
            ),
            ("/opinion/why-remote-work-stays", "Why remote work stays", 6),
            ("/topics/technology", "Technology", 6),
            ("/topics/sport", "Sport", 6),
            ("/newsletter", "Newsletter", 3),
            ("/about", "About", 1),
        ],
    }
}

/// The shop's products: id, name, price (EUR), page.
const PRODUCTS: &[(&str, &str, f64, &str)] = &[
    (
        "SKU-MCS-01",
        "Merino crew sweater",
        89.0,
        "/products/merino-crew-sweater",
    ),
    (
        "SKU-WFJ-02",
        "Waxed field jacket",
        219.0,
        "/products/waxed-field-jacket",
    ),
    ("SKU-CT-03", "Canvas tote", 35.0, "/products/canvas-tote"),
    ("SKU-WB-04", "Wool beanie", 29.0, "/products/wool-beanie"),
    (
        "SKU-TRS-05",
        "Trail runner shoes",
        129.0,
        "/products/trail-runner-shoes",
    ),
];

/// Picks from `(item, weight)` pairs.
fn pick<'a, T>(rng: &mut StdRng, items: &'a [(T, u32)]) -> &'a T {
    let total: u32 = items.iter().map(|(_, w)| w).sum();
    let mut n = rng.gen_range(0..total.max(1));
    for (item, weight) in items {
        if n < *weight {
            return item;
        }
        n -= weight;
    }
    &items[items.len() - 1].0
}

/// A browser that visits a site, possibly more than once.
#[derive(Debug, Clone)]
struct Visitor {
    cid: String,
    agent: usize,
    country: usize,
    ip: IpAddr,
    sessions: u32,
    sids: Vec<i64>,
}

/// Most visitors a site remembers as possible returners (bounded memory on long runs).
const RETURNING_POOL: usize = 20_000;
/// Share of a day's visits that are returning visitors.
const RETURNING_SHARE: f64 = 0.25;

struct SiteState {
    site: DemoSite,
    visitors: Vec<Visitor>,
    totals: SiteTotals,
}

/// Seeded, day-by-day GA4 traffic for a set of sites, as log records.
pub struct TrafficGenerator {
    rng: StdRng,
    sites: Vec<SiteState>,
    days: u32,
    visitors_per_day: u32,
    end: Timestamp,
    next_day: u32,
}

/// One event line of a gtag request body.
struct Line(String);

impl TrafficGenerator {
    /// Traffic for `days` days ending at `end` (exclusive), about `visitors_per_day` visits per
    /// site and day.
    pub fn new(
        sites: Vec<DemoSite>,
        days: u32,
        visitors_per_day: u32,
        seed: u64,
        end: Timestamp,
    ) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            sites: sites
                .into_iter()
                .map(|site| SiteState {
                    site,
                    visitors: Vec::new(),
                    totals: SiteTotals::default(),
                })
                .collect(),
            days,
            visitors_per_day,
            end,
            next_day: 0,
        }
    }

    /// (days generated, days in all).
    pub fn progress(&self) -> (u32, u32) {
        (self.next_day, self.days)
    }

    /// The next day's records (oldest day first), ordered by receive time; `None` when done.
    pub fn next_day(&mut self) -> Option<Vec<LogRecord>> {
        if self.next_day >= self.days {
            return None;
        }
        let day_start =
            self.end - Duration::from_secs(u64::from(self.days - self.next_day) * 86_400);
        // Weekends are quieter, as in most B2B and retail traffic.
        let weekday = chrono::Datelike::weekday(&day_start.as_datetime()).num_days_from_monday();
        let volume = if weekday >= 5 { 0.75 } else { 1.0 };
        let mut records = Vec::new();
        for site in 0..self.sites.len() {
            let jitter = self.rng.gen_range(0.9..1.1);
            let visits = (f64::from(self.visitors_per_day) * volume * jitter).round() as u32;
            for _ in 0..visits.max(1) {
                self.session(site, day_start, &mut records);
            }
        }
        records.sort_by_key(|r| (r.request.received_at, r.id));
        self.next_day += 1;
        Some(records)
    }

    /// Each site with what was generated for it.
    pub fn into_totals(self) -> Vec<(DemoSite, SiteTotals)> {
        self.sites.into_iter().map(|s| (s.site, s.totals)).collect()
    }

    /// A time-ordered id for something received at `time`, from the seeded generator.
    fn uuid_at(&mut self, time: Timestamp) -> uuid::Uuid {
        let mut random = [0u8; 10];
        self.rng.fill(&mut random);
        let millis = u64::try_from(time.as_datetime().timestamp_millis()).unwrap_or(0);
        uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid()
    }

    /// A session start in `[day_start, day_start + 23 h)`, busier in the afternoon and evening
    /// (UTC); the last hour is left free so no session runs past the end.
    fn session_start(&mut self, day_start: Timestamp) -> Timestamp {
        const HOURLY: [u32; 23] = [
            3, 2, 1, 1, 1, 2, 4, 6, 8, 9, 10, 10, 10, 10, 10, 10, 10, 11, 12, 12, 11, 9, 6,
        ];
        let weighted: Vec<(usize, u32)> = HOURLY.iter().copied().enumerate().collect();
        let hour = *pick(&mut self.rng, &weighted) as u64;
        let second = self.rng.gen_range(0..3_600u64);
        day_start + Duration::from_secs(hour * 3_600 + second)
    }

    fn new_visitor(&mut self, first_seen: Timestamp) -> Visitor {
        let agents: Vec<(usize, u32)> = AGENTS.iter().enumerate().map(|(i, a)| (i, a.2)).collect();
        let agent = *pick(&mut self.rng, &agents);
        let countries: Vec<(usize, u32)> = COUNTRIES
            .iter()
            .enumerate()
            .map(|(i, c)| (i, c.1))
            .collect();
        let country = *pick(&mut self.rng, &countries);
        let ip = match COUNTRIES[country].3 {
            Some(mapped) => mapped.parse().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            // A public-looking address (first octet outside private and reserved ranges).
            None => IpAddr::V4(Ipv4Addr::new(
                self.rng.gen_range(11..=99),
                self.rng.gen_range(0..=255),
                self.rng.gen_range(0..=255),
                self.rng.gen_range(1..=254),
            )),
        };
        let cid = format!(
            "{}.{}",
            self.rng.gen_range(100_000_000..2_000_000_000u32),
            first_seen.as_datetime().timestamp()
        );
        Visitor {
            cid,
            agent,
            country,
            ip,
            sessions: 0,
            sids: Vec::new(),
        }
    }

    /// One session of a new or returning visitor of `site`, appended to `out` as requests.
    fn session(&mut self, site: usize, day_start: Timestamp, out: &mut Vec<LogRecord>) {
        let start = self.session_start(day_start);
        let returning = !self.sites[site].visitors.is_empty() && self.rng.gen_bool(RETURNING_SHARE);
        let mut visitor = if returning {
            let i = self.rng.gen_range(0..self.sites[site].visitors.len());
            self.sites[site].visitors[i].clone()
        } else {
            self.sites[site].totals.visitors += 1;
            self.new_visitor(start)
        };
        visitor.sessions += 1;
        let mut sid = start.as_datetime().timestamp();
        while visitor.sids.contains(&sid) {
            sid += 1;
        }
        visitor.sids.push(sid);

        let kind = self.sites[site].site.kind;
        let source = *pick(&mut self.rng, SOURCES);
        let (landing_query, referrer) = self.acquisition(source);
        let conversion_rate = match source {
            Source::Email => 0.06,
            Source::PaidSearch | Source::PaidSocial => 0.04,
            Source::Direct => 0.035,
            Source::OrganicSearch => 0.025,
            Source::Social | Source::Referral => 0.012,
        } * if returning { 1.6 } else { 1.0 }
            * if kind == SiteKind::Publisher {
                2.0
            } else {
                1.0
            };
        let converts = self.rng.gen_bool(conversion_rate);
        let bounce_rate = match source {
            Source::Email => 0.30,
            Source::Social | Source::PaidSocial => 0.60,
            _ => 0.45,
        };
        let mut path: Vec<(&'static str, &'static str)> = Vec::new();
        let all = pages(kind);
        let weighted: Vec<((&str, &str), u32)> = all.iter().map(|p| ((p.0, p.1), p.2)).collect();
        let landing = match (source, kind) {
            (Source::PaidSearch | Source::PaidSocial | Source::Email, SiteKind::Shop) => {
                ("/lp/black-friday", "Black Friday: 30% off everything")
            }
            (Source::PaidSearch | Source::PaidSocial | Source::Email, SiteKind::Saas) => {
                ("/lp/free-trial", "Start your free trial")
            }
            _ => *pick(&mut self.rng, &weighted),
        };
        path.push(landing);
        if converts || !self.rng.gen_bool(bounce_rate) {
            let extra = 1 + (0..10).take_while(|_| self.rng.gen_bool(0.6)).count();
            for _ in 0..extra {
                path.push(*pick(&mut self.rng, &weighted));
            }
        }
        if converts {
            match kind {
                SiteKind::Shop => {
                    let (_, name, _, page) = PRODUCTS[self.rng.gen_range(0..PRODUCTS.len())];
                    path.push((page, name));
                    path.push(("/cart", "Your cart"));
                    path.push(("/checkout", "Checkout"));
                    path.push(("/checkout/thank-you", "Thank you for your order"));
                }
                SiteKind::Saas => {
                    path.push(("/pricing", "Pricing"));
                    if self.rng.gen_bool(0.4) {
                        path.push(("/demo", "Book a demo"));
                        path.push(("/demo/thanks", "Thanks, we'll be in touch"));
                    } else {
                        path.push(("/signup", "Create your account"));
                        path.push(("/signup/welcome", "Welcome to Ledgerly"));
                    }
                }
                SiteKind::Publisher => {
                    path.push(("/newsletter", "Newsletter"));
                    path.push(("/newsletter/thanks", "You're subscribed"));
                }
            }
        }
        // A single-page visit counts as engaged when the visitor stayed (GA4: over 10 s).
        let engaged_single = path.len() == 1 && self.rng.gen_bool(0.3);
        let engaged = path.len() > 1 || engaged_single;

        let state = &mut self.sites[site];
        state.totals.sessions += 1;
        if !engaged {
            state.totals.bounced_sessions += 1;
        }
        let site_info = state.site.clone();
        let mut time = start;
        let mut previous_url: Option<String> = None;
        let mut cart: Vec<(&str, &str, f64, u32)> = Vec::new();
        let pages_total = path.len();
        for (index, (page, title)) in path.iter().enumerate() {
            let mut url = format!("https://{}{page}", site_info.domain);
            if index == 0 && !landing_query.is_empty() {
                url.push('?');
                url.push_str(&landing_query);
            }
            let mut lines = Vec::new();
            let mut first = String::from("en=page_view&_ee=1");
            if index == 0 {
                first.push_str("&_ss=1");
                if visitor.sessions == 1 {
                    first.push_str("&_fv=1");
                }
            }
            lines.push(Line(first));
            let dwell_ms = (self.rng.gen_range(2.0f64..5.2).exp() * 1_000.0) as u64;
            if engaged && self.rng.gen_bool(0.45) {
                lines.push(Line(format!(
                    "en=scroll&epn.percent_scrolled=90&_et={}",
                    dwell_ms / 2 + 1
                )));
            }
            self.page_events(&site_info, page, converts, &mut cart, &mut lines);
            let dr = if index == 0 {
                referrer.clone()
            } else {
                previous_url.clone()
            };
            let seg = engaged && index > 0;
            out.push(self.request(
                &site_info,
                &visitor,
                sid,
                index as u32 + 1,
                seg,
                (&url, dr.as_deref(), title),
                time,
                &lines,
            ));
            time = time + Duration::from_millis(dwell_ms);
            let last = index + 1 == pages_total;
            if last && engaged {
                // gtag reports the time on the last page when it is left.
                let lines = vec![Line(format!(
                    "en=user_engagement&_et={}",
                    dwell_ms.max(10_001)
                ))];
                out.push(self.request(
                    &site_info,
                    &visitor,
                    sid,
                    index as u32 + 2,
                    true,
                    (&url, dr.as_deref(), title),
                    time,
                    &lines,
                ));
            }
            previous_url = Some(url);
        }
        let state = &mut self.sites[site];
        if returning {
            if let Some(v) = state.visitors.iter_mut().find(|v| v.cid == visitor.cid) {
                *v = visitor;
            }
        } else if state.visitors.len() < RETURNING_POOL {
            state.visitors.push(visitor);
        } else {
            let i = self.rng.gen_range(0..RETURNING_POOL);
            self.sites[site].visitors[i] = visitor;
        }
    }

    /// UTM query of the landing page and the referrer, for a traffic source.
    fn acquisition(&mut self, source: Source) -> (String, Option<String>) {
        let mut q = form_urlencoded::Serializer::new(String::new());
        let referrer = match source {
            Source::Direct => None,
            Source::OrganicSearch => Some(pick(&mut self.rng, SEARCH_ENGINES).to_string()),
            Source::Social => Some(pick(&mut self.rng, SOCIAL).to_string()),
            Source::Referral => Some(pick(&mut self.rng, REFERRALS).to_string()),
            Source::Email => {
                q.append_pair("utm_source", "newsletter")
                    .append_pair("utm_medium", "email")
                    .append_pair("utm_campaign", "newsletter_weekly")
                    .append_pair(
                        "utm_content",
                        ["hero_button", "footer_link", "product_grid"][self.rng.gen_range(0..3)],
                    );
                None
            }
            Source::PaidSearch => {
                let campaign = *pick(&mut self.rng, CAMPAIGNS);
                let term = KEYWORDS[self.rng.gen_range(0..KEYWORDS.len())];
                let gclid = self.click_id(86);
                q.append_pair("utm_source", "google")
                    .append_pair("utm_medium", "cpc")
                    .append_pair("utm_campaign", campaign)
                    .append_pair("utm_term", term)
                    .append_pair("gclid", &gclid);
                Some("https://www.google.com/".to_owned())
            }
            Source::PaidSocial => {
                let campaign = *pick(&mut self.rng, CAMPAIGNS);
                let (network, referrer) = if self.rng.gen_bool(0.6) {
                    ("facebook", "https://l.facebook.com/")
                } else {
                    ("instagram", "https://l.instagram.com/")
                };
                let fbclid = self.click_id(62);
                q.append_pair("utm_source", network)
                    .append_pair("utm_medium", "paid_social")
                    .append_pair("utm_campaign", campaign)
                    .append_pair(
                        "utm_content",
                        ["carousel_a", "video_15s", "static_b"][self.rng.gen_range(0..3)],
                    )
                    .append_pair("fbclid", &fbclid);
                Some(referrer.to_owned())
            }
        };
        (q.finish(), referrer)
    }

    /// A click id of `len` URL-safe characters, as Google and Meta send them.
    fn click_id(&mut self, len: usize) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
        (0..len)
            .map(|_| ALPHABET[self.rng.gen_range(0..ALPHABET.len())] as char)
            .collect()
    }

    /// E-commerce and conversion events a page carries.
    fn page_events(
        &mut self,
        site: &DemoSite,
        page: &str,
        converting: bool,
        cart: &mut Vec<(&'static str, &'static str, f64, u32)>,
        lines: &mut Vec<Line>,
    ) {
        let item = |(id, name, price, qty): (&str, &str, f64, u32)| {
            format!("id{id}~nm{name}~pr{price:.2}~qt{qty}~caApparel")
        };
        match (site.kind, page) {
            (SiteKind::Shop, p) if p.starts_with("/products/") => {
                let (id, name, price, _) = PRODUCTS
                    .iter()
                    .copied()
                    .find(|product| product.3 == p)
                    .unwrap_or(PRODUCTS[0]);
                let pr = form_urlencoded::byte_serialize(item((id, name, price, 1)).as_bytes())
                    .collect::<String>();
                lines.push(Line(format!(
                    "en=view_item&cu=EUR&epn.value={price:.2}&pr1={pr}"
                )));
                // A converting session's last product page always goes into the cart.
                if self.rng.gen_bool(0.18) || converting {
                    let qty = if self.rng.gen_bool(0.2) { 2 } else { 1 };
                    cart.push((id, name, price, qty));
                    lines.push(Line(format!(
                        "en=add_to_cart&cu=EUR&epn.value={:.2}&pr1={pr}",
                        price * f64::from(qty)
                    )));
                }
            }
            (SiteKind::Shop, "/checkout") => {
                let value: f64 = cart.iter().map(|c| c.2 * f64::from(c.3)).sum();
                lines.push(Line(format!(
                    "en=begin_checkout&cu=EUR&epn.value={value:.2}"
                )));
            }
            (SiteKind::Shop, "/checkout/thank-you") => {
                if cart.is_empty() {
                    cart.push(("SKU-MCS-01", "Merino crew sweater", 89.0, 1));
                }
                let subtotal: f64 = cart.iter().map(|c| c.2 * f64::from(c.3)).sum();
                let shipping = if subtotal >= 100.0 { 0.0 } else { 4.9 };
                let value = ((subtotal + shipping) * 100.0).round() / 100.0;
                let mut line = format!(
                    "en=purchase&_c=1&cu=EUR&ep.transaction_id=T{}&epn.value={value:.2}&epn.shipping={shipping:.2}&epn.tax={:.2}",
                    self.rng.gen_range(100_000..999_999u32),
                    value / 1.2 * 0.2
                );
                for (n, c) in cart.iter().enumerate() {
                    let pr =
                        form_urlencoded::byte_serialize(item(*c).as_bytes()).collect::<String>();
                    let _ = write!(line, "&pr{}={pr}", n + 1);
                }
                lines.push(Line(line));
                self.count_conversion(site, value);
            }
            (SiteKind::Saas, "/demo/thanks") => {
                lines.push(Line(
                    "en=generate_lead&_c=1&cu=EUR&epn.value=150.00&ep.lead_source=demo_request"
                        .to_owned(),
                ));
                self.count_conversion(site, 150.0);
            }
            (SiteKind::Saas, "/signup/welcome") => {
                let plan = ["starter", "growth", "scale"][self.rng.gen_range(0..3)];
                lines.push(Line(format!(
                    "en=sign_up&_c=1&ep.method=email&ep.plan={plan}"
                )));
                self.count_conversion(site, 0.0);
            }
            (SiteKind::Publisher, "/newsletter/thanks") => {
                lines.push(Line("en=sign_up&_c=1&ep.method=newsletter".to_owned()));
                self.count_conversion(site, 0.0);
            }
            _ => {}
        }
    }

    fn count_conversion(&mut self, site: &DemoSite, value: f64) {
        if let Some(state) = self
            .sites
            .iter_mut()
            .find(|s| s.site.site_id == site.site_id)
        {
            state.totals.conversions += 1;
            state.totals.revenue += value;
        }
    }

    /// One gtag `POST /g/collect` as the gateway would have captured it at `time`, parsed into
    /// hits and wrapped as a log record; the site's totals count what it carries.
    #[allow(clippy::too_many_arguments)]
    fn request(
        &mut self,
        site: &DemoSite,
        visitor: &Visitor,
        sid: i64,
        hit_counter: u32,
        engaged: bool,
        (url, referrer, title): (&str, Option<&str>, &str),
        time: Timestamp,
        lines: &[Line],
    ) -> LogRecord {
        let (agent, screen, _) = AGENTS[visitor.agent];
        let (country, _, language, mapped) = COUNTRIES[visitor.country];
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("v", "2")
            .append_pair("tid", &site.measurement_id)
            .append_pair("gtm", "45je4bk0v9871025398za200")
            .append_pair(
                "_p",
                &self
                    .rng
                    .gen_range(1_000_000_000..2_000_000_000u64)
                    .to_string(),
            )
            .append_pair("gcs", "G111")
            .append_pair("gcd", "13l3l3l3l1l1")
            .append_pair("npa", "0")
            .append_pair("dma", "0")
            .append_pair("cid", &visitor.cid)
            .append_pair("ul", language)
            .append_pair("sr", screen)
            .append_pair("_s", &hit_counter.to_string())
            .append_pair("sid", &sid.to_string())
            .append_pair("sct", &visitor.sessions.to_string())
            .append_pair("seg", if engaged { "1" } else { "0" })
            .append_pair("dl", url);
        if let Some(referrer) = referrer {
            q.append_pair("dr", referrer);
        }
        q.append_pair("dt", &format!("{title} – {}", site.name));
        let body = lines
            .iter()
            .map(|l| l.0.as_str())
            .collect::<Vec<_>>()
            .join("\r\n");
        let request = RawRequest::new("POST", "/g/collect", q.finish(), time)
            .with_header("user-agent", agent)
            .with_header("content-type", "text/plain;charset=UTF-8")
            .with_header("accept-language", &format!("{language},en;q=0.8"))
            .with_header("origin", &format!("https://{}", site.domain))
            .with_header("referer", url)
            .with_body(body)
            .with_client_ip(visitor.ip);
        // The generator builds only valid gtag requests; a parse failure is a bug here.
        let mut hits = match tracking::ga4::parse(&request) {
            Ok(hits) => hits,
            Err(err) => panic!("demo generated an invalid gtag request: {err}"),
        };
        // Hit ids as the log's reader derives them from the record's, so the stored (compact)
        // record reads back as exactly these hits.
        let record_id = RecordId(self.uuid_at(time));
        for (index, hit) in hits.iter_mut().enumerate() {
            hit.fields_mut().id = hit_id(record_id, index);
        }
        let state = self
            .sites
            .iter_mut()
            .find(|s| s.site.site_id == site.site_id)
            .map(|s| &mut s.totals);
        if let Some(totals) = state {
            totals.records += 1;
            for hit in &hits {
                totals.events += 1;
                if hit.event_name == "page_view" {
                    totals.pageviews += 1;
                }
                *totals
                    .event_names
                    .entry(hit.event_name.clone())
                    .or_default() += 1;
                if mapped.is_some() {
                    *totals
                        .mapped_countries
                        .entry(country.to_owned())
                        .or_default() += 1;
                }
            }
        }
        LogRecord {
            id: record_id,
            site_id: site.site_id,
            workspace_id: site.workspace_id,
            bot: false,
            ip_truncated: false,
            request,
            hits,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generate(seed: u64, end: Timestamp) -> (Vec<String>, Vec<(DemoSite, SiteTotals)>) {
        let ws = WorkspaceId(uuid::Uuid::from_u128(1));
        let sites = (0..3)
            .map(|i| DemoSite::nth(i, SiteId(uuid::Uuid::from_u128(10 + u128::from(i))), ws))
            .collect();
        let mut generator = TrafficGenerator::new(sites, 3, 40, seed, end);
        let mut out = Vec::new();
        while let Some(day) = generator.next_day() {
            out.extend(day.iter().map(|r| serde_json::to_string(r).expect("json")));
        }
        (out, generator.into_totals())
    }

    #[test]
    fn the_same_seed_gives_the_same_records() {
        let end = Timestamp::now();
        let (a, totals) = generate(7, end);
        let (b, _) = generate(7, end);
        let (c, _) = generate(8, end);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let records: u64 = totals.iter().map(|t| t.1.records).sum();
        assert_eq!(records as usize, a.len());
        for (site, t) in &totals {
            assert!(
                t.visitors > 0 && t.sessions >= t.visitors,
                "{site:?}: {t:?}"
            );
            assert!(t.pageviews >= t.sessions && t.events > t.pageviews, "{t:?}");
        }
    }

    #[test]
    fn the_stored_form_reads_back_as_the_generated_hits() {
        let ws = WorkspaceId(uuid::Uuid::from_u128(1));
        let sites = (0..3)
            .map(|i| DemoSite::nth(i, SiteId(uuid::Uuid::from_u128(10 + u128::from(i))), ws))
            .collect();
        let mut generator = TrafficGenerator::new(sites, 2, 40, 3, Timestamp::now());
        let mut hits = 0;
        while let Some(day) = generator.next_day() {
            for record in &day {
                let stored = stored_form(record).expect("stored form");
                let read = LogRecord::decode(&stored).expect("record");
                assert_eq!(read.id, record.id);
                assert_eq!(read.request, record.request);
                assert_eq!(read.hits, record.hits);
                hits += read.hits.len();
            }
        }
        assert!(hits > 200, "{hits}");
    }

    #[test]
    fn records_are_ordered_and_inside_the_range() {
        let end = Timestamp::now();
        let (records, _) = generate(1, end);
        let start = end - Duration::from_secs(3 * 86_400);
        let mut last = start;
        for text in &records {
            let record = LogRecord::decode(text.as_bytes()).expect("record");
            let at = record.request.received_at;
            assert!(at >= start && at < end, "{at:?}");
            for hit in &record.hits {
                assert_eq!(hit.event_time, at);
                assert!(hit.session.id.is_some() && hit.client_id.is_some());
            }
            if at < last {
                // Days are ordered; within a day records are sorted too.
                panic!("records out of order");
            }
            last = at;
        }
    }
}
