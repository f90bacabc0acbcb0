//! The HTTP server: every feature's routes under `/api/v1`, the OpenAPI document, health and
//! metrics endpoints, and the middleware every request passes through.

use std::cell::RefCell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::future::RouteFuture;
use axum::routing::get;
use axum::serve::IncomingStream;
use axum::{Json, Router};
use futures::future::{BoxFuture, Either};
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use platform::http::{method_not_allowed_fallback, not_found_fallback};
use platform::{ApiError, AppState};
use rustc_hash::FxHashMap;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::Service;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use tracking::gateway::{Gateway, collect_ga4, gateway_fallback, preview};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::{App, Roles, ServeRole};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Switchyard API",
        description = "Multi-tenant marketing operations backend. Workspace resources live under \
                       `/api/v1/workspaces/{workspace_id}/…`. Authenticate with \
                       `Authorization: Bearer <session token or API key>`.",
    ),
    components(schemas(platform::error::ErrorBody)),
    tags(
        (name = "auth", description = "Accounts and sessions"),
        (name = "workspaces", description = "Workspaces (tenants)"),
        (name = "members", description = "Members and invitations"),
        (name = "api-keys", description = "Workspace API keys"),
        (name = "jobs", description = "Background jobs: inspect, retry, cancel"),
        (name = "sites", description = "Tracking sites: hostnames, ids, keys, loader, usage"),
        (name = "destinations", description = "Forwarding: tagging server, GA4, signed HTTP"),
        (name = "analytics", description = "Dashboards: summary, timeseries, breakdowns, realtime, raw events"),
        (name = "crm", description = "CRM settings and custom field definitions"),
        (name = "contacts", description = "Contacts: identity resolution, merges, tags, timeline"),
        (name = "companies", description = "Companies"),
        (name = "deals", description = "Pipelines, stages, deals, board"),
        (name = "activities", description = "Notes and tasks"),
        (name = "imports", description = "CSV import and export of contacts"),
        (name = "automations", description = "Automation rules, runs, dry runs and the trigger API"),
        (name = "webhooks", description = "Outbound signed webhooks (Standard Webhooks): endpoints, messages, attempts"),
        (name = "conversions", description = "Offline conversions: platform credentials, triggers, conversion events, attempts, stats"),
    )
)]
struct ApiDoc;

/// Every feature's API routes, relative to `/api/v1`.
fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(platform::accounts::routes())
        .merge(platform::jobs::routes())
        .merge(tracking::sites::routes::routes())
        .merge(tracking::analytics::routes::routes())
        .merge(tracking::forward::routes::routes())
        .merge(crm::routes())
        .merge(connect::webhooks::routes::routes())
        .merge(automation::routes::routes())
        .merge(conversions::routes())
}

/// The OpenAPI document, as served at `/api/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest("/api/v1", api_routes())
        .merge(automation::trigger_api::legacy_routes())
        .into_openapi()
}

/// What `axum::serve` runs: the router of the roles this process serves, and a [`Connection`]
/// for each accepted connection.
#[derive(Clone)]
pub struct Server {
    router: Router,
    /// The gateway, when this process serves it: `/g/collect` goes to it directly.
    gateway: Option<Arc<Gateway>>,
    /// Where routed requests run when connections are served by HTTP threads (see [`serve`]):
    /// the shared runtime. `None`: where their connection runs.
    shared: Option<Handle>,
}

/// The path the gateway serves without the router (see [`Connection`]).
const GA4_COLLECT: &str = "/g/collect";

impl Server {
    /// The routes of the API (with its middleware) and the public tracking gateway (kept
    /// outside the API's middleware: it is the hot path), as `roles` asks.
    pub fn new(app: &App, roles: &Roles) -> anyhow::Result<Server> {
        let mut router = Router::new();
        if roles.contains(&ServeRole::Api) {
            router = router.merge(api_router(app));
        }
        let gateway = if roles.contains(&ServeRole::Gateway) {
            Some(Gateway::new(
                app.directory.clone(),
                app.log.clone(),
                app.state.config.tracking.clone(),
                app.usage.clone(),
            )?)
        } else {
            None
        };
        let router = match &gateway {
            Some(gateway) => {
                let fallback = Router::new()
                    .fallback(gateway_fallback)
                    .with_state(gateway.clone());
                router.merge(gateway.router()).fallback_service(fallback)
            }
            None => router.fallback(not_found_fallback),
        };
        Ok(Server {
            router: router.layer(middleware::from_fn(record_metrics)),
            gateway,
            shared: None,
        })
    }
}

