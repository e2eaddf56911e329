//! The rules change record over the API: `osprey rules set --api URL` posts each change it
//! made here, and anyone with a token lists them.
//!
//! ```text
//!  POST /api/rules/changes  {ChangeRecord}  ─► checked (id, devices, size) ─► store writer
//!        caller = the name of the token the request presented (auth::Caller), or
//!        "local (no API token)" on a loopback serve without one; never the body's `by`
//!        ─► 201 {"id", "recorded_by", "recorded_ms", "duplicate": false}
//!           200 the same with "duplicate": true when that id was recorded before (a retry)
//!  GET /api/rules/changes?device=&limit=  ─► [{"recorded_by", "recorded_ms", "change": {…}}]
//!                                            newest first
//! ```
//!
//! The record's `by` is what the operator's machine said (`--by`, `$USER@host`); `recorded_by`
//! is who the server let in. Both are kept, so a change made with a shared token still says
//! whose shell made it, and a forged `by` shows next to the token that carried it.

use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use serde_json::Value;

use super::auth::Caller;
use super::error::ApiError;
use super::handlers::{params, QueryPairs};
use super::ApiState;
use crate::clock::now_ms;
use crate::rules::changes::ChangeRecord;
use crate::store::rule_changes::{ChangeRow, ChangeWrite};
use crate::store::{Write, Written};

/// Who a change is recorded as on a serve that asks for no token (loopback only).
pub const NO_TOKEN_CALLER: &str = "local (no API token)";

/// Largest change record accepted: a document (at most 16 KiB) and a result per device of a
/// large fleet.
pub const MAX_RECORD_BYTES: usize = 4 * 1024 * 1024;

/// Most devices a record may name.
pub const MAX_DEVICES: usize = 100_000;

/// What `POST` answers.
#[derive(Debug, Serialize)]
pub struct Recorded {
    /// The change's id.
    pub id: String,
    /// Who it is recorded as.
    pub recorded_by: String,
    /// When serve recorded it.
    pub recorded_ms: i64,
    /// Whether that id had been recorded before (nothing changed).
    pub duplicate: bool,
}

/// One change as listed.
#[derive(Debug, Serialize)]
pub struct Listed {
    /// Who recorded it: the name of the token the request presented.
    pub recorded_by: String,
    /// When serve recorded it.
    pub recorded_ms: i64,
    /// The record as the CLI wrote it.
    pub change: Value,
}

/// What a recorded change did to `device`: its id, time, who made it (as said and as recorded)
/// and the device's result, for the device's rules view.
pub fn for_device(row: &ChangeRow, device: &str) -> Value {
    let change: Value = serde_json::from_str(&row.record).unwrap_or(Value::Null);
    let result = change["results"]
        .as_array()
        .and_then(|results| results.iter().find(|r| r["device"] == device))
        .cloned()
        .unwrap_or(Value::Null);
    serde_json::json!({
        "id": change["id"],
        "time_ms": change["time_ms"],
        "by": change["by"],
        "hash": change["hash"],
        "recorded_by": row.recorded_by,
        "recorded_ms": row.recorded_ms,
        "result": result["result"],
        "field": result["field"],
        "reason": result["reason"],
    })
}

/// Checks a posted record: a well-formed id, valid device ids, a size the store takes.
fn check(record: &ChangeRecord) -> Result<(), ApiError> {
    let id_ok = record.id.len() <= 64
        && !record.id.is_empty()
        && record
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !id_ok {
        return Err(ApiError::bad_request(
            "`id` must be 1 to 64 of A-Z a-z 0-9 - (as `osprey rules set` makes them)",
        ));
    }
    if record.results.len() > MAX_DEVICES {
        return Err(ApiError::bad_request(format!(
            "`results` names {} devices; at most {MAX_DEVICES}",
            record.results.len()
        )));
    }
    if let Some(bad) = record
        .results
        .iter()
        .find(|r| !osprey_protocol::valid_device_id(&r.device))
    {
        return Err(ApiError::bad_request(format!(
            "`results` names an invalid device id {:?}",
            bad.device
        )));
    }
    Ok(())
}

/// `POST /api/rules/changes`: records a change made with `osprey rules set`, as the caller
/// the token names.
pub async fn record(
    State(state): State<ApiState>,
    caller: Option<Extension<Caller>>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Recorded>), ApiError> {
    let writer = state.writer.as_ref().ok_or_else(|| {
        ApiError::not_found(
            "this serve keeps no rules change record (it reads DynamoDB state read-only)",
        )
    })?;
    if body.len() > MAX_RECORD_BYTES {
        return Err(ApiError::bad_request(format!(
            "the record is {} bytes; at most {MAX_RECORD_BYTES}",
            body.len()
        )));
    }
    let record: ChangeRecord = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("not a rules change record: {e}")))?;
    check(&record)?;
    let recorded_by = caller.map_or_else(|| NO_TOKEN_CALLER.to_owned(), |Extension(c)| c.0);
    let recorded_ms = now_ms();
    let mut devices: Vec<String> = record.results.iter().map(|r| r.device.clone()).collect();
    devices.sort_unstable();
    devices.dedup();
    let write = ChangeWrite {
        id: record.id.clone(),
        time_ms: record.time_ms,
        recorded_ms,
        recorded_by: recorded_by.clone(),
        record: String::from_utf8_lossy(&body).into_owned(),
        devices,
    };
    let written = writer.write(vec![Write::RuleChange(write)], None).await?;
    let duplicate = written.first() == Some(&Written::Duplicate);
    tracing::info!(id = %record.id, by = %record.by, recorded_by = %recorded_by, duplicate,
        "rules change recorded");
    let status = if duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        Json(Recorded {
            id: record.id,
            recorded_by,
            recorded_ms,
            duplicate,
        }),
    ))
}

/// `GET /api/rules/changes?device=&limit=`: recorded changes, newest first.
pub async fn list(
    State(state): State<ApiState>,
    query: QueryPairs,
) -> Result<Json<Vec<Listed>>, ApiError> {
    let p = params(query, &["device", "limit"])?;
    let rows = state
        .reader
        .store()?
        .rule_changes(p.device("device")?, p.limit()?)
        .await?;
    Ok(Json(
        rows.into_iter()
            .map(|r| Listed {
                recorded_by: r.recorded_by,
                recorded_ms: r.recorded_ms,
                change: serde_json::from_str(&r.record).unwrap_or(Value::Null),
            })
            .collect(),
    ))
}
