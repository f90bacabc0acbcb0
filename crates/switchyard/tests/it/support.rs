//! Test harness: starts the real server on port 0 over a fresh database of the chosen backend and
//! talks to it over HTTP.
//!
//! SQLite runs always. PostgreSQL runs when `SWITCHYARD_TEST_POSTGRES_URL` points at a server
//! where we may create databases (one new database per test); when it is unset the PostgreSQL
//! variant is skipped, unless `SWITCHYARD_REQUIRE_POSTGRES=1`, which makes it fail (CI).

use std::net::SocketAddr;

use platform::AppState;
use platform::config::Config;
use reqwest::Method;
use secrecy::SecretString;
use serde_json::{Value, json};
use sqlx::Connection;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Declares one async test that runs once per backend: `backend_test!(name, |app| async move {…})`.
#[macro_export]
macro_rules! backend_test {
    ($name:ident, |$app:ident| $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn body($app: $crate::support::TestApp) {
                $body.await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let app = $crate::support::TestApp::spawn($crate::support::Backend::Sqlite).await;
                body(app).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(app) =
                    $crate::support::TestApp::spawn_if_available($crate::support::Backend::Postgres)
                        .await
                {
                    body(app).await;
                }
            }
        }
    };
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub state: AppState,
    pub log: std::sync::Arc<dyn tracking::log::EventLog>,
    pub usage: std::sync::Arc<tracking::gateway::usage::Usage>,
    pub analytics: std::sync::Arc<dyn tracking::analytics::AnalyticsStore>,
    pub client: reqwest::Client,
    shutdown: CancellationToken,
    config: Config,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Creates a fresh PostgreSQL database and returns its URL.
pub async fn fresh_postgres_database() -> Option<String> {
    let base = match std::env::var("SWITCHYARD_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            if std::env::var("SWITCHYARD_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                panic!("SWITCHYARD_REQUIRE_POSTGRES=1 but SWITCHYARD_TEST_POSTGRES_URL is unset");
            }
            eprintln!("skipped: SWITCHYARD_TEST_POSTGRES_URL is unset");
            return None;
        }
    };
    let name = format!("sy_t_{}", uuid::Uuid::now_v7().simple());
    let mut conn = sqlx::PgConnection::connect(&base)
        .await
        .expect("connect to SWITCHYARD_TEST_POSTGRES_URL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create test database");
    conn.close().await.ok();
    let (prefix, _) = base
        .rsplit_once('/')
        .expect("SWITCHYARD_TEST_POSTGRES_URL must name a database");
    Some(format!("{prefix}/{name}"))
}

