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
//! The compact form is **binary** (since 2026-12-06; see [`CompactRecord::write`] for the
//! layout): the request's strings and body as they are, ids as 16 bytes, the time as an integer.
//! Its JSON (the body in base64, ids and times formatted as text, every string escaped) was the
//! largest piece of the gateway's own CPU per request. [`LogRecord::decode`] reads every form
//! ever written: binary records, compact JSON records (before the binary form) and full JSON
//! records with `hits` (the first format). The full JSON form is also what [`LogRecord`]'s
//! `Serialize` writes, for consumers outside the log (the webhook destination sends it).

use std::net::IpAddr;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use platform::Timestamp;
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

/// The binary form's first byte: `0xFF` starts neither JSON text nor UTF-8, so a reader tells
/// the forms apart by it.
const BINARY_MAGIC: u8 = 0xFF;
/// The binary form's version, its second byte.
const BINARY_VERSION: u8 = 1;
/// Magic and version, three ids, flags, hit count, time: the fixed part before the address.
const BINARY_FIXED: usize = 2 + 3 * 16 + 1 + 4 + 8;
const FLAG_BOT: u8 = 1;
const FLAG_IP_TRUNCATED: u8 = 2;

/// A record that cannot be read (or, for a request past 4 GiB, written).
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("the record ends before its {0}")]
    Truncated(&'static str),
    #[error("the record's {0} is invalid")]
    Invalid(&'static str),
    #[error("the record has {0} bytes after its end")]
    Trailing(usize),
    #[error("the record's {0} is longer than 4 GiB")]
    TooLong(&'static str),
    #[error("unknown binary record version {0}")]
    Version(u8),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// The request no longer parses into the hits that were accepted.
    #[error("record {id}: {reason}")]
    Reparse { id: RecordId, reason: String },
}

impl CompactRecord<'_> {
    /// The record as the log stores it, appended to `out`. The layout (integers little-endian,
    /// `str` and `bytes` a `u32` length and the bytes):
    ///
    /// | bytes | field |
    /// |---|---|
    /// | 1 | `0xFF` |
    /// | 1 | version, 1 |
    /// | 16 × 3 | record, site and workspace ids (UUID bytes) |
    /// | 1 | flags: 1 bot, 2 `ip_truncated` |
    /// | 4 | hit count (`u32`) |
    /// | 8 | received at, microseconds since the Unix epoch (`i64`) |
    /// | 1, + 4 or 16 | client address: 0 none, 4 IPv4, 6 IPv6, then its octets |
    /// | str × 3 | method, path, query |
    /// | 4, (str, str) × n | header count, then each name and value |
    /// | bytes | body |
    pub fn write(&self, out: &mut Vec<u8>) -> Result<(), RecordError> {
        let request = self.request;
        let strings = request.method.len()
            + request.path.len()
            + request.query.len()
            + request
                .headers
                .iter()
                .map(|(n, v)| n.len() + v.len() + 8)
                .sum::<usize>();
        out.reserve(BINARY_FIXED + 17 + 4 * 5 + strings + request.body.len());
        out.extend_from_slice(&[BINARY_MAGIC, BINARY_VERSION]);
        out.extend_from_slice(self.id.uuid().as_bytes());
        out.extend_from_slice(self.site_id.uuid().as_bytes());
        out.extend_from_slice(self.workspace_id.uuid().as_bytes());
        let mut flags = 0;
        if self.bot {
            flags |= FLAG_BOT;
        }
        if self.ip_truncated {
            flags |= FLAG_IP_TRUNCATED;
        }
        out.push(flags);
        put_len(out, self.hit_count, "hit count")?;
        out.extend_from_slice(&request.received_at.as_micros().to_le_bytes());
        match request.client_ip {
            None => out.push(0),
            Some(IpAddr::V4(ip)) => {
                out.push(4);
                out.extend_from_slice(&ip.octets());
            }
            Some(IpAddr::V6(ip)) => {
                out.push(6);
                out.extend_from_slice(&ip.octets());
            }
        }
        put_bytes(out, request.method.as_bytes(), "method")?;
        put_bytes(out, request.path.as_bytes(), "path")?;
        put_bytes(out, request.query.as_bytes(), "query")?;
        put_len(out, request.headers.len(), "header count")?;
        for (name, value) in &request.headers {
            put_bytes(out, name.as_bytes(), "header name")?;
            put_bytes(out, value.as_bytes(), "header value")?;
        }
        put_bytes(out, &request.body, "body")
    }
}

fn put_len(out: &mut Vec<u8>, len: usize, what: &'static str) -> Result<(), RecordError> {
    let len = u32::try_from(len).map_err(|_| RecordError::TooLong(what))?;
    out.extend_from_slice(&len.to_le_bytes());
    Ok(())
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8], what: &'static str) -> Result<(), RecordError> {
    put_len(out, bytes.len(), what)?;
    out.extend_from_slice(bytes);
    Ok(())
}