/// Serves `listener` until `shutdown` is cancelled, then lets in-flight requests finish.
///
/// With `threads` 0, connections are tasks of the runtime this is called on (tokio's
/// work-stealing scheduler). Otherwise `threads` OS threads named `http-N` each run a
/// single-threaded runtime, and this task accepts connections and deals them to the threads in
/// turn; a connection stays on its thread. There, `/g/collect` (the tracking hot path, most of a
/// gateway's requests) runs start to end on the thread that reads it; every other request
/// (the API, the other collect endpoints, preview, the loader) is spawned onto the runtime this
/// is called on, so a slow handler never holds up a thread's other connections and handlers
/// keep the shared runtime's facilities.
///
/// Why: it costs less CPU a request. Where that comes from is our reading, not a measurement:
/// in the work-stealing scheduler a worker with more than one task ready wakes an idle one to
/// steal (a futex and an inter-processor interrupt, dear in a VM), and under a steady stream
/// of small requests most of those wake-ups find little to do. At a fixed 73,000
/// requests a second (three alternating pairs, bench/RESULTS.md, 2026-12-06 session 18)
/// the server's CPU fell from 1.12–1.14 to 1.03–1.05 cores and p99 from 18.3–37.2 ms to
/// 3.9–5.0 ms; closed loop (`wrk -c64`) went from 74.1–75.1k to 80.1–81.3k requests a
/// second. (The wait of a request woken by the event log's writer was not shorter on its own:
/// see [`HTTP_GLOBAL_QUEUE_INTERVAL`] for what shortened it.)
pub async fn serve(
    mut listener: TcpListener,
    mut server: Server,
    threads: usize,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if threads == 0 {
        return axum::serve(listener, server)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
            .context("HTTP server failed");
    }
    server.shared = Some(Handle::current());
    let local = listener.local_addr()?;
    let mut queues = Vec::with_capacity(threads);
    let mut finished = JoinSet::new();
    for index in 0..threads {
        let (queue, connections) = mpsc::unbounded_channel();
        let (done, result) = oneshot::channel();
        let (server, shutdown) = (server.clone(), shutdown.clone());
        std::thread::Builder::new()
            .name(format!("http-{index}"))
            .spawn(move || {
                let served = tokio::runtime::Builder::new_current_thread()
                    .global_queue_interval(HTTP_GLOBAL_QUEUE_INTERVAL)
                    .enable_all()
                    .build()
                    .context("cannot start an HTTP thread's runtime")
                    .and_then(|runtime| {
                        runtime.block_on(async move {
                            let listener = Dealt { connections, local };
                            axum::serve(listener, server)
                                .with_graceful_shutdown(shutdown.cancelled_owned())
                                .await
                                .context("HTTP server failed")
                        })
                    });
                let _ = done.send(served);
            })
            .context("cannot start an HTTP thread")?;
        queues.push(queue);
        finished.spawn(async move {
            result
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("HTTP thread {index} panicked")))
        });
    }
    let mut next = 0;
    let dealing = async {
        loop {
            let (stream, peer) = axum::serve::Listener::accept(&mut listener).await;
            // Out of this runtime's reactor, into the chosen thread's (`Dealt::accept`).
            match stream.into_std() {
                Ok(stream) => {
                    let _ = queues[next].send((stream, peer));
                    next = (next + 1) % queues.len();
                }
                Err(err) => tracing::warn!(error = %err, %peer, "cannot hand a connection over"),
            }
        }
    };
    let stopped_early = tokio::select! {
        () = dealing => None,
        () = shutdown.cancelled() => None,
        Some(joined) = finished.join_next() => Some(joined),
    };
    drop(listener);
    // Connections dealt but not yet taken are closed unanswered.
    drop(queues);
    let mut result = Ok(());
    // A thread's outcome: its server's result, or why the task waiting for it failed.
    let outcome = |joined: Result<anyhow::Result<()>, tokio::task::JoinError>| {
        joined
            .map_err(anyhow::Error::from)
            .and_then(|served| served)
    };
    if let Some(joined) = stopped_early {
        let served = outcome(joined);
        if !shutdown.is_cancelled() {
            // A thread stopped serving on its own: stop the process rather than serve on less.
            shutdown.cancel();
            result = Err(served
                .err()
                .unwrap_or_else(|| anyhow::anyhow!("an HTTP thread stopped serving")));
        } else {
            result = served;
        }
    }
    while let Some(joined) = finished.join_next().await {
        if let Err(err) = outcome(joined) {
            result = Err(err);
        }
    }
    result
}

