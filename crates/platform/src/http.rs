//! HTTP conventions shared by every feature's routes: extractors whose rejections are our JSON
//! errors, cursor pagination, and the fallbacks for unknown routes and methods.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ApiError;
use crate::id::Cursor;

/// JSON body extractor and response; a malformed body is a JSON 4xx, never axum's plain text.
#[derive(Debug, Clone, Copy, Default, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        let code = match &rejection {
            JsonRejection::JsonDataError(_) => "invalid_body",
            JsonRejection::JsonSyntaxError(_) => "malformed_json",
            JsonRejection::MissingJsonContentType(_) => "unsupported_media_type",
            _ if status == StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            _ => "invalid_body",
        };
        ApiError::new(status, code, rejection.body_text())
    }
}

/// Path parameters extractor; a malformed id is a 400 naming what was expected.
#[derive(Debug, Clone, Copy, Default, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::bad_request("invalid_path_parameter", rejection.body_text())
    }
}

/// Query string extractor with JSON errors.
#[derive(Debug, Clone, Copy, Default, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::bad_request("invalid_query", rejection.body_text())
    }
}

pub const DEFAULT_PAGE_LIMIT: u32 = 50;
pub const MAX_PAGE_LIMIT: u32 = 200;

/// `?limit=&cursor=` on every list endpoint.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Items per page, 1 to 200 (default 50).
    pub limit: Option<u32>,
    /// `next_cursor` from the previous page.
    pub cursor: Option<String>,
}

impl PageParams {
    pub fn limit(&self) -> Result<u32, ApiError> {
        match self.limit {
            None => Ok(DEFAULT_PAGE_LIMIT),
            Some(n) if (1..=MAX_PAGE_LIMIT).contains(&n) => Ok(n),
            Some(_) => Err(ApiError::bad_request(
                "invalid_limit",
                format!("`limit` must be between 1 and {MAX_PAGE_LIMIT}."),
            )),
        }
    }

    /// The id after which the page starts (lists run newest first: `id < cursor`).
    pub fn cursor(&self) -> Result<Option<Uuid>, ApiError> {
        self.cursor
            .as_deref()
            .map(|c| {
                c.parse::<Cursor>().map(|c| c.0).map_err(|_| {
                    ApiError::bad_request("invalid_cursor", "`cursor` is not a valid cursor.")
                })
            })
            .transpose()
    }
}

/// `{"data":[…],"next_cursor":…}`
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub data: Vec<T>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// Builds a page from up to `limit + 1` rows fetched newest first; the extra row only tells
    /// that another page exists.
    pub fn from_rows(mut rows: Vec<T>, limit: u32, id_of: impl Fn(&T) -> Uuid) -> Self {
        let limit = limit as usize;
        let next_cursor = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(|last| Cursor(id_of(last)).to_string())
        } else {
            None
        };
        Page {
            data: rows,
            next_cursor,
        }
    }

    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            data: self.data.into_iter().map(f).collect(),
            next_cursor: self.next_cursor,
        }
    }
}

/// Answer for routes that do not exist.
pub async fn not_found_fallback() -> ApiError {
    ApiError::not_found("route_not_found", "No route matches this path.")
}

/// Answer for a known path with a method it does not support.
pub async fn method_not_allowed_fallback() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "This path does not support this method.",
    )
}

/// Most of a refused body [`within_declared_limit`] reads and discards.
pub const LINGER_BYTES: usize = 16 * 1024 * 1024;
/// Longest [`within_declared_limit`] reads a refused body.
pub const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// `body` back when the request's declared length (`Content-Length`) is within `limit` bytes
/// or absent (a body without one is cut off at the limit as it streams in); `None` when it
/// declares more, and the caller answers 413 at once, without reading it.
///
/// The refused body is then read and discarded in the background, up to [`LINGER_BYTES`] or
/// [`LINGER_TIME`], whichever comes first: a "lingering close", as nginx does. A server that
/// closes the connection with the client's unread bytes in its receive buffer makes the kernel
/// answer them with a reset, and a client still sending its body gets "broken pipe" instead of
/// the 413 it was sent. Past the caps the connection is closed.
pub fn within_declared_limit(
    headers: &axum::http::HeaderMap,
    body: axum::body::Body,
    limit: usize,
) -> Option<axum::body::Body> {
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_none_or(|len| len <= limit as u64) {
        return Some(body);
    }
    tokio::spawn(async move {
        use futures::StreamExt;
        let drain = async {
            let mut chunks = body.into_data_stream();
            let mut read = 0;
            while let Some(Ok(chunk)) = chunks.next().await {
                read += chunk.len();
                if read > LINGER_BYTES {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(LINGER_TIME, drain).await;
    });
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_trims_extra_row_and_sets_cursor() {
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
        let page = Page::from_rows(ids.clone(), 2, |u| *u);
        assert_eq!(page.data.len(), 2);
        let cursor: Cursor = page.next_cursor.unwrap().parse().unwrap();
        assert_eq!(cursor.0, ids[1]);
        let last = Page::from_rows(ids[..2].to_vec(), 2, |u| *u);
        assert!(last.next_cursor.is_none());
    }

    #[test]
    fn limit_bounds() {
        let p = |l| PageParams {
            limit: l,
            cursor: None,
        };
        assert_eq!(p(None).limit().unwrap(), 50);
        assert_eq!(p(Some(200)).limit().unwrap(), 200);
        assert!(p(Some(0)).limit().is_err());
        assert!(p(Some(201)).limit().is_err());
        let bad = PageParams {
            limit: None,
            cursor: Some("zzz".into()),
        };
        assert_eq!(bad.cursor().unwrap_err().code, "invalid_cursor");
    }
}
