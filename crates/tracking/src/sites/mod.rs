//! Sites: tracking properties (what older systems call a "GTM"). A site serves one or more
//! first-party hostnames, accepts hits for its GA4 measurement ids, its Segment write key and
//! its Measurement Protocol secret, and says where hits are forwarded (the customer's own sGTM
//! tagging and preview servers).

pub mod directory;
pub mod routes;
pub mod store;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use platform::{ApiError, Timestamp};

platform::typed_id!(
    /// A site: one tracking property of a workspace.
    SiteId,
    "site"
);

/// Where the first-party loader and collect endpoint live, when they are hidden from ad
/// blockers under paths of the customer's choosing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoaderSettings {
    /// Serves the web container's `gtm.js` (or `gtag/js` for a `G-` id) at this path, e.g.
    /// `/1z6ztxquqcp.js`. The container id comes from the site or from a base64 `id=…` query
    /// parameter of any name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script_path: Option<String>,
    /// Accepts GA4 hits at this path as if it were `/g/collect`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collect_path: Option<String>,
}

/// A site as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Site {
    pub id: SiteId,
    pub name: String,
    /// First-party tracking hostnames this site serves (unique across the deployment).
    pub hostnames: Vec<String>,
    /// GA4 measurement ids (`G-…`) whose hits this site accepts.
    pub measurement_ids: Vec<String>,
    /// The GTM web container (`GTM-…`) the loader serves.
    pub web_container_id: Option<String>,
    /// The customer's own sGTM tagging server, where hits are forwarded.
    pub tagging_server_url: Option<String>,
    /// The sGTM preview server, where requests carrying `X-Gtm-Server-Preview` go.
    pub preview_server_url: Option<String>,
    /// Origins allowed by CORS (`https://shop.example.com`, or `*`).
    pub allowed_origins: Vec<String>,
    pub loader: LoaderSettings,
    /// The Segment-style write key (public: it ships in page code).
    pub write_key: String,
    /// IANA time zone for reports.
    pub time_zone: String,
    /// Drop the last octet (IPv4) or the last 80 bits (IPv6) of client addresses at the edge.
    pub truncate_ip: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// Fields to create or change a site; on update, absent fields are kept.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SiteRequest {
    pub name: Option<String>,
    pub hostnames: Option<Vec<String>>,
    pub measurement_ids: Option<Vec<String>>,
    #[serde(default, with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub web_container_id: Option<Option<String>>,
    #[serde(default, with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub tagging_server_url: Option<Option<String>>,
    #[serde(default, with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub preview_server_url: Option<Option<String>>,
    pub allowed_origins: Option<Vec<String>>,
    pub loader: Option<LoaderSettings>,
    pub time_zone: Option<String>,
    pub truncate_ip: Option<bool>,
}

/// `null` clears a field; absence keeps it.
mod double_option {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<String>>, D::Error> {
        Option::<String>::deserialize(d).map(Some)
    }
}

/// Paths the gateway or the API own; loader paths may not shadow them.
const RESERVED_PREFIXES: &[&str] = &[
    "/api/", "/g/", "/mp/", "/debug/", "/v1/", "/gtag/", "/healthz", "/readyz", "/metrics",
    "/gtm.js", "/ns.html",
];

pub fn normalize_hostname(raw: &str) -> Result<String, ApiError> {
    let host = raw.trim().trim_end_matches('.').to_ascii_lowercase();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if host.len() > 253
        || !(host.contains('.') || host == "localhost")
        || !host.split('.').all(label_ok)
    {
        return Err(ApiError::invalid_field(
            "hostnames",
            format!("`{raw}` is not a valid hostname (e.g. `track.example.com`)."),
        ));
    }
    Ok(host)
}