/// How often (in tasks run) an HTTP thread's runtime takes a task from its remote queue
/// before its local one; tokio's default is 31. The remote queue is where the event log's
/// writer wakes the requests its commit made durable: at 2 they are answered before most of
/// the newly arrived requests are started, instead of after up to 30 of them. At a fixed
/// 73,000/s with `wake_delay.patch` (bench/RESULTS.md, 2026-12-06 session 18), seven
/// alternating pairs: the mean wait from the writer's answer to the request running again
/// was lower in 6 (e.g. 361 → 217 µs), the p99 lower in 6, the CPU the same.
const HTTP_GLOBAL_QUEUE_INTERVAL: u32 = 2;

/// The connections [`serve`] deals to one HTTP thread, as the listener that thread serves.
struct Dealt {
    connections: mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr)>,
    local: SocketAddr,
}

impl axum::serve::Listener for Dealt {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match self.connections.recv().await {
                Some((stream, peer)) => match TcpStream::from_std(stream) {
                    Ok(stream) => return (stream, peer),
                    Err(err) => tracing::warn!(error = %err, %peer, "cannot take a connection"),
                },
                // The dealer stopped: shutdown, which ends this thread's server too.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

impl<'a, L> Service<IncomingStream<'a, L>> for Server
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    type Response = Connection;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Connection, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, stream: IncomingStream<'a, L>) -> Self::Future {
        std::future::ready(Ok(Connection {
            router: self.router.clone(),
            gateway: self.gateway.clone(),
            shared: self.shared.clone(),
            peer: *stream.remote_addr(),
        }))
    }
}

/// One connection's requests. `/g/collect`, most of a gateway's traffic, goes straight to the
/// gateway's handler and is counted like a routed request: the router's dispatch, its boxed
/// middleware, and the extensions it adds (peer address, matched path) cost CPU on every
/// request. Everything else goes through the router, with the peer address as `ConnectInfo`
/// (what `into_make_service_with_connect_info` gave it), on the shared runtime when there is
/// one (see [`serve`]).
#[derive(Clone)]
pub struct Connection {
    router: Router,
    gateway: Option<Arc<Gateway>>,
    shared: Option<Handle>,
    peer: SocketAddr,
}

impl Service<Request> for Connection {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<BoxFuture<'static, Result<Response, Infallible>>, RouteFuture<Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        if let Some(gateway) = &self.gateway
            && req.uri().path() == GA4_COLLECT
            // Preview traffic is proxied to the tagging server's preview: a slow upstream, and
            // an HTTP client, both for the shared runtime.
            && (self.shared.is_none() || !req.headers().contains_key(preview::HEADER))
        {
            let (gateway, peer) = (gateway.clone(), self.peer);
            return Either::Left(Box::pin(async move {
                let start = Instant::now();
                let method = method_label(req.method());
                let response = collect_ga4(&gateway, req, peer).await;
                observe(method, GA4_COLLECT, response.status(), start);
                Ok(response)
            }));
        }
        req.extensions_mut().insert(ConnectInfo(self.peer));
        let routed = self.router.call(req);
        match &self.shared {
            None => Either::Right(routed),
            Some(shared) => {
                let task = shared.spawn(routed);
                Either::Left(Box::pin(async move {
                    Ok(match task.await {
                        Ok(Ok(response)) => response,
                        Ok(Err(never)) => match never {},
                        Err(err) => {
                            tracing::error!(error = %err, "request handler panicked");
                            ApiError::internal(err).into_response()
                        }
                    })
                }))
            }
        }
    }
}