/// Reads the binary form front to back; every read is bounds-checked (rows come from disk).
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], RecordError> {
        if self.rest.len() < n {
            return Err(RecordError::Truncated(what));
        }
        let (taken, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], RecordError> {
        let mut array = [0; N];
        array.copy_from_slice(self.take(N, what)?);
        Ok(array)
    }

    fn u32(&mut self, what: &'static str) -> Result<usize, RecordError> {
        Ok(u32::from_le_bytes(self.array(what)?) as usize)
    }

    fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], RecordError> {
        let len = self.u32(what)?;
        self.take(len, what)
    }

    fn string(&mut self, what: &'static str) -> Result<String, RecordError> {
        let bytes = self.bytes(what)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| RecordError::Invalid(what))
    }
}

/// A binary record's fixed part up to its flags, and a reader at what follows.
fn binary_head(bytes: &[u8]) -> Result<(RecordId, RecordHeader, u8, Reader<'_>), RecordError> {
    let mut reader = Reader { rest: bytes };
    let [magic, version] = reader.array("version")?;
    if magic != BINARY_MAGIC {
        return Err(RecordError::Invalid("first byte"));
    }
    if version != BINARY_VERSION {
        return Err(RecordError::Version(version));
    }
    let id = RecordId(uuid::Uuid::from_bytes(reader.array("id")?));
    let site_id = SiteId(uuid::Uuid::from_bytes(reader.array("site id")?));
    let workspace_id = WorkspaceId(uuid::Uuid::from_bytes(reader.array("workspace id")?));
    let [flags] = reader.array("flags")?;
    let header = RecordHeader {
        site_id,
        workspace_id,
        bot: flags & FLAG_BOT != 0,
    };
    Ok((id, header, flags, reader))
}

/// A binary record, as [`Stored`].
fn read_binary(bytes: &[u8]) -> Result<Stored, RecordError> {
    let (id, header, flags, mut reader) = binary_head(bytes)?;
    let hit_count = reader.u32("hit count")?;
    let received_at = Timestamp::from_micros(i64::from_le_bytes(reader.array("time")?))
        .ok_or(RecordError::Invalid("time"))?;
    let [kind] = reader.array("client address")?;
    let client_ip = match kind {
        0 => None,
        4 => Some(IpAddr::from(reader.array::<4>("client address")?)),
        6 => Some(IpAddr::from(reader.array::<16>("client address")?)),
        _ => return Err(RecordError::Invalid("client address")),
    };
    let method = reader.string("method")?;
    let path = reader.string("path")?;
    let query = reader.string("query")?;
    let count = reader.u32("header count")?;
    // Each header takes at least 8 bytes: a corrupt count must not reserve gigabytes.
    let mut headers = Vec::with_capacity(count.min(reader.rest.len() / 8));
    for _ in 0..count {
        headers.push((
            reader.string("header name")?,
            reader.string("header value")?,
        ));
    }
    let body = Bytes::copy_from_slice(reader.bytes("body")?);
    if !reader.rest.is_empty() {
        return Err(RecordError::Trailing(reader.rest.len()));
    }
    Ok(Stored {
        id,
        site_id: header.site_id,
        workspace_id: header.workspace_id,
        bot: header.bot,
        ip_truncated: flags & FLAG_IP_TRUNCATED != 0,
        hit_count: Some(hit_count),
        request: RawRequest {
            method,
            path,
            query,
            headers,
            body,
            client_ip,
            received_at,
        },
        hits: None,
    })
}

/// Any stored form, before its hits are parsed: a binary record, or either JSON form.
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

