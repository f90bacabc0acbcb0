//! A workspace's view of its jobs: scoped reads, retry and cancel transitions, and the HTTP
//! routes (roles, 404 across workspaces, response shape, OpenAPI).

use axum::body::Body;
use axum::http::{Request, StatusCode};
use platform::config::Config;
use platform::db::Db;
use platform::http::PageParams;
use platform::id::{JobId, SessionId, UserId, WorkspaceId};
use platform::jobs::{self, JobFilter, JobStatus, NewJob, enqueue_on, store};
use platform::secret_box::SecretBox;
use platform::time::Timestamp;
use platform::{Actor, AppState, Role, Scope, with_db};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::harness::{TestDb, backend_tests, workspace};

backend_tests!(
    retry_and_cancel_transitions,
    routes_check_roles_and_render_jobs
);

fn scope(workspace_id: WorkspaceId, role: Role) -> Scope {
    Scope {
        workspace_id,
        actor: Actor::System,
        role,
    }
}

async fn retry_and_cancel_transitions(t: &TestDb) {
    let db = &t.db;
    let ws = WorkspaceId::new();
    let member = scope(ws, Role::Member);
    let viewer = scope(ws, Role::Viewer);
    let stranger = scope(WorkspaceId::new(), Role::Owner);
    let id = enqueue_on(db, NewJob::new("email.send", json!({})).workspace(ws))
        .await
        .unwrap();

    assert_eq!(
        jobs::get_job(db, &viewer, id).await.unwrap().status,
        JobStatus::Queued
    );
    assert_eq!(
        jobs::cancel_job(db, &viewer, id).await.unwrap_err().status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        jobs::get_job(db, &stranger, id).await.unwrap_err().code,
        "job_not_found"
    );
    assert_eq!(
        jobs::cancel_job(db, &stranger, id).await.unwrap_err().code,
        "job_not_found"
    );

    let cancelled = jobs::cancel_job(db, &member, id).await.unwrap();
    assert_eq!(cancelled.status, JobStatus::Cancelled);
    assert!(cancelled.finished_at.is_some());
    let again = jobs::cancel_job(db, &member, id).await.unwrap_err();
    assert_eq!(
        (again.status, again.code.as_ref()),
        (StatusCode::CONFLICT, "job_not_cancellable")
    );
    assert_eq!(again.details, Some(json!({ "status": "cancelled" })));

    let retried = jobs::retry_job(db, &member, id).await.unwrap();
    assert_eq!(
        (retried.status, retried.attempts, retried.finished_at),
        (JobStatus::Queued, 0, None)
    );
    let conflict = jobs::retry_job(db, &member, id).await.unwrap_err();
    assert_eq!(
        conflict.code, "job_not_retryable",
        "a queued job is not retried"
    );

    // Running: neither cancellable nor retryable. Dead: retryable, attempts reset.
    let leased = store::lease(
        db,
        &["default".into()],
        1,
        std::time::Duration::from_secs(30),
        10,
        Timestamp::now(),
    )
    .await
    .unwrap()
    .remove(0);
    assert_eq!(
        jobs::cancel_job(db, &member, id).await.unwrap_err().code,
        "job_not_cancellable"
    );
    assert_eq!(
        jobs::retry_job(db, &member, id).await.unwrap_err().code,
        "job_not_retryable"
    );
    assert!(
        store::fail(db, &leased, "smtp said no", None)
            .await
            .unwrap()
    );
    let dead = jobs::get_job(db, &viewer, id).await.unwrap();
    assert_eq!((dead.status, dead.attempts), (JobStatus::Dead, 1));
    let revived = jobs::retry_job(db, &member, id).await.unwrap();
    assert_eq!((revived.status, revived.attempts), (JobStatus::Queued, 0));
    assert_eq!(
        revived.last_error.as_deref(),
        Some("smtp said no"),
        "history kept until the next try"
    );

    // Lists: filtered, newest first, paginated, never another workspace's jobs.
    let mut ids: Vec<JobId> = Vec::new();
    for _ in 0..5 {
        ids.push(
            enqueue_on(db, NewJob::new("sync", json!({})).workspace(ws))
                .await
                .unwrap(),
        );
    }
    enqueue_on(
        db,
        NewJob::new("sync", json!({})).workspace(WorkspaceId::new()),
    )
    .await
    .unwrap();
    let filter = JobFilter {
        status: Some(JobStatus::Queued),
        kind: Some("sync".into()),
    };
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = PageParams {
            limit: Some(2),
            cursor,
        };
        let page = jobs::list_jobs(db, &viewer, &filter, &page).await.unwrap();
        assert!(page.data.len() <= 2);
        seen.extend(page.data.iter().map(|j| j.id));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    ids.reverse();
    assert_eq!(seen, ids);
    let all = jobs::list_jobs(db, &viewer, &JobFilter::default(), &PageParams::default())
        .await
        .unwrap();
    assert_eq!(all.data.len(), 6);
}

