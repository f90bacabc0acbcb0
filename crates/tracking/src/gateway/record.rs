//! [`LogRecord`]: what the gateway appends to the event log for each accepted request, and how
//! it is stored.
//!
//! The log stores the record **compactly**: the request as received (already restored from an
//! obfuscated path, its client address already truncated when the site asks for it) and a few
//! facts about it, but not the hits parsed from it. The parsers are pure functions of the
//! request, and a hit's id is derived from the record's id and the hit's position, so reading
//! the record parses the request again and gets the very hits the gateway acknowledged. A parsed
//! hit is two to three times the size of the request (page, device, client hints and consent are
//! repeated in every hit): storing only the request keeps the record to about a third of its
//! former size, and the gateway's request path does not serialize hits at all.
//!
//! Records in the full form (with `hits`: the demo generator's, and those written before this
//! format) are read as they are. The full form is also what [`LogRecord`]'s `Serialize` writes,
//! for consumers outside the log (the webhook destination sends it).

use serde::{Deserialize, Deserializer, Serialize};

use platform::id::WorkspaceId;

use super::RecordId;
use crate::sites::SiteId;
use crate::{Hit, HitId, ParseError, RawRequest, ga4, mp, segment};

/// One accepted tracking request: the original request (for byte-faithful forwarding) and the
/// hits parsed from it.
#[derive(Debug, Clone, Serialize)]
pub struct LogRecord {
    pub id: RecordId,
    pub site_id: SiteId,
    pub workspace_id: WorkspaceId,
    /// The user agent looked like a bot or crawler.
    pub bot: bool,
    /// The site truncates client addresses: the request's address is truncated already, and
    /// every address a hit carries (the sender may state one in the payload) is truncated too.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ip_truncated: bool,
    pub request: RawRequest,
    pub hits: Vec<Hit>,
}

/// The stored form, without hits (see the module's documentation): what the gateway writes
/// for each request it accepts, knowing only how many hits the request parses into.
#[derive(Serialize)]
pub struct CompactRecord<'a> {
    pub id: RecordId,
    pub site_id: SiteId,
    pub workspace_id: WorkspaceId,
    pub bot: bool,
    /// See [`LogRecord::ip_truncated`]; `request`'s address must be truncated already.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ip_truncated: bool,
    /// How many hits the request parses into: reading checks it, so a parser that changed its
    /// mind about an old request is an error, not a silent difference.
    pub hit_count: usize,
    pub request: &'a RawRequest,
}

impl CompactRecord<'_> {
    /// The record as the log stores it, written into `out`.
    pub fn write(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        serde_json::to_writer(out, self)
    }
}

/// Either stored form.
#[derive(Deserialize)]
struct Stored {
    id: RecordId,
    site_id: SiteId,
    workspace_id: WorkspaceId,
    #[serde(default)]
    bot: bool,
    #[serde(default)]
    ip_truncated: bool,
    #[serde(default)]
    hit_count: Option<usize>,
    request: RawRequest,
    #[serde(default)]
    hits: Option<Vec<Hit>>,
}

/// The facts a consumer filters on, read without parsing the request (see [`LogRecord::peek`]).
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct RecordHeader {
    pub site_id: SiteId,
    pub workspace_id: WorkspaceId,
    #[serde(default)]
    pub bot: bool,
}

impl LogRecord {
    /// The record's site, workspace and bot flag, without parsing its request again: a consumer
    /// that wants nothing of a workspace skips the record for the price of a JSON scan.
    pub fn peek(bytes: &[u8]) -> Option<RecordHeader> {
        serde_json::from_slice(bytes).ok()
    }

    /// A record of the hits parsed from `request`; gives each hit its derived id. (The gateway
    /// writes [`CompactRecord`]s and never holds hits; this is the tests' way to a record.)
    #[cfg(test)]
    pub fn parsed(
        site_id: SiteId,
        workspace_id: WorkspaceId,
        bot: bool,
        ip_truncated: bool,
        request: RawRequest,
        mut hits: Vec<Hit>,
    ) -> LogRecord {
        let id = RecordId::new();
        assign_ids(id, &mut hits, ip_truncated);
        LogRecord {
            id,
            site_id,
            workspace_id,
            bot,
            ip_truncated,
            request,
            hits,
        }
    }

    /// The record in the log's compact form, written into `out`. Only for records made by
    /// [`LogRecord::parsed`] (whose hits are what the request parses into).
    #[cfg(test)]
    pub fn write_compact(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        CompactRecord {
            id: self.id,
            site_id: self.site_id,
            workspace_id: self.workspace_id,
            bot: self.bot,
            ip_truncated: self.ip_truncated,
            hit_count: self.hits.len(),
            request: &self.request,
        }
        .write(out)
    }
}