/// The API, documentation, health and metrics endpoints with their middleware.
fn api_router(app: &App) -> Router {
    let state = app.state.clone();
    let (api, doc) = OpenApiRouter::<AppState>::with_openapi(ApiDoc::openapi())
        .nest("/api/v1", api_routes())
        .merge(automation::trigger_api::legacy_routes())
        .split_for_parts();
    let doc_json = std::sync::Arc::new(doc);
    // Install the recorder before the first request is counted.
    prometheus();
    let max_body = state.config.max_body_bytes;

    let api = api.layer(middleware::from_fn_with_state(
        state.clone(),
        platform::idempotency::middleware,
    ));
    Router::new()
        .merge(api)
        .route(
            "/api/openapi.json",
            get(move || {
                let doc = doc_json.clone();
                async move { Json(doc.as_ref().clone()) }
            }),
        )
        .route("/api/docs", get(docs_page))
        .route("/healthz", get(|| async { Json(serde_json::json!({ "status": "ok" })) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .method_not_allowed_fallback(method_not_allowed_fallback)
        .layer(axum::Extension(app.directory.clone()))
        .layer(axum::Extension(app.analytics.clone()))
        .layer(axum::Extension(app.automation.clone()))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(max_body, refuse_oversized))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request<Body>| {
                let request_id = req
                    .headers()
                    .get(&REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                tracing::info_span!("request", method = %req.method(), uri = %req.uri().path(), request_id)
            }),
        )
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .with_state(state)
}

/// Refuses a body whose declared length is over the limit before reading any of it (and
/// discards it, so the client can read the refusal: [`platform::http::within_declared_limit`]).
/// Bodies without a length are cut off by `DefaultBodyLimit` as they stream in.
async fn refuse_oversized(State(max): State<usize>, req: Request, next: Next) -> Response {
    // CSV uploads have their own, larger limit (their route's `DefaultBodyLimit`).
    let max = if crm::import::is_upload(req.method(), req.uri().path()) {
        max.max(crm::import::MAX_UPLOAD_BYTES)
    } else {
        max
    };
    let (parts, body) = req.into_parts();
    let Some(body) = platform::http::within_declared_limit(&parts.headers, body, max) else {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("The request body is larger than the limit of {max} bytes."),
        )
        .into_response();
    };
    next.run(Request::from_parts(parts, body)).await
}

async fn readyz(State(state): State<AppState>) -> Response {
    match tokio::time::timeout(Duration::from_secs(3), state.db.ping()).await {
        Ok(Ok(())) => {
            Json(serde_json::json!({ "status": "ready", "database": "ok" })).into_response()
        }
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "readiness check failed");
            not_ready("database unreachable")
        }
        Err(_) => not_ready("database timed out"),
    }
}

fn not_ready(reason: &'static str) -> Response {
    ApiError::service_unavailable(reason)
        .with_code("not_ready")
        .into_response()
}

/// How often histogram samples are drained into their buckets when nobody scrapes: often, so
/// that each drain is short (the gateway records ~40,000 samples a second, and a drain is a
/// burst of CPU on a machine the requests share).
const UPKEEP_EVERY: Duration = Duration::from_secs(1);

/// Upper bounds of the buckets of every `*_seconds` histogram: from 100 µs (the gateway answers
/// in about a millisecond) to a minute (background jobs).
const SECONDS_BUCKETS: [f64; 18] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// Upper bounds of the buckets of `event_log_commit_records` (records in one commit, up to the
/// log's batch limit).
const RECORDS_BUCKETS: [f64; 13] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];

