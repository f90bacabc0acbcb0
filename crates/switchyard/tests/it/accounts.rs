//! Signup, login, sessions, CSRF, logout and login rate limiting, over HTTP.

use reqwest::Method;
use serde_json::json;

use crate::backend_test;
use crate::support::TestApp;

backend_test!(signup_login_me_logout, |app| async move {
    let user = app.signup("Ana@Example.com").await;

    let (status, me) = app.get("/api/v1/auth/me", &user.token).await;
    assert_eq!(status, 200);
    assert_eq!(
        me["user"]["email"], "ana@example.com",
        "email is normalized"
    );
    assert_eq!(me["workspaces"], json!([]));

    // Same email again, any case: 409.
    let (status, body) = app
        .call(
            Method::POST,
            "/api/v1/auth/signup",
            None,
            Some(json!({ "email": "ANA@example.com ", "password": "another password" })),
        )
        .await;
    assert_eq!(status, 409);
    assert_eq!(body["error"]["code"], "email_taken");

    // Login gives a second, independent session.
    let (status, login) = app
        .call(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({ "email": "ana@example.com", "password": "correct horse battery" })),
        )
        .await;
    assert_eq!(status, 200, "{login}");
    let second = login["token"].as_str().unwrap().to_owned();
    assert_ne!(second, user.token);

    // Logout ends only that session.
    let (status, _) = app
        .call(Method::POST, "/api/v1/auth/logout", Some(&second), None)
        .await;
    assert_eq!(status, 204);
    let (status, body) = app.get("/api/v1/auth/me", &second).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized");
    assert_eq!(app.get("/api/v1/auth/me", &user.token).await.0, 200);
});

backend_test!(bad_signups_are_422, |app| async move {
    for (body, field) in [
        (
            json!({ "email": "not-an-email", "password": "long enough" }),
            "email",
        ),
        (
            json!({ "email": "a@example.com", "password": "short" }),
            "password",
        ),
    ] {
        let (status, err) = app
            .call(Method::POST, "/api/v1/auth/signup", None, Some(body))
            .await;
        assert_eq!(status, 422, "{err}");
        assert_eq!(err["error"]["code"], "validation_failed");
        assert_eq!(err["error"]["details"]["field"], field);
    }
    // Nothing was written.
    let users: i64 = platform::with_db!(&app.state.db, pool =>
        sqlx::query_scalar("SELECT COUNT(*) FROM users").fetch_one(pool).await)
    .unwrap();
    assert_eq!(users, 0);
});

backend_test!(login_failures_do_not_reveal_accounts, |app| async move {
    app.signup("known@example.com").await;
    let attempt = |email: &'static str, password: &'static str| {
        let app = &app;
        async move {
            app.call(
                Method::POST,
                "/api/v1/auth/login",
                None,
                Some(json!({ "email": email, "password": password })),
            )
            .await
        }
    };
    let wrong_password = attempt("known@example.com", "wrong password!").await;
    let no_account = attempt("unknown@example.com", "wrong password!").await;
    assert_eq!(wrong_password.0, 401);
    assert_eq!(
        wrong_password, no_account,
        "same answer whether the account exists"
    );
    assert_eq!(wrong_password.1["error"]["code"], "invalid_credentials");
});

backend_test!(login_is_rate_limited, |app| async move {
    app.signup("target@example.com").await;
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let resp = app
            .client
            .post(app.url("/api/v1/auth/login"))
            .json(&json!({ "email": "target@example.com", "password": "guess guess" }))
            .send()
            .await
            .unwrap();
        if resp.status() == 429 {
            assert!(resp.headers().get("retry-after").is_some());
        }
        statuses.push(resp.status().as_u16());
    }
    // The default quota is 10 a minute: ten answers, then refusals.
    assert!(statuses[..10].iter().all(|s| *s == 401), "{statuses:?}");
    assert!(statuses[10..].iter().all(|s| *s == 429), "{statuses:?}");
    // Even the right password is refused while limited.
    let (status, body) = app
        .call(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({ "email": "target@example.com", "password": "correct horse battery" })),
        )
        .await;
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "too_many_attempts");
});

backend_test!(cookie_sessions_need_csrf_for_changes, |app| async move {
    let user = app.signup("cookie@example.com").await;
    let cookie = format!("sy_session={}", user.token);

    // Reads work with the cookie alone.
    let resp = app
        .client
        .get(app.url("/api/v1/auth/me"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // A change without the CSRF header is refused and writes nothing.
    let resp = app
        .client
        .post(app.url("/api/v1/workspaces"))
        .header("cookie", &cookie)
        .json(&json!({ "name": "Forged" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "csrf_token_invalid");
    let (_, me) = app.get("/api/v1/auth/me", &user.token).await;
    assert_eq!(me["workspaces"], json!([]));

    // With the header it goes through.
    let resp = app
        .client
        .post(app.url("/api/v1/workspaces"))
        .header("cookie", &cookie)
        .header("x-csrf-token", &user.csrf)
        .json(&json!({ "name": "Real" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
});

backend_test!(signup_sets_a_safe_cookie, |app| async move {
    let resp = app
        .client
        .post(app.url("/api/v1/auth/signup"))
        .json(&json!({ "email": "c@example.com", "password": "long enough pw" }))
        .send()
        .await
        .unwrap();
    let cookie = resp
        .headers()
        .get("set-cookie")
        .expect("cookie")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(cookie.starts_with("sy_session=sys_"), "{cookie}");
    assert!(cookie.contains("HttpOnly"));
    assert!(cookie.contains("SameSite=Lax"));
    assert!(cookie.contains("Path=/"));
});

#[tokio::test]
async fn signup_can_be_disabled() {
    let app = TestApp::spawn_with(crate::support::Backend::Sqlite, |c| {
        c.auth.allow_signup = false
    })
    .await
    .unwrap();
    let (status, body) = app
        .call(
            Method::POST,
            "/api/v1/auth/signup",
            None,
            Some(json!({ "email": "x@example.com", "password": "long enough pw" })),
        )
        .await;
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "signup_disabled");
}