impl<'de> Deserialize<'de> for LogRecord {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let stored = Stored::deserialize(deserializer)?;
        let hits = match stored.hits {
            Some(hits) => hits,
            None => {
                let mut hits = parse_request(&stored.request).map_err(|err| {
                    serde::de::Error::custom(format!(
                        "record {}: its request no longer parses: {err}",
                        stored.id
                    ))
                })?;
                if let Some(count) = stored.hit_count
                    && count != hits.len()
                {
                    return Err(serde::de::Error::custom(format!(
                        "record {}: its request parses into {} hits, {count} were accepted",
                        stored.id,
                        hits.len()
                    )));
                }
                assign_ids(stored.id, &mut hits, stored.ip_truncated);
                hits
            }
        };
        Ok(LogRecord {
            id: stored.id,
            site_id: stored.site_id,
            workspace_id: stored.workspace_id,
            bot: stored.bot,
            ip_truncated: stored.ip_truncated,
            request: stored.request,
            hits,
        })
    }
}

/// The hits of an accepted request, by the protocol its path names.
fn parse_request(request: &RawRequest) -> Result<Vec<Hit>, ParseError> {
    match request.path.as_str() {
        "/g/collect" => ga4::parse(request),
        "/mp/collect" => mp::parse(request).map(|r| r.hits),
        _ => segment::parse(request).map(|r| r.hits),
    }
}

/// The id of the record's hit at `index`: the record's id with its last two bytes replaced by
/// the index. It keeps the record's time (and UUIDv7's version and variant bits), so hits sort
/// by time and, within a request, in the order they were sent (stores break ties of equal
/// event times by id); 58 random bits stay to tell requests of the same millisecond apart.
/// Needs nothing stored.
pub fn hit_id(record: RecordId, index: usize) -> HitId {
    let mut bytes = *record.uuid().as_bytes();
    let index = u16::try_from(index).unwrap_or(u16::MAX).to_be_bytes();
    bytes[14] = index[0];
    bytes[15] = index[1];
    HitId(uuid::Uuid::from_bytes(bytes))
}

fn assign_ids(record: RecordId, hits: &mut [Hit], ip_truncated: bool) {
    for (index, hit) in hits.iter_mut().enumerate() {
        let fields = hit.fields_mut();
        fields.id = hit_id(record, index);
        if ip_truncated && let Some(ip) = fields.device.ip {
            fields.device.ip = Some(super::edge::truncate_ip(ip));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use platform::Timestamp;

    use super::*;

    fn gtag_request(ip: &str) -> RawRequest {
        RawRequest::new(
            "POST",
            "/g/collect",
            "v=2&tid=G-REC0001&cid=1.2&sid=1700000000&dl=https%3A%2F%2Fshop.example%2F&en=page_view",
            Timestamp::now(),
        )
        .with_header("user-agent", "Mozilla/5.0")
        .with_body("en=scroll&epn.percent_scrolled=90\r\nen=purchase&ep.currency=EUR")
        .with_client_ip(ip.parse::<IpAddr>().unwrap())
    }

    fn record(request: RawRequest, ip_truncated: bool) -> LogRecord {
        let hits = parse_request(&request).unwrap();
        LogRecord::parsed(
            SiteId::new(),
            WorkspaceId::new(),
            false,
            ip_truncated,
            request,
            hits,
        )
    }

    #[test]
    fn the_compact_form_reads_back_as_the_hits_that_were_accepted() {
        let record = record(gtag_request("203.0.113.9"), false);
        assert_eq!(record.hits.len(), 2);
        let mut compact = Vec::new();
        record.write_compact(&mut compact).unwrap();
        let text = std::str::from_utf8(&compact).unwrap();
        assert!(!text.contains("\"hits\""), "{text}");
        let read: LogRecord = serde_json::from_slice(&compact).unwrap();
        assert_eq!(read.id, record.id);
        assert_eq!(read.hits, record.hits);
        assert_eq!(read.request, record.request);
        // Ids are distinct, in the order of the hits, and keep the record's time.
        assert!(read.hits[0].id < read.hits[1].id);
        assert_eq!(
            read.hits[1].id.uuid().get_timestamp(),
            record.id.uuid().get_timestamp()
        );
        // The full form reads back too.
        let full = serde_json::to_vec(&record).unwrap();
        let read: LogRecord = serde_json::from_slice(&full).unwrap();
        assert_eq!(read.hits, record.hits);
        // The compact form is the smaller by far.
        assert!(
            compact.len() * 2 < full.len(),
            "{} vs {}",
            compact.len(),
            full.len()
        );
    }

    #[test]
    fn truncation_applies_to_the_hits_read_back() {
        let mut request = gtag_request("203.0.113.9");
        request.client_ip = request.client_ip.map(super::super::edge::truncate_ip);
        let record = record(request, true);
        let mut compact = Vec::new();
        record.write_compact(&mut compact).unwrap();
        let read: LogRecord = serde_json::from_slice(&compact).unwrap();
        for hit in &read.hits {
            assert_eq!(hit.device.ip, Some("203.0.113.0".parse().unwrap()));
        }
        assert!(read.ip_truncated);
    }

    #[test]
    fn a_count_that_no_longer_matches_is_an_error() {
        let record = record(gtag_request("203.0.113.9"), false);
        let mut compact = Vec::new();
        record.write_compact(&mut compact).unwrap();
        let mut value: serde_json::Value = serde_json::from_slice(&compact).unwrap();
        value["hit_count"] = 3.into();
        let err = serde_json::from_value::<LogRecord>(value).unwrap_err();
        assert!(err.to_string().contains("parses into 2 hits, 3"), "{err}");
    }
}