impl Stored {
    /// The record with its hits: those stored (the full form), or those its request parses into.
    fn into_record(self) -> Result<LogRecord, RecordError> {
        let hits = match self.hits {
            Some(hits) => hits,
            None => {
                let reparse = |reason| RecordError::Reparse {
                    id: self.id,
                    reason,
                };
                let mut hits = parse_request(&self.request)
                    .map_err(|err| reparse(format!("its request no longer parses: {err}")))?;
                if let Some(count) = self.hit_count
                    && count != hits.len()
                {
                    return Err(reparse(format!(
                        "its request parses into {} hits, {count} were accepted",
                        hits.len()
                    )));
                }
                assign_ids(self.id, &mut hits, self.ip_truncated);
                hits
            }
        };
        Ok(LogRecord {
            id: self.id,
            site_id: self.site_id,
            workspace_id: self.workspace_id,
            bot: self.bot,
            ip_truncated: self.ip_truncated,
            request: self.request,
            hits,
        })
    }
}

/// Either JSON form (a forwarding job carries the full one); the log's records are read with
/// [`LogRecord::decode`], which reads the binary form too.
impl<'de> Deserialize<'de> for LogRecord {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Stored::deserialize(deserializer)?
            .into_record()
            .map_err(serde::de::Error::custom)
    }
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
    /// Reads a record as the log stores it, in any form ever written (see the module's
    /// documentation), parsing its request into the hits that were accepted.
    pub fn decode(bytes: &[u8]) -> Result<LogRecord, RecordError> {
        if bytes.first() == Some(&BINARY_MAGIC) {
            read_binary(bytes)?.into_record()
        } else {
            serde_json::from_slice::<Stored>(bytes)?.into_record()
        }
    }

    /// The record's site, workspace and bot flag, without parsing its request again: a consumer
    /// that wants nothing of a workspace skips the record for the price of a few bytes (a JSON
    /// scan for records in a JSON form).
    pub fn peek(bytes: &[u8]) -> Option<RecordHeader> {
        if bytes.first() == Some(&BINARY_MAGIC) {
            binary_head(bytes).ok().map(|(_, header, _, _)| header)
        } else {
            serde_json::from_slice(bytes).ok()
        }
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

    /// The record in the log's compact form, appended to `out`. Only for records whose hits
    /// are what the request parses into ([`LogRecord::parsed`], the demo generator's).
    pub fn write_compact(&self, out: &mut Vec<u8>) -> Result<(), RecordError> {
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

    /// The compact form as it was written before the binary one (JSON, the body in base64).
    fn compact_json(record: &LogRecord) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "id": record.id,
            "site_id": record.site_id,
            "workspace_id": record.workspace_id,
            "bot": record.bot,
            "ip_truncated": record.ip_truncated,
            "hit_count": record.hits.len(),
            "request": record.request,
        }))
        .unwrap()
    }

    fn compact(record: &LogRecord) -> Vec<u8> {
        let mut out = Vec::new();
        record.write_compact(&mut out).unwrap();
        out
    }

    #[test]
    fn the_compact_form_reads_back_as_the_hits_that_were_accepted() {
        let record = record(gtag_request("203.0.113.9"), false);
        assert_eq!(record.hits.len(), 2);
        let compact = compact(&record);
        assert_eq!(compact[..2], [BINARY_MAGIC, BINARY_VERSION]);
        let read = LogRecord::decode(&compact).unwrap();
        assert_eq!(read.id, record.id);
        assert_eq!(read.hits, record.hits);
        assert_eq!(read.request, record.request);
        // Ids are distinct, in the order of the hits, and keep the record's time.
        assert!(read.hits[0].id < read.hits[1].id);
        assert_eq!(
            read.hits[1].id.uuid().get_timestamp(),
            record.id.uuid().get_timestamp()
        );
        // Both JSON forms written before read back too: the full one and the compact one.
        let full = serde_json::to_vec(&record).unwrap();
        assert_eq!(LogRecord::decode(&full).unwrap().hits, record.hits);
        let json = compact_json(&record);
        let read = LogRecord::decode(&json).unwrap();
        assert_eq!((read.id, &read.hits), (record.id, &record.hits));
        assert_eq!(read.request, record.request);
        // The binary form is the smallest: no base64, no escaping, no field names.
        assert!(
            compact.len() < json.len(),
            "{} vs {}",
            compact.len(),
            json.len()
        );
        assert!(
            compact.len() * 4 < full.len(),
            "{} vs {}",
            compact.len(),
            full.len()
        );
    }

    #[test]
    fn every_field_survives_the_binary_form() {
        let body: Vec<u8> = (0..=255).collect();
        let addresses = [
            None,
            Some("2001:db8::7".parse::<IpAddr>().unwrap()),
            Some("198.51.100.23".parse().unwrap()),
        ];
        for (n, client_ip) in addresses.into_iter().enumerate() {
            let mut request = RawRequest::new(
                "POST",
                "/v1/batch",
                "q=caf%C3%A9&x=\"é\"",
                Timestamp::from_micros(1_765_000_000_123_456).unwrap(),
            )
            .with_header("User-Agent", "Mozilla/5.0 (\"quoted\")")
            .with_header("sec-ch-ua", "\"Chromium\";v=\"142\"")
            .with_header("cookie", "a=1")
            .with_header("cookie", "b=2")
            .with_body(body.clone());
            request.client_ip = client_ip;
            let record = LogRecord {
                id: RecordId::new(),
                site_id: SiteId::new(),
                workspace_id: WorkspaceId::new(),
                bot: n != 1,
                ip_truncated: n == 2,
                request,
                hits: Vec::new(),
            };
            let bytes = compact(&record);
            let stored = read_binary(&bytes).unwrap();
            assert_eq!(stored.id, record.id);
            assert_eq!(stored.site_id, record.site_id);
            assert_eq!(stored.workspace_id, record.workspace_id);
            assert_eq!((stored.bot, stored.ip_truncated), (n != 1, n == 2));
            assert_eq!(stored.hit_count, Some(0));
            assert_eq!(stored.request, record.request);
            let header = LogRecord::peek(&bytes).unwrap();
            assert_eq!(
                (header.site_id, header.workspace_id, header.bot),
                (record.site_id, record.workspace_id, record.bot)
            );
        }
    }

    #[test]
    fn a_damaged_binary_record_is_an_error_not_a_panic() {
        let record = record(gtag_request("2001:db8::1"), false);
        let bytes = compact(&record);
        // Cut anywhere: an error naming what is missing.
        for len in 0..bytes.len() {
            assert!(LogRecord::decode(&bytes[..len]).is_err(), "cut at {len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            LogRecord::decode(&longer),
            Err(RecordError::Trailing(1))
        ));
        let mut version = bytes.clone();
        version[1] = 9;
        assert!(matches!(
            LogRecord::decode(&version),
            Err(RecordError::Version(9))
        ));
        assert!(LogRecord::peek(&version).is_none());
        // A length past the end, and a method that is not UTF-8.
        let method_at = BINARY_FIXED + 1 + 16;
        let mut huge = bytes.clone();
        huge[method_at..method_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            LogRecord::decode(&huge),
            Err(RecordError::Truncated("method"))
        ));
        let mut invalid = bytes.clone();
        invalid[method_at + 4] = 0xC3;
        assert!(matches!(
            LogRecord::decode(&invalid),
            Err(RecordError::Invalid("method"))
        ));
        let mut address = bytes;
        address[BINARY_FIXED] = 5;
        assert!(matches!(
            LogRecord::decode(&address),
            Err(RecordError::Invalid("client address"))
        ));
    }

    #[test]
    fn truncation_applies_to_the_hits_read_back() {
        let mut request = gtag_request("203.0.113.9");
        request.client_ip = request.client_ip.map(super::super::edge::truncate_ip);
        let record = record(request, true);
        let read = LogRecord::decode(&compact(&record)).unwrap();
        for hit in &read.hits {
            assert_eq!(hit.device.ip, Some("203.0.113.0".parse().unwrap()));
        }
        assert!(read.ip_truncated);
    }

    #[test]
    fn a_count_that_no_longer_matches_is_an_error() {
        let record = record(gtag_request("203.0.113.9"), false);
        let mut bytes = compact(&record);
        let count_at = BINARY_FIXED - 12;
        assert_eq!(bytes[count_at..count_at + 4], 2u32.to_le_bytes());
        bytes[count_at..count_at + 4].copy_from_slice(&3u32.to_le_bytes());
        let err = LogRecord::decode(&bytes).unwrap_err();
        assert!(err.to_string().contains("parses into 2 hits, 3"), "{err}");
        // The same in a compact JSON record.
        let mut value: serde_json::Value = serde_json::from_slice(&compact_json(&record)).unwrap();
        value["hit_count"] = 3.into();
        let err = LogRecord::decode(&serde_json::to_vec(&value).unwrap()).unwrap_err();
        assert!(err.to_string().contains("parses into 2 hits, 3"), "{err}");
    }
}
