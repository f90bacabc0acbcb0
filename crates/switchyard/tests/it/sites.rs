//! The sites API: create, validate, unique hostnames, rotate keys, usage.

use reqwest::Method;
use serde_json::json;

use crate::backend_test;

backend_test!(site_lifecycle_and_validation, |app| async move {
    let owner = app.signup("sites@example.com").await;
    let ws = app.workspace(&owner, "Sites").await;
    let base = format!("/api/v1/workspaces/{ws}/sites");

    let (status, created) = app
        .post(
            &base,
            &owner.token,
            json!({
                "name": "Shop",
                "hostnames": ["Track.Shop.example.com"],
                "measurement_ids": ["g-abc123"],
                "tagging_server_url": "https://sgtm.shop.example.com/",
                "loader": { "script_path": "/k3x9.js", "collect_path": "/k3x9/c" },
                "time_zone": "Europe/Berlin",
            }),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let site = &created["site"];
    let id = site["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("site_"));
    assert_eq!(site["hostnames"], json!(["track.shop.example.com"]));
    assert_eq!(site["measurement_ids"], json!(["G-ABC123"]));
    assert_eq!(site["tagging_server_url"], "https://sgtm.shop.example.com");
    assert!(site["write_key"].as_str().unwrap().starts_with("swk_"));
    assert!(
        created["mp_api_secret"]
            .as_str()
            .unwrap()
            .starts_with("mps_")
    );

    // The secret is never shown again.
    let (status, got) = app.get(&format!("{base}/{id}"), &owner.token).await;
    assert_eq!(status, 200);
    assert!(
        !got.to_string()
            .contains(created["mp_api_secret"].as_str().unwrap())
    );

    // Hostnames are unique across the deployment, whoever asks.
    let other = app.signup("other@example.com").await;
    let other_ws = app.workspace(&other, "Other").await;
    let (status, err) = app
        .post(
            &format!("/api/v1/workspaces/{other_ws}/sites"),
            &other.token,
            json!({ "name": "Thief", "hostnames": ["track.shop.example.com"] }),
        )
        .await;
    assert_eq!(status, 409);
    assert_eq!(err["error"]["code"], "hostname_taken");
    let (_, list) = app
        .get(
            &format!("/api/v1/workspaces/{other_ws}/sites"),
            &other.token,
        )
        .await;
    assert_eq!(
        list["data"],
        json!([]),
        "the refused site was not half-created"
    );

    for (body, field) in [
        (json!({ "name": "" }), "name"),
        (json!({ "hostnames": ["not a host"] }), "hostnames"),
        (
            json!({ "measurement_ids": ["UA-1234-1"] }),
            "measurement_ids",
        ),
        (
            json!({ "loader": { "script_path": "/g/collect" } }),
            "loader.script_path",
        ),
        (json!({ "time_zone": "Moon/Base" }), "time_zone"),
        (
            json!({ "preview_server_url": "not a url" }),
            "preview_server_url",
        ),
    ] {
        let (status, err) = app
            .call(
                Method::PATCH,
                &format!("{base}/{id}"),
                Some(&owner.token),
                Some(body.clone()),
            )
            .await;
        assert_eq!(status, 422, "{body}: {err}");
        assert_eq!(err["error"]["details"]["field"], field, "{body}");
    }

    // PATCH keeps absent fields and clears null ones.
    let (status, patched) = app
        .call(
            Method::PATCH,
            &format!("{base}/{id}"),
            Some(&owner.token),
            Some(json!({ "name": "Shop EU", "tagging_server_url": null })),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["name"], "Shop EU");
    assert_eq!(patched["tagging_server_url"], serde_json::Value::Null);
    assert_eq!(patched["hostnames"], json!(["track.shop.example.com"]));

    let old_key = patched["write_key"].as_str().unwrap().to_owned();
    let (status, rotated) = app
        .post(&format!("{base}/{id}/write-key"), &owner.token, json!({}))
        .await;
    assert_eq!(status, 200);
    assert_ne!(rotated["write_key"].as_str().unwrap(), old_key);
    let (status, secret) = app
        .post(&format!("{base}/{id}/mp-secret"), &owner.token, json!({}))
        .await;
    assert_eq!(status, 200);
    assert_ne!(secret["mp_api_secret"], created["mp_api_secret"]);

    let (status, usage) = app.get(&format!("{base}/{id}/usage"), &owner.token).await;
    assert_eq!(status, 200);
    assert_eq!(usage, json!([]));
    let (status, err) = app
        .get(&format!("{base}/{id}/usage?from=yesterday"), &owner.token)
        .await;
    assert_eq!(status, 400, "{err}");

    let (status, _) = app
        .call(
            Method::DELETE,
            &format!("{base}/{id}"),
            Some(&owner.token),
            None,
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(app.get(&format!("{base}/{id}"), &owner.token).await.0, 404);
    // The hostname is free again.
    let (status, _) = app
        .post(
            &format!("/api/v1/workspaces/{other_ws}/sites"),
            &other.token,
            json!({ "name": "Next", "hostnames": ["track.shop.example.com"] }),
        )
        .await;
    assert_eq!(status, 201);
});

backend_test!(
    members_read_sites_but_only_admins_change_them,
    |app| async move {
        let owner = app.signup("o@example.com").await;
        let ws = app.workspace(&owner, "W").await;
        let (id, _, _) = app.site(&owner, &ws, "t.example.com").await;
        let (key, _) = app.api_key(&owner, &ws, "member").await;
        assert_eq!(
            app.get(&format!("/api/v1/workspaces/{ws}/sites/{id}"), &key)
                .await
                .0,
            200
        );
        let (status, _) = app
            .call(
                Method::PATCH,
                &format!("/api/v1/workspaces/{ws}/sites/{id}"),
                Some(&key),
                Some(json!({ "name": "x" })),
            )
            .await;
        assert_eq!(status, 403);
    }
);