/// The process-wide Prometheus recorder (metrics are global; tests start several servers in one
/// process, so it is installed once).
///
/// Histograms are Prometheus histograms (`_bucket{le=…}`), not summaries (quantiles): buckets
/// add up across instances, so a deployment of several gateways gets its p99 from
/// `histogram_quantile(0.99, sum by (le) (rate(…_bucket[5m])))`, which per-instance quantiles
/// cannot give; and counting a sample into a bucket is a few comparisons, where a summary's
/// sketch cost about 0.1 µs a sample (a 20 ms burst of the upkeep thread every 5 s at 38,000
/// requests a second, bench/RESULTS.md 2026-12-06 session 15).
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets(&SECONDS_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("event_log_commit_records".into()),
                    &RECORDS_BUCKETS,
                )
            })
            .unwrap_or_else(|err| {
                // Only empty bucket lists are refused, and these are constants.
                tracing::warn!(error = %err, "metrics: histograms fall back to summaries");
                PrometheusBuilder::new()
            });
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (an embedding program); ours still renders.
        let _ = metrics::set_global_recorder(recorder);
        // A histogram keeps every sample until a scrape or an upkeep drains it, and a recorder
        // built this way runs no upkeep of its own: unscraped, the request-duration histogram
        // grew by 8 bytes a request (hundreds of MB a day at the gateway's rates).
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                }
            });
        if let Err(err) = spawned {
            tracing::warn!(error = %err, "no metrics upkeep thread: histograms drain only when scraped");
        }
        handle
    })
}

async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        prometheus().render(),
    )
}

async fn record_metrics(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = method_label(req.method());
    let route = req.extensions().get::<MatchedPath>().cloned();
    let response = next.run(req).await;
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    observe(method, route, response.status(), start);
    response
}

/// Counts a request that began at `start` and its duration.
///
/// The request counter and duration histogram of each (method, route, status) are registered
/// once per thread and kept there: looking a labelled metric up builds and hashes its labels,
/// and a process-wide cache behind a mutex had the workers take turns on every request. Routes
/// (the router's templates, not request paths), standard methods and status codes are few, so
/// each thread's map stays small; `FxHash` because its keys are our own route names.
fn observe(method: &'static str, route: &str, status: StatusCode, start: Instant) {
    type Cache = FxHashMap<Box<str>, Vec<(&'static str, u16, (Counter, Histogram))>>;
    thread_local! {
        static CACHE: RefCell<Cache> = RefCell::default();
    }
    let status = status.as_u16();
    let seconds = start.elapsed().as_secs_f64();
    CACHE.with_borrow_mut(|cache| {
        if let Some((.., (requests, duration))) = cache
            .get_mut(route)
            .and_then(|known| known.iter().find(|(m, s, _)| *m == method && *s == status))
        {
            requests.increment(1);
            duration.record(seconds);
            return;
        }
        let labels = [
            ("method", method.to_owned()),
            ("route", route.to_owned()),
            ("status", status.to_string()),
        ];
        let (requests, duration) = (
            metrics::counter!("http_requests_total", &labels),
            metrics::histogram!("http_request_duration_seconds", &labels),
        );
        requests.increment(1);
        duration.record(seconds);
        cache
            .entry(route.into())
            .or_default()
            .push((method, status, (requests, duration)));
    });
}

/// A request's method as a metric label: the standard ones by name, anything else `other`
/// (a client must not be able to create label values at will).
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    const STANDARD: [(Method, &str); 9] = [
        (Method::GET, "GET"),
        (Method::POST, "POST"),
        (Method::PUT, "PUT"),
        (Method::PATCH, "PATCH"),
        (Method::DELETE, "DELETE"),
        (Method::HEAD, "HEAD"),
        (Method::OPTIONS, "OPTIONS"),
        (Method::CONNECT, "CONNECT"),
        (Method::TRACE, "TRACE"),
    ];
    STANDARD
        .iter()
        .find(|(m, _)| m == method)
        .map_or("other", |(_, name)| name)
}

async fn docs_page() -> Html<&'static str> {
    Html(include_str!("docs.html"))
}