pub fn test_config(dir: &std::path::Path) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: dir.to_path_buf(),
        secret_key: Some(SecretString::from(
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
        )),
        ..Config::default()
    }
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> TestApp {
        Self::spawn_with(backend, |_| {})
            .await
            .expect("backend available")
    }

    pub async fn spawn_if_available(backend: Backend) -> Option<TestApp> {
        Self::spawn_with(backend, |_| {}).await
    }

    /// Starts the server with a configuration adjusted by `tweak`.
    pub async fn spawn_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Option<TestApp> {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = test_config(dir.path());
        if backend == Backend::Postgres {
            config.database_url = Some(SecretString::from(fresh_postgres_database().await?));
        }
        tweak(&mut config);
        Some(Self::start(config, dir).await)
    }

    /// Cancels the server and waits for it to drain; its outcome, if it was still running.
    async fn drain(&mut self) -> Option<Result<anyhow::Result<()>, tokio::task::JoinError>> {
        self.shutdown.cancel();
        Some(self.server.take()?.await)
    }

    /// Stops the server and waits for it to drain.
    pub async fn stop(mut self) {
        if let Some(outcome) = self.drain().await {
            outcome
                .expect("the server task")
                .expect("the server stops cleanly");
        }
    }

    /// Stops the server (waiting for it to drain) and starts a new one on the same storage and
    /// configuration, like a process restart.
    pub async fn restart(mut self) -> TestApp {
        let _ = self.drain().await;
        let dir = std::mem::replace(&mut self._dir, tempfile::tempdir().expect("tempdir"));
        Self::start(self.config.clone(), dir).await
    }

    async fn start(config: Config, dir: tempfile::TempDir) -> TestApp {
        let app = switchyard::build(config.clone()).await.expect("build");
        let state = app.state.clone();
        let log = app.log.clone();
        let usage = app.usage.clone();
        let analytics = app.analytics.clone();
        let listener = switchyard::listen(([127, 0, 0, 1], 0).into()).expect("listen");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(switchyard::run(
            app,
            listener,
            switchyard::all_roles(),
            shutdown.clone(),
        ));
        TestApp {
            addr,
            state,
            log,
            usage,
            analytics,
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            shutdown,
            config,
            server: Some(server),
            _dir: dir,
        }
    }

    /// The data directory (SQLite files, the secret key file).
    pub fn data_dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Sends a request and returns the status and the JSON body (`null` when empty).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.client.request(method, self.url(path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|_| panic!("non-JSON body for {path} ({status}): {text}"))
        };
        (status, json)
    }

    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    /// Signs up `email` and returns the session token and user id.
    pub async fn signup(&self, email: &str) -> User {
        let (status, body) = self
            .call(
                Method::POST,
                "/api/v1/auth/signup",
                None,
                Some(json!({ "email": email, "password": "correct horse battery" })),
            )
            .await;
        assert_eq!(status, 201, "signup failed: {body}");
        User {
            token: body["token"].as_str().expect("token").to_owned(),
            id: body["user"]["id"].as_str().expect("id").to_owned(),
            csrf: body["csrf_token"].as_str().expect("csrf").to_owned(),
        }
    }

    /// Creates a workspace as `user` and returns its id.
    pub async fn workspace(&self, user: &User, name: &str) -> String {
        let (status, body) = self
            .post("/api/v1/workspaces", &user.token, json!({ "name": name }))
            .await;
        assert_eq!(status, 201, "create workspace failed: {body}");
        body["id"].as_str().expect("id").to_owned()
    }

    /// Creates an API key in `ws` with `role` and returns the secret.
    pub async fn api_key(&self, user: &User, ws: &str, role: &str) -> (String, String) {
        let (status, body) = self
            .post(
                &format!("/api/v1/workspaces/{ws}/api-keys"),
                &user.token,
                json!({ "name": "test", "role": role }),
            )
            .await;
        assert_eq!(status, 201, "create key failed: {body}");
        (
            body["key"].as_str().expect("key").to_owned(),
            body["api_key"]["id"].as_str().expect("id").to_owned(),
        )
    }
}

#[derive(Debug, Clone)]
pub struct User {
    pub token: String,
    pub id: String,
    pub csrf: String,
}

/// A NATS event log URL on a stream of its own, when `SWITCHYARD_TEST_NATS_URL` is set (and a
/// failure when `SWITCHYARD_REQUIRE_NATS=1` says it must be).
pub fn nats_log_url() -> Option<String> {
    match std::env::var("SWITCHYARD_TEST_NATS_URL") {
        Ok(url) if !url.is_empty() => {
            Some(format!("{url}?stream=T{}", uuid::Uuid::now_v7().simple()))
        }
        _ => {
            assert!(
                std::env::var("SWITCHYARD_REQUIRE_NATS").as_deref() != Ok("1"),
                "SWITCHYARD_REQUIRE_NATS=1 but SWITCHYARD_TEST_NATS_URL is unset"
            );
            eprintln!("skipped: SWITCHYARD_TEST_NATS_URL is unset");
            None
        }
    }
}

/// A ClickHouse analytics URL on a database of its own, when `SWITCHYARD_TEST_CLICKHOUSE_URL` is
/// set (and a failure when `SWITCHYARD_REQUIRE_CLICKHOUSE=1` says it must be).
pub fn clickhouse_analytics_url() -> Option<String> {
    match std::env::var("SWITCHYARD_TEST_CLICKHOUSE_URL") {
        Ok(url) if !url.is_empty() => {
            let mut url = reqwest::Url::parse(&url).expect("SWITCHYARD_TEST_CLICKHOUSE_URL");
            url.query_pairs_mut()
                .append_pair("database", &format!("t_{}", uuid::Uuid::now_v7().simple()));
            Some(url.to_string())
        }
        _ => {
            assert!(
                std::env::var("SWITCHYARD_REQUIRE_CLICKHOUSE").as_deref() != Ok("1"),
                "SWITCHYARD_REQUIRE_CLICKHOUSE=1 but SWITCHYARD_TEST_CLICKHOUSE_URL is unset"
            );
            eprintln!("skipped: SWITCHYARD_TEST_CLICKHOUSE_URL is unset");
            None
        }
    }
}