/// A user with a session and a membership; returns the bearer token.
async fn member_token(db: &Db, ws: WorkspaceId, role: &str) -> String {
    let (user, session) = (UserId::new(), SessionId::new());
    let token = platform::auth::new_token(platform::auth::SESSION_TOKEN_PREFIX);
    let now = Timestamp::now();
    let later = now + std::time::Duration::from_secs(3600);
    with_db!(db, pool => async {
        sqlx::query("INSERT INTO users (id, email, password_hash, created_at, updated_at) VALUES ($1, $2, 'x', $3, $3)")
            .bind(user).bind(format!("{user}@example.com")).bind(now).execute(pool).await?;
        sqlx::query("INSERT INTO sessions (id, user_id, token_hash, csrf_token, created_at, expires_at) VALUES ($1, $2, $3, 'csrf', $4, $5)")
            .bind(session).bind(user).bind(platform::auth::token_hash(&token)).bind(now).bind(later).execute(pool).await?;
        sqlx::query("INSERT INTO memberships (workspace_id, user_id, role, created_at) VALUES ($1, $2, $3, $4)")
            .bind(ws).bind(user).bind(role).bind(now).execute(pool).await?;
        Ok::<(), sqlx::Error>(())
    }.await)
    .unwrap();
    token
}

async fn call(app: &axum::Router, method: &str, uri: &str, token: &str) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn routes_check_roles_and_render_jobs(t: &TestDb) {
    let ws = workspace(&t.db).await;
    let other_ws = workspace(&t.db).await;
    let viewer = member_token(&t.db, ws, "viewer").await;
    let member = member_token(&t.db, ws, "member").await;
    let id = enqueue_on(
        &t.db,
        NewJob::new("email.send", json!({ "to": 1 })).workspace(ws),
    )
    .await
    .unwrap();
    let foreign = enqueue_on(
        &t.db,
        NewJob::new("email.send", json!({})).workspace(other_ws),
    )
    .await
    .unwrap();

    let (router, openapi) = jobs::routes().split_for_parts();
    let state = AppState::new(
        t.db.clone(),
        Config::default(),
        SecretBox::from_bytes(&[7; 32]),
    );
    let app = router.with_state(state);

    let (status, body) = call(
        &app,
        "GET",
        &format!("/workspaces/{ws}/jobs?status=queued"),
        &viewer,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let job = &body["data"][0];
    assert_eq!(job["id"], json!(id.to_string()));
    assert_eq!(job["workspace_id"], json!(ws.to_string()));
    assert_eq!(
        (job["status"].as_str(), job["payload"].clone()),
        (Some("queued"), json!({ "to": 1 }))
    );
    let created = job["created_at"].as_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(created).is_ok() && created.ends_with('Z'),
        "{created}"
    );
    assert!(job.get("lock_id").is_none());
    assert_eq!(
        body["data"].as_array().unwrap().len(),
        1,
        "the other workspace's job is not listed"
    );

    let one = format!("/workspaces/{ws}/jobs/{id}");
    assert_eq!(call(&app, "GET", &one, &viewer).await.0, StatusCode::OK);
    let (status, body) = call(&app, "POST", &format!("{one}/cancel"), &viewer).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
    let (status, body) = call(&app, "POST", &format!("{one}/cancel"), &member).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("cancelled"))
    );
    let (status, body) = call(&app, "POST", &format!("{one}/cancel"), &member).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("job_not_cancellable"))
    );
    let (status, body) = call(&app, "POST", &format!("{one}/retry"), &member).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("queued"))
    );

    let (status, body) = call(
        &app,
        "GET",
        &format!("/workspaces/{ws}/jobs/{foreign}"),
        &member,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("job_not_found"))
    );
    let (status, body) = call(
        &app,
        "GET",
        &format!("/workspaces/{other_ws}/jobs"),
        &member,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("workspace_not_found"))
    );
    let (status, _) = call(
        &app,
        "GET",
        &format!("/workspaces/{ws}/jobs/job_nope"),
        &member,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = call(
        &app,
        "GET",
        &format!("/workspaces/{ws}/jobs?status=bogus"),
        &member,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_query"))
    );

    let paths = serde_json::to_value(&openapi).unwrap()["paths"].clone();
    for (path, method) in [
        ("/workspaces/{workspace_id}/jobs", "get"),
        ("/workspaces/{workspace_id}/jobs/{job_id}", "get"),
        ("/workspaces/{workspace_id}/jobs/{job_id}/retry", "post"),
        ("/workspaces/{workspace_id}/jobs/{job_id}/cancel", "post"),
    ] {
        assert_eq!(
            paths[path][method]["tags"],
            json!(["jobs"]),
            "{path} {method}"
        );
    }
}
