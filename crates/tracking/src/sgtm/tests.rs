use chrono::DateTime;

use super::*;

fn at(text: &str) -> Timestamp {
    Timestamp::from(DateTime::parse_from_rfc3339(text).unwrap().to_utc())
}

/// A token shaped like the ones sGTM shows under "Send requests manually", made up for this
/// test: `env-7|kJ3vQe9XbT2mN8pLw4sYzA|1931afc61524f7a2c9e1b`, whose first 11 hex digits are
/// 1731324567890 ms = 2024-11-11T11:29:27.890Z.
const TOKEN: &str = "ZW52LTd8a0ozdlFlOVhiVDJtTjhwTHc0c1l6QXwxOTMxYWZjNjE1MjRmN2EyYzllMWI=";

#[test]
fn preview_token_parts_and_expiry() {
    let token = PreviewToken::parse(&format!(" {TOKEN} ")).unwrap();
    assert_eq!(token.raw(), TOKEN);
    assert_eq!(
        token.decoded(),
        "env-7|kJ3vQe9XbT2mN8pLw4sYzA|1931afc61524f7a2c9e1b"
    );
    assert_eq!(token.environment(), Some("env-7"));
    assert_eq!(token.auth(), Some("kJ3vQe9XbT2mN8pLw4sYzA"));
    assert_eq!(token.issued_at(), Some(at("2024-11-11T11:29:27.890Z")));
    let ttl = PREVIEW_TOKEN_TTL_GUESS;
    assert_eq!(
        token.is_expired(at("2024-11-11T12:29:27Z"), ttl),
        Some(false)
    );
    assert_eq!(
        token.is_expired(at("2024-11-11T12:29:28Z"), ttl),
        Some(true)
    );
}

#[test]
fn preview_tokens_of_other_shapes_are_still_accepted() {
    // Two fields only, and a tail that is not a time: nothing guessed.
    let token = PreviewToken::parse("ZW52LTN8YWJj").unwrap();
    assert_eq!(token.decoded(), "env-3|abc");
    assert_eq!(token.environment(), None);
    assert_eq!(
        token.is_expired(Timestamp::now(), PREVIEW_TOKEN_TTL_GUESS),
        None
    );
    let token = PreviewToken::parse("ZW52LTJ8dG9rfHp6enp6enp6enp6enp6").unwrap();
    assert_eq!(token.environment(), Some("env-2"));
    assert_eq!(token.issued_at(), None, "`zzz…` is not hex");

    for bad in ["", "   ", "not base64!", "//79/A==", "ICAg"] {
        let err = PreviewToken::parse(bad).unwrap_err();
        assert_eq!(err.parameter(), Some("X-Gtm-Server-Preview"), "{bad:?}");
    }
}

#[test]
fn container_config_from_protocols_md() {
    let config = ContainerConfig::decode(
        "aWQ9R1RNLTVROThGTFJKJmVudj0xJmF1dGg9eVZVLUlWQ2Vhd01wakZ1eTEyY1RZZw==",
    )
    .unwrap();
    assert_eq!(config.container_id, "GTM-5Q98FLRJ");
    assert_eq!(config.environment.as_deref(), Some("1"));
    assert_eq!(config.auth.as_deref(), Some("yVU-IVCeawMpjFuy12cTYg"));
    assert!(config.other.is_empty());

    // Unpadded works too; no id, a bad id, or not base64 are errors.
    assert!(
        ContainerConfig::decode(
            "aWQ9R1RNLTVROThGTFJKJmVudj0xJmF1dGg9eVZVLUlWQ2Vhd01wakZ1eTEyY1RZZw"
        )
        .is_ok()
    );
    let err = ContainerConfig::decode("ZW52PTE=").unwrap_err(); // env=1
    assert_eq!(err, ParseError::missing("id", None));
    let err = ContainerConfig::decode("aWQ9VUEtMQ==").unwrap_err(); // id=UA-1
    assert_eq!(err.code(), "invalid_parameter");
    assert_eq!(
        ContainerConfig::decode("%%%").unwrap_err().code(),
        "invalid_parameter"
    );
}

#[test]
fn stape_loader_hides_the_id_among_decoys() {
    // PROTOCOLS.md §2: https://load.example.com/1z6ztxquqcp.js?42poe=aWQ9R1RNLU1DS1A3Sks%3D&page=1
    let loader = decode_loader_query("42poe=aWQ9R1RNLU1DS1A3Sks%3D&page=1").unwrap();
    assert_eq!(loader.container_id, "GTM-MCKP7JK");
    assert_eq!(loader.hidden_in.as_deref(), Some("42poe"));
    assert_eq!(loader.params, [("id".to_owned(), "GTM-MCKP7JK".to_owned())]);

    // Decoys first, other decoy shapes, and a data layer name inside the hidden value.
    let loader =
        decode_loader_query("sort=asc&psvKq=pije&x7f=aWQ9R1RNLU1DS1A3SksmbD1zdGFwZUxheWVy")
            .unwrap();
    assert_eq!(loader.container_id, "GTM-MCKP7JK");
    assert_eq!(loader.hidden_in.as_deref(), Some("x7f"));
    assert!(
        loader
            .params
            .contains(&("l".to_owned(), "stapeLayer".to_owned()))
    );
}

#[test]
fn plain_loader_queries() {
    let loader = decode_loader_query(
        "id=GTM-MCKP7JK&l=dataLayer&gtm_auth=abc&gtm_preview=env-5&gtm_cookies_win=x",
    )
    .unwrap();
    assert_eq!(loader.container_id, "GTM-MCKP7JK");
    assert_eq!(loader.hidden_in, None);
    assert_eq!(loader.params.len(), 5);
    let gtag = decode_loader_query("id=G-8XK2T5PQ1M&l=dataLayer&cx=c").unwrap();
    assert_eq!(gtag.container_id, "G-8XK2T5PQ1M");

    for nothing in [
        "",
        "page=1",
        "id=UA-1234-1",
        "psvKq=pije&sort=asc",
        "x=%FF%FE",
    ] {
        assert_eq!(decode_loader_query(nothing), None, "{nothing}");
    }
}

#[test]
fn container_ids() {
    for ok in ["GTM-MCKP7JK", "GTM-5Q98FLRJ", "G-8XK2T5PQ1M"] {
        assert!(is_container_id(ok), "{ok}");
    }
    for bad in [
        "GTM-",
        "G-",
        "gtm-abc",
        "AW-123",
        "GTM-abc",
        "GTM-AB CD",
        "",
    ] {
        assert!(!is_container_id(bad), "{bad}");
    }
}
