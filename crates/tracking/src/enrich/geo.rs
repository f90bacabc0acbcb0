//! Geo location of a client address from a MaxMind-format City database (GeoIP2/GeoLite2 City,
//! DB-IP City Lite, or a Country database, which fills the country only).
//!
//! The database is read into memory once, at start; a lookup is a tree walk over it (a few
//! microseconds) and never fails loudly: an address the database does not hold, a private
//! address or a damaged record all give no location.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use maxminddb::{Reader, geoip2};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Where a hit came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Geo {
    /// ISO 3166-1 alpha-2 country code, e.g. `GB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// The largest subdivision (state, region) as an ISO 3166-2 code, e.g. `GB-ENG`, `US-CA` —
    /// the form GA4's Measurement Protocol `user_location.region_id` uses; its English name
    /// when the database has no code for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// City name in English, e.g. `London`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
}

impl Geo {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// A Measurement Protocol `user_location` (`country_id`, `region_id`, `city`), which the
    /// sender states instead of an address; `None` when it names nothing.
    pub(super) fn from_user_location(location: &Value) -> Option<Self> {
        let text = |name: &str| {
            location
                .get(name)
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let geo = Geo {
            country: text("country_id").map(|c| c.to_ascii_uppercase()),
            region: text("region_id").map(|r| r.to_ascii_uppercase()),
            city: text("city"),
        };
        (!geo.is_empty()).then_some(geo)
    }
}

/// The database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum GeoDatabaseError {
    #[error("cannot read the geo database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: maxminddb::MaxMindDbError,
    },
    #[error(
        "the geo database {path} is a `{database_type}` database; a City or Country database is needed"
    )]
    WrongType {
        path: PathBuf,
        database_type: String,
    },
}

/// An open MaxMind-format database.
pub(super) struct GeoDatabase {
    reader: Reader<Vec<u8>>,
}

impl GeoDatabase {
    /// Reads the whole file; refuses databases of other kinds (ASN, ISP, anonymous IP), whose
    /// records have no location and would silently give none for every hit.
    pub(super) fn open(path: &Path) -> Result<Self, GeoDatabaseError> {
        let reader = Reader::open_readfile(path).map_err(|source| GeoDatabaseError::Open {
            path: path.to_owned(),
            source,
        })?;
        let database_type = &reader.metadata().database_type;
        let kind = database_type.to_ascii_lowercase();
        if !["city", "country", "enterprise"]
            .iter()
            .any(|k| kind.contains(k))
        {
            return Err(GeoDatabaseError::WrongType {
                path: path.to_owned(),
                database_type: database_type.clone(),
            });
        }
        Ok(Self { reader })
    }

    pub(super) fn lookup(&self, ip: IpAddr) -> Option<Geo> {
        // `::ffff:a.b.c.d` from a dual-stack socket is an IPv4 client.
        let ip = ip.to_canonical();
        let record: geoip2::City<'_> = self.reader.lookup(ip).ok()?.decode().ok()??;
        let country = record.country.iso_code.map(str::to_owned);
        let region = record.subdivisions.first().and_then(|subdivision| {
            match (record.country.iso_code, subdivision.iso_code) {
                (Some(country), Some(code)) => Some(format!("{country}-{code}")),
                _ => subdivision.names.english.map(str::to_owned),
            }
        });
        let geo = Geo {
            country,
            region,
            city: record.city.names.english.map(str::to_owned),
        };
        (!geo.is_empty()).then_some(geo)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// The MaxMind test databases in `shared/testdata/geoip/`, which CI checks out beside the
    /// repository. A missing file fails the test: skipping would hide a broken checkout.
    pub(crate) fn test_database(name: &str) -> PathBuf {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/testdata/geoip")
            .join(name);
        assert!(
            path.is_file(),
            "missing geo test database {} (shared/ must sit beside the repository)",
            path.display()
        );
        path
    }

    fn open(name: &str) -> GeoDatabase {
        GeoDatabase::open(&test_database(name)).expect("test database opens")
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("valid address")
    }

    #[test]
    fn geoip2_city_finds_london_and_japan() {
        let db = open("GeoIP2-City-Test.mmdb");
        let london = db
            .lookup(ip("81.2.69.142"))
            .expect("London is in the test data");
        assert_eq!(london.country.as_deref(), Some("GB"));
        assert_eq!(london.region.as_deref(), Some("GB-ENG"));
        assert_eq!(london.city.as_deref(), Some("London"));
        let japan = db
            .lookup(ip("2001:218::1"))
            .expect("Japan is in the test data");
        assert_eq!(japan.country.as_deref(), Some("JP"));
    }

    #[test]
    fn geolite2_city_finds_the_same_places() {
        let db = open("GeoLite2-City-Test.mmdb");
        let london = db
            .lookup(ip("81.2.69.142"))
            .expect("London is in the test data");
        assert_eq!(london.country.as_deref(), Some("GB"));
        assert_eq!(london.city.as_deref(), Some("London"));
        assert_eq!(
            db.lookup(ip("2001:218::1"))
                .and_then(|g| g.country)
                .as_deref(),
            Some("JP")
        );
        // IPv4-mapped IPv6, as a dual-stack listener reports IPv4 peers.
        assert_eq!(
            db.lookup(ip("::ffff:81.2.69.142"))
                .and_then(|g| g.city)
                .as_deref(),
            Some("London")
        );
    }

    #[test]
    fn unknown_and_private_addresses_have_no_location() {
        let db = open("GeoIP2-City-Test.mmdb");
        assert_eq!(db.lookup(ip("10.0.0.1")), None);
        assert_eq!(db.lookup(ip("127.0.0.1")), None);
        assert_eq!(db.lookup(ip("::1")), None);
    }

    #[test]
    fn unusable_databases_are_refused_at_open() {
        let asn = GeoDatabase::open(&test_database("GeoLite2-ASN-Test.mmdb"));
        assert!(
            matches!(asn, Err(GeoDatabaseError::WrongType { ref database_type, .. }) if database_type.contains("ASN")),
            "{:?}",
            asn.err()
        );
        let missing = GeoDatabase::open(Path::new("/nonexistent/GeoLite2-City.mmdb"));
        assert!(matches!(missing, Err(GeoDatabaseError::Open { .. })));
        // Not a database at all.
        let garbage = GeoDatabase::open(&Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"));
        assert!(garbage.is_err());
    }

    #[test]
    fn measurement_protocol_user_location_is_read() {
        let location = serde_json::json!({
            "city": "Mountain View", "region_id": "us-ca", "country_id": "US",
            "subcontinent_id": "021", "continent_id": "019"
        });
        assert_eq!(
            Geo::from_user_location(&location),
            Some(Geo {
                country: Some("US".into()),
                region: Some("US-CA".into()),
                city: Some("Mountain View".into()),
            })
        );
        assert_eq!(Geo::from_user_location(&serde_json::json!({"x": 1})), None);
    }
}
