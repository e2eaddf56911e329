//! `osprey dead-letters`: lists the payloads a store could not apply, from its SQLite file
//! (opened read-only, so it works beside a running `osprey serve`) or from a running serve's
//! `GET /api/dead-letters`, as a table or JSON.
//!
//! ```text
//!  --db FILE ──► store::deadletter::list ──┐
//!                                          ├─► [DeadLetterRow] ─► table | --json
//!  --api URL ──► GET /api/dead-letters ────┘
//! ```

use std::io::Write;
use std::path::PathBuf;

use rusqlite::{Connection, OpenFlags};

use crate::fleet::api::{ApiAccess, ApiReader};
use crate::fleet::FleetError;
use crate::store::{deadletter, schema, DeadLetterFilter, DeadLetterRow};

/// Where to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetterSource {
    /// A store's SQLite file.
    Db(PathBuf),
    /// A running serve's API.
    Api {
        /// Its base URL (`http://` or `https://host:port`).
        url: String,
        /// Its token and CA, if it needs them.
        access: ApiAccess,
    },
}

/// Why the dead letters could not be listed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeadLettersError {
    /// The database file could not be opened or read.
    #[error("cannot read dead letters from {path}: {cause}")]
    Db {
        /// The file.
        path: PathBuf,
        /// SQLite's error.
        cause: rusqlite::Error,
    },
    /// The database has another schema version.
    #[error(
        "{path} has schema version {found}, this osprey reads version {expected}; \
         start this osprey's serve on it once to upgrade it"
    )]
    Schema {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: i64,
        /// Ours.
        expected: i64,
    },
    /// The API could not be read.
    #[error(transparent)]
    Api(#[from] FleetError),
    /// The API answered something that is not a list of dead letters.
    #[error("the API's answer is not a list of dead letters: {0}")]
    ApiBody(String),
    /// Writing the output failed.
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

/// Reads one page of dead letters from `source`.
pub async fn fetch(
    source: &DeadLetterSource,
    filter: &DeadLetterFilter,
) -> Result<Vec<DeadLetterRow>, DeadLettersError> {
    match source {
        DeadLetterSource::Db(path) => read_db(path, filter),
        DeadLetterSource::Api { url, access } => {
            let mut query = format!("/api/dead-letters?limit={}", filter.limit);
            if let Some(before) = filter.before {
                query.push_str(&format!("&before={before}"));
            }
            if filter.payload {
                query.push_str("&payload=hex");
            }
            let json = ApiReader::with_access(url, access)?.get(&query).await?;
            let rows: Vec<ApiRow> = serde_json::from_value(json)
                .map_err(|e| DeadLettersError::ApiBody(e.to_string()))?;
            Ok(rows.into_iter().map(ApiRow::into_row).collect())
        }
    }
}

/// The JSON shape of a row, as [`DeadLetterRow`] serializes it.
#[derive(serde::Deserialize)]
struct ApiRow {
    id: i64,
    received_ms: i64,
    source: String,
    reason: String,
    size: u64,
    stored: u64,
    payload_hex: Option<String>,
}

impl ApiRow {
    fn into_row(self) -> DeadLetterRow {
        DeadLetterRow {
            id: self.id,
            received_ms: self.received_ms,
            source: self.source,
            reason: self.reason,
            size: self.size,
            stored: self.stored,
            payload_hex: self.payload_hex,
        }
    }
}

fn read_db(
    path: &std::path::Path,
    filter: &DeadLetterFilter,
) -> Result<Vec<DeadLetterRow>, DeadLettersError> {
    let db_err = |cause| DeadLettersError::Db {
        path: path.to_owned(),
        cause,
    };
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(db_err)?;
    schema::configure(&conn).map_err(db_err)?;
    let found: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(db_err)?;
    if found != schema::SCHEMA_VERSION {
        return Err(DeadLettersError::Schema {
            path: path.to_owned(),
            found,
            expected: schema::SCHEMA_VERSION,
        });
    }
    deadletter::list(&conn, filter).map_err(db_err)
}

/// Writes `rows` as JSON (one array) or as a table.
pub fn print(
    rows: &[DeadLetterRow],
    json: bool,
    out: &mut impl Write,
) -> Result<(), DeadLettersError> {
    if json {
        serde_json::to_writer_pretty(&mut *out, rows).map_err(std::io::Error::from)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:>8}  {:<20}  {:>8}  {:<44}  REASON",
        "ID", "RECEIVED (UTC)", "BYTES", "SOURCE"
    )?;
    for r in rows {
        let bytes = if r.stored < r.size {
            format!("{}*", r.size)
        } else {
            r.size.to_string()
        };
        writeln!(
            out,
            "{:>8}  {:<20}  {:>8}  {:<44}  {}",
            r.id,
            utc(r.received_ms),
            bytes,
            r.source,
            r.reason
        )?;
        if let Some(hex) = &r.payload_hex {
            writeln!(out, "          payload: {hex}")?;
        }
    }
    if rows.iter().any(|r| r.stored < r.size) {
        writeln!(out, "* payload cut; the full size is shown")?;
    }
    Ok(())
}

/// `ms` since the Unix epoch as `YYYY-MM-DD hh:mm:ss` UTC.
pub fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times_are_civil() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_700_000_040_000), "2023-11-14 22:14:00");
        assert_eq!(utc(951_825_600_000), "2000-02-29 12:00:00");
        assert_eq!(utc(-1_000), "1969-12-31 23:59:59");
    }

    #[test]
    fn a_cut_payload_is_marked_in_the_table() {
        let row = DeadLetterRow {
            id: 7,
            received_ms: 0,
            source: "mqtt:dt/osprey/a/telemetry".into(),
            reason: "bad".into(),
            size: 20_000,
            stored: 16_384,
            payload_hex: Some("ff".into()),
        };
        let mut out = Vec::new();
        print(&[row], false, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("20000*"), "{text}");
        assert!(text.contains("payload: ff"), "{text}");
        assert!(text.contains("payload cut"), "{text}");
    }
}
