//! Workspaces, members and roles, invites and API keys, over HTTP.

use reqwest::Method;
use serde_json::json;

use crate::backend_test;

backend_test!(workspace_lifecycle, |app| async move {
    let owner = app.signup("owner@example.com").await;
    let ws = app.workspace(&owner, "  Acme Agency ").await;
    assert!(ws.starts_with("ws_"));

    let (status, got) = app
        .get(&format!("/api/v1/workspaces/{ws}"), &owner.token)
        .await;
    assert_eq!(status, 200);
    assert_eq!(got["name"], "Acme Agency", "name is trimmed");
    assert_eq!(got["role"], "owner");

    let (status, renamed) = app
        .call(
            Method::PATCH,
            &format!("/api/v1/workspaces/{ws}"),
            Some(&owner.token),
            Some(json!({ "name": "Acme" })),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(renamed["name"], "Acme");

    let (status, err) = app
        .call(
            Method::PATCH,
            &format!("/api/v1/workspaces/{ws}"),
            Some(&owner.token),
            Some(json!({ "name": "" })),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(err["error"]["details"]["field"], "name");

    let (status, list) = app.get("/api/v1/workspaces", &owner.token).await;
    assert_eq!(status, 200);
    assert_eq!(list["data"].as_array().unwrap().len(), 1);

    let (status, _) = app
        .call(
            Method::DELETE,
            &format!("/api/v1/workspaces/{ws}"),
            Some(&owner.token),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, err) = app
        .get(&format!("/api/v1/workspaces/{ws}"), &owner.token)
        .await;
    assert_eq!(status, 404);
    assert_eq!(err["error"]["code"], "workspace_not_found");
});

backend_test!(workspace_list_paginates, |app| async move {
    let owner = app.signup("pages@example.com").await;
    let mut created = Vec::new();
    for i in 0..5 {
        created.push(app.workspace(&owner, &format!("ws {i}")).await);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/workspaces?limit=2&cursor={c}"),
            None => "/api/v1/workspaces?limit=2".to_owned(),
        };
        let (status, page) = app.get(&path, &owner.token).await;
        assert_eq!(status, 200, "{page}");
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= 2);
        seen.extend(data.iter().map(|w| w["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    created.reverse();
    assert_eq!(seen, created, "newest first, each once");
    let (status, err) = app.get("/api/v1/workspaces?limit=500", &owner.token).await;
    assert_eq!(status, 400);
    assert_eq!(err["error"]["code"], "invalid_limit");
    let (status, err) = app
        .get("/api/v1/workspaces?cursor=garbage", &owner.token)
        .await;
    assert_eq!(status, 400);
    assert_eq!(err["error"]["code"], "invalid_cursor");
});

backend_test!(invites_roles_and_the_last_owner, |app| async move {
    let owner = app.signup("owner@example.com").await;
    let ws = app.workspace(&owner, "Team").await;
    let invitee = app.signup("new@example.com").await;
    let stranger = app.signup("stranger@example.com").await;

    let (status, invite) = app
        .post(
            &format!("/api/v1/workspaces/{ws}/invites"),
            &owner.token,
            json!({ "email": "NEW@example.com", "role": "member" }),
        )
        .await;
    assert_eq!(status, 201, "{invite}");
    let token = invite["token"].as_str().unwrap().to_owned();
    assert!(invite["accept_url"].as_str().unwrap().contains(&token));

    // Someone else cannot use it.
    let (status, err) = app
        .post(
            "/api/v1/invites/accept",
            &stranger.token,
            json!({ "token": token }),
        )
        .await;
    assert_eq!(status, 403);
    assert_eq!(err["error"]["code"], "invite_email_mismatch");

    let (status, joined) = app
        .post(
            "/api/v1/invites/accept",
            &invitee.token,
            json!({ "token": token }),
        )
        .await;
    assert_eq!(status, 200, "{joined}");
    assert_eq!(joined["id"], ws.as_str());
    assert_eq!(joined["role"], "member");
    let (status, err) = app
        .post(
            "/api/v1/invites/accept",
            &invitee.token,
            json!({ "token": token }),
        )
        .await;
    assert_eq!(status, 409);
    assert_eq!(err["error"]["code"], "invite_already_accepted");

    let (_, members) = app
        .get(&format!("/api/v1/workspaces/{ws}/members"), &owner.token)
        .await;
    assert_eq!(members["data"].as_array().unwrap().len(), 2);

    // A member cannot rename, invite or promote.
    let (status, _) = app
        .call(
            Method::PATCH,
            &format!("/api/v1/workspaces/{ws}"),
            Some(&invitee.token),
            Some(json!({ "name": "Mine" })),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = app
        .call(
            Method::PATCH,
            &format!("/api/v1/workspaces/{ws}/members/{}", invitee.id),
            Some(&invitee.token),
            Some(json!({ "role": "owner" })),
        )
        .await;
    assert_eq!(status, 403);

    // The only owner cannot demote or remove themself.
    let (status, err) = app
        .call(
            Method::PATCH,
            &format!("/api/v1/workspaces/{ws}/members/{}", owner.id),
            Some(&owner.token),
            Some(json!({ "role": "admin" })),
        )
        .await;
    assert_eq!(status, 409);
    assert_eq!(err["error"]["code"], "last_owner");
    let (status, _) = app
        .call(
            Method::DELETE,
            &format!("/api/v1/workspaces/{ws}/members/{}", owner.id),
            Some(&owner.token),
            None,
        )
        .await;
    assert_eq!(status, 409);

    // Promote the member to owner; now the first owner may step down.
    let (status, _) = app
        .call(
            Method::PATCH,
            &format!("/api/v1/workspaces/{ws}/members/{}", invitee.id),
            Some(&owner.token),
            Some(json!({ "role": "owner" })),
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = app
        .call(
            Method::DELETE,
            &format!("/api/v1/workspaces/{ws}/members/{}", owner.id),
            Some(&owner.token),
            None,
        )
        .await;
    assert_eq!(status, 204, "leaving");
    let (status, _) = app
        .get(&format!("/api/v1/workspaces/{ws}"), &owner.token)
        .await;
    assert_eq!(status, 404, "a former member sees nothing");

    // An unknown role is a 422 naming the problem.
    let (status, err) = app
        .call(
            Method::PATCH,
            &format!("/api/v1/workspaces/{ws}/members/{}", invitee.id),
            Some(&invitee.token),
            Some(json!({ "role": "emperor" })),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(err["error"]["code"], "invalid_body");
});

backend_test!(
    api_keys_are_shown_once_scoped_and_revocable,
    |app| async move {
        let owner = app.signup("keys@example.com").await;
        let ws = app.workspace(&owner, "Keys").await;
        let other = app.workspace(&owner, "Other").await;
        let (key, key_id) = app.api_key(&owner, &ws, "member").await;
        assert!(key.starts_with("syk_"));

        let (status, list) = app
            .get(&format!("/api/v1/workspaces/{ws}/api-keys"), &owner.token)
            .await;
        assert_eq!(status, 200);
        let listed = &list["data"][0];
        assert_eq!(listed["id"], key_id.as_str());
        assert_eq!(listed["prefix"], &key[..12]);
        assert!(
            !list.to_string().contains(&key),
            "the secret is never listed"
        );

        // The key reads its workspace, not another one of the same owner.
        assert_eq!(
            app.get(&format!("/api/v1/workspaces/{ws}"), &key).await.0,
            200
        );
        assert_eq!(
            app.get(&format!("/api/v1/workspaces/{other}"), &key)
                .await
                .0,
            404
        );
        // A member key cannot manage keys, nor act as a user.
        assert_eq!(
            app.get(&format!("/api/v1/workspaces/{ws}/api-keys"), &key)
                .await
                .0,
            403
        );
        assert_eq!(app.get("/api/v1/auth/me", &key).await.0, 403);
        let (_, listed) = app.get("/api/v1/workspaces", &key).await;
        assert_eq!(listed["data"].as_array().unwrap().len(), 1);

        let (status, _) = app
            .call(
                Method::DELETE,
                &format!("/api/v1/workspaces/{ws}/api-keys/{key_id}"),
                Some(&owner.token),
                None,
            )
            .await;
        assert_eq!(status, 204);
        assert_eq!(
            app.get(&format!("/api/v1/workspaces/{ws}"), &key).await.0,
            401
        );

        // Stored hashed: the secret appears nowhere in the database.
        let hashes: Vec<String> = platform::with_db!(&app.state.db, pool =>
        sqlx::query_scalar("SELECT key_hash FROM api_keys").fetch_all(pool).await)
        .unwrap();
        assert!(
            hashes
                .iter()
                .all(|h| h.len() == 64 && !h.contains(&key[4..]))
        );
    }
);