fn validate_url(field: &str, raw: &str) -> Result<String, ApiError> {
    let url = reqwest::Url::parse(raw.trim()).map_err(|_| {
        ApiError::invalid_field(field, format!("`{field}` must be an absolute http(s) URL."))
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ApiError::invalid_field(
            field,
            format!("`{field}` must be an http(s) URL."),
        ));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

fn validate_origin(raw: &str) -> Result<String, ApiError> {
    if raw == "*" {
        return Ok(raw.to_owned());
    }
    let url = validate_url("allowed_origins", raw)?;
    let parsed = reqwest::Url::parse(&url).map_err(ApiError::internal)?;
    if parsed.path() != "/" || parsed.query().is_some() {
        return Err(ApiError::invalid_field(
            "allowed_origins",
            format!("`{raw}` is not an origin (scheme://host[:port], no path)."),
        ));
    }
    Ok(parsed.origin().ascii_serialization())
}

fn validate_path(field: &str, raw: &str) -> Result<String, ApiError> {
    let ok = raw.starts_with('/')
        && raw.len() > 1
        && raw.len() <= 100
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~/".contains(&b))
        && !RESERVED_PREFIXES.iter().any(|p| raw.starts_with(p));
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(ApiError::invalid_field(
            field,
            format!(
                "`{raw}` must start with `/`, use only letters, digits and `-._~/`, and not shadow a built-in path."
            ),
        ))
    }
}

/// Checks every field that is present and returns them normalized.
pub fn validate(req: &SiteRequest) -> Result<SiteRequest, ApiError> {
    let mut out = req.clone();
    if let Some(name) = &req.name {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(ApiError::invalid_field(
                "name",
                "`name` must be 1 to 200 characters.",
            ));
        }
        out.name = Some(name.to_owned());
    }
    if let Some(hosts) = &req.hostnames {
        let mut normalized = hosts
            .iter()
            .map(|h| normalize_hostname(h))
            .collect::<Result<Vec<_>, _>>()?;
        normalized.sort();
        normalized.dedup();
        if normalized.len() > 20 {
            return Err(ApiError::invalid_field(
                "hostnames",
                "At most 20 hostnames per site.",
            ));
        }
        out.hostnames = Some(normalized);
    }
    if let Some(ids) = &req.measurement_ids {
        let mut ids: Vec<String> = ids.iter().map(|i| i.trim().to_ascii_uppercase()).collect();
        if let Some(bad) = ids.iter().find(|i| !crate::ga4::is_measurement_id(i)) {
            return Err(ApiError::invalid_field(
                "measurement_ids",
                format!("`{bad}` is not a GA4 measurement id (G-XXXXXXX)."),
            ));
        }
        ids.sort();
        ids.dedup();
        out.measurement_ids = Some(ids);
    }
    if let Some(Some(id)) = &req.web_container_id {
        let id = id.trim().to_ascii_uppercase();
        if !(id.starts_with("GTM-") && crate::sgtm::is_container_id(&id)) {
            return Err(ApiError::invalid_field(
                "web_container_id",
                format!("`{id}` is not a GTM container id (GTM-XXXXXXX)."),
            ));
        }
        out.web_container_id = Some(Some(id));
    }
    if let Some(Some(url)) = &req.tagging_server_url {
        out.tagging_server_url = Some(Some(validate_url("tagging_server_url", url)?));
    }
    if let Some(Some(url)) = &req.preview_server_url {
        out.preview_server_url = Some(Some(validate_url("preview_server_url", url)?));
    }
    if let Some(origins) = &req.allowed_origins {
        out.allowed_origins = Some(
            origins
                .iter()
                .map(|o| validate_origin(o))
                .collect::<Result<_, _>>()?,
        );
    }
    if let Some(loader) = &req.loader {
        out.loader = Some(LoaderSettings {
            script_path: loader
                .script_path
                .as_deref()
                .map(|p| validate_path("loader.script_path", p))
                .transpose()?,
            collect_path: loader
                .collect_path
                .as_deref()
                .map(|p| validate_path("loader.collect_path", p))
                .transpose()?,
        });
    }
    if let Some(zone) = &req.time_zone {
        zone.parse::<chrono_tz::Tz>().map_err(|_| {
            ApiError::invalid_field(
                "time_zone",
                format!("`{zone}` is not an IANA time zone (e.g. Europe/Berlin)."),
            )
        })?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_are_normalized_and_checked() {
        assert_eq!(
            normalize_hostname(" Track.Example.COM. ").unwrap(),
            "track.example.com"
        );
        assert_eq!(normalize_hostname("localhost").unwrap(), "localhost");
        for bad in [
            "",
            "nodot",
            "-a.example.com",
            "a..b.com",
            "a b.com",
            "x.com:8080",
            "ü.com",
        ] {
            assert!(normalize_hostname(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn loader_paths_cannot_shadow_built_ins() {
        assert!(validate_path("p", "/1z6ztxquqcp.js").is_ok());
        for bad in [
            "/g/collect",
            "/api/v1/x",
            "/gtm.js",
            "x.js",
            "/",
            "/a b",
            "/healthz",
        ] {
            assert!(validate_path("p", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn requests_are_validated_field_by_field() {
        let ok = validate(&SiteRequest {
            name: Some(" Shop ".into()),
            measurement_ids: Some(vec!["g-abc123".into()]),
            allowed_origins: Some(vec!["https://Shop.example.com/".into()]),
            tagging_server_url: Some(Some("https://sgtm.example.com/".into())),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(ok.name.as_deref(), Some("Shop"));
        assert_eq!(ok.measurement_ids.unwrap(), vec!["G-ABC123"]);
        assert_eq!(
            ok.allowed_origins.unwrap(),
            vec!["https://shop.example.com"]
        );
        assert_eq!(
            ok.tagging_server_url.unwrap().as_deref(),
            Some("https://sgtm.example.com")
        );
        for (req, field) in [
            (
                SiteRequest {
                    measurement_ids: Some(vec!["UA-1".into()]),
                    ..Default::default()
                },
                "measurement_ids",
            ),
            (
                SiteRequest {
                    web_container_id: Some(Some("G-1".into())),
                    ..Default::default()
                },
                "web_container_id",
            ),
            (
                SiteRequest {
                    allowed_origins: Some(vec!["https://a.com/path".into()]),
                    ..Default::default()
                },
                "allowed_origins",
            ),
            (
                SiteRequest {
                    time_zone: Some("Mars/Olympus".into()),
                    ..Default::default()
                },
                "time_zone",
            ),
            (
                SiteRequest {
                    preview_server_url: Some(Some("ftp://x.com".into())),
                    ..Default::default()
                },
                "preview_server_url",
            ),
        ] {
            let err = validate(&req).unwrap_err();
            assert_eq!(err.details.unwrap()["field"], field);
        }
    }
}
