//! The `switchyard` binary itself: bootstrap, migrate, configuration errors, serve and a
//! graceful stop on SIGTERM.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::{Backend, fresh_postgres_database};

fn switchyard() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    // The developer's own environment must not leak into these runs.
    for (key, _) in std::env::vars() {
        if key.starts_with("SWITCHYARD_") && !key.starts_with("SWITCHYARD_TEST") {
            cmd.env_remove(key);
        }
    }
    cmd.env("SWITCHYARD_LOG", "info");
    cmd
}

async fn storage_args(backend: Backend, dir: &std::path::Path) -> Option<Vec<String>> {
    let mut args = vec!["--data-dir".to_owned(), dir.display().to_string()];
    if backend == Backend::Postgres {
        args.push("--database-url".into());
        args.push(fresh_postgres_database().await?);
    }
    Some(args)
}

fn bootstrap(storage: &[String], extra: &[&str]) -> Value {
    let out = switchyard()
        .args(["admin", "bootstrap"])
        .args(storage)
        .args([
            "--email",
            "Admin@Example.com",
            "--password",
            "a long password",
            "--workspace",
            "Main",
        ])
        .args(extra)
        .output()
        .expect("run switchyard");
    assert!(
        out.status.success(),
        "bootstrap failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object on stdout")
}

async fn bootstrap_is_idempotent(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(storage) = storage_args(backend, dir.path()).await else {
        return;
    };

    let first = bootstrap(&storage, &[]);
    assert!(first["user_id"].as_str().unwrap().starts_with("usr_"));
    assert!(first["workspace_id"].as_str().unwrap().starts_with("ws_"));
    assert!(first["api_key"].as_str().unwrap().starts_with("syk_"));
    assert_eq!(first["created_user"], true);

    let second = bootstrap(&storage, &[]);
    assert_eq!(second["user_id"], first["user_id"]);
    assert_eq!(second["workspace_id"], first["workspace_id"]);
    assert_eq!(second["api_key"], Value::Null, "no new key unless asked");
    assert_eq!(second["created_user"], false);
    assert_eq!(second["created_workspace"], false);

    let third = bootstrap(&storage, &["--new-key"]);
    assert_eq!(third["workspace_id"], first["workspace_id"]);
    let new_key = third["api_key"].as_str().unwrap();
    assert_ne!(Some(new_key), first["api_key"].as_str());

    // Both keys work against a server on the same storage.
    let mut child = switchyard()
        .arg("serve")
        .args(&storage)
        .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = wait_for_listen(&mut child).await;
    let client = reqwest::Client::new();
    for key in [first["api_key"].as_str().unwrap(), new_key] {
        let resp = client
            .get(format!(
                "http://{addr}/api/v1/workspaces/{}",
                first["workspace_id"].as_str().unwrap()
            ))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    stop(child).await;
}

/// Reads the server's log until it says where it listens.
async fn wait_for_listen(child: &mut std::process::Child) -> String {
    use std::io::BufRead;
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let Ok(event) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if let Some(addr) = event["addr"].as_str() {
                let _ = tx.send(addr.to_owned());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("server did not start")
}

/// SIGTERM, and the process must exit cleanly on its own.
async fn stop(mut child: std::process::Child) {
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    for _ in 0..100 {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit after SIGTERM: {status}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.kill().ok();
    panic!("server did not stop within 10 s of SIGTERM");
}

#[tokio::test]
async fn bootstrap_is_idempotent_sqlite() {
    bootstrap_is_idempotent(Backend::Sqlite).await;
}

#[tokio::test]
async fn bootstrap_is_idempotent_postgres() {
    bootstrap_is_idempotent(Backend::Postgres).await;
}

#[test]
fn bad_configuration_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("switchyard.toml");
    for (toml, env, key) in [
        ("listen = \"nowhere\"\n", None, "listen"),
        ("[jobs]\nconcurrency = 0\n", None, "jobs.concurrency"),
        ("secret_key = \"c2hvcnQ=\"\n", None, "secret_key"),
        (
            "",
            Some(("SWITCHYARD_MAX_BODY_BYTES", "lots")),
            "max_body_bytes",
        ),
        (
            "",
            Some(("SWITCHYARD_DATABASE_URL", "mysql://x")),
            "database_url",
        ),
        (
            "[tracking]\nevent_log_commit_interval_us = 20000\n",
            None,
            "tracking.event_log_commit_interval_us",
        ),
        ("http_threads = 1000\n", None, "http_threads"),
        (
            "",
            Some(("SWITCHYARD_HTTP_THREADS", "many")),
            "http_threads",
        ),
        ("colour = \"blue\"\n", None, "colour"),
    ] {
        std::fs::write(&file, toml).unwrap();
        let mut cmd = switchyard();
        cmd.args(["migrate", "--data-dir"])
            .arg(dir.path())
            .arg("--config")
            .arg(&file);
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{toml:?} was accepted");
        assert!(
            stderr.to_lowercase().contains(key),
            "error for {toml:?} does not name `{key}`: {stderr}"
        );
    }
}

#[test]
fn migrate_and_version() {
    let dir = tempfile::tempdir().unwrap();
    let out = switchyard()
        .args(["migrate", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("state.db").exists());
    let key = dir.path().join("secret.key");
    assert!(!key.exists(), "migrate does not need the secret key");

    let out = switchyard().arg("version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("switchyard "));
}