impl TestApp {
    /// A site serving `host` with measurement id `G-TEST123`; returns (site id, write key, MP secret).
    pub async fn site(&self, user: &User, ws: &str, host: &str) -> (String, String, String) {
        let (status, body) = self
            .post(
                &format!("/api/v1/workspaces/{ws}/sites"),
                &user.token,
                json!({
                    "name": "Shop",
                    "hostnames": [host],
                    "measurement_ids": ["G-TEST123"],
                    "web_container_id": "GTM-ABC123",
                    "allowed_origins": ["https://shop.example.com"],
                }),
            )
            .await;
        assert_eq!(status, 201, "create site failed: {body}");
        (
            body["site"]["id"].as_str().unwrap().to_owned(),
            body["site"]["write_key"].as_str().unwrap().to_owned(),
            body["mp_api_secret"].as_str().unwrap().to_owned(),
        )
    }

    /// Every record in the event log, in order (reads as a fresh consumer group).
    pub async fn log_records(&self) -> Vec<tracking::gateway::LogRecord> {
        let group = format!("test-{}", uuid::Uuid::now_v7().simple());
        let mut sub = self.log.subscribe(&group).await.unwrap();
        let mut out = Vec::new();
        loop {
            let batch = sub
                .next_batch(500, std::time::Duration::from_millis(200))
                .await
                .unwrap();
            if batch.is_empty() {
                return out;
            }
            for delivery in &batch {
                out.push(
                    tracking::gateway::LogRecord::decode(&delivery.payload).expect("a LogRecord"),
                );
            }
            sub.ack(&batch).await.unwrap();
        }
    }
}

/// The log output of every server in this test process, captured the way `switchyard serve`
/// writes it (tracing's text formatter, spans and fields), at `debug` for every target.
///
/// A process-wide subscriber: the server's tasks run on the runtime's worker threads, where a
/// thread-local default would see nothing. nextest runs each test in a process of its own, so
/// the text is this test's; under `cargo test` it may hold other tests' lines as well.
pub struct CapturedLogs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

struct LogSink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the capturing subscriber (once per process) and returns its buffer.
pub fn capture_logs() -> CapturedLogs {
    static BUFFER: std::sync::OnceLock<std::sync::Arc<std::sync::Mutex<Vec<u8>>>> =
        std::sync::OnceLock::new();
    let buffer = BUFFER
        .get_or_init(|| {
            let buffer = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let sink = buffer.clone();
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
                .with_writer(move || LogSink(sink.clone()))
                .with_ansi(false)
                .try_init()
                .expect("no other global subscriber in the test process");
            buffer
        })
        .clone();
    CapturedLogs(buffer)
}

impl CapturedLogs {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

/// Sends `head` (a request line and headers, without `Content-Length` and the blank line) with
/// a 12 MiB body, more than the sockets' buffers hold, to a server that refuses it for its
/// declared size; returns the answer. The refusal comes before the body is read, and the server
/// must then read and discard it: a server that closes with the client's bytes unread makes
/// the kernel reset the connection, and the client gets "broken pipe" instead of its 413.
pub async fn send_whole_oversized_body(addr: SocketAddr, head: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = vec![b'a'; 12 * 1024 * 1024];
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!("{head}content-length: {}\r\n\r\n", body.len());
    conn.write_all(head.as_bytes()).await.unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), conn.write_all(&body))
        .await
        .expect("the whole body is taken within 10 s")
        .expect("the server reads the refused body instead of resetting the connection");
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), conn.read(&mut answer))
        .await
        .expect("an answer")
        .unwrap();
    String::from_utf8_lossy(&answer[..n]).into_owned()
}
