//! `GET /api/dead-letters`: the payloads the pipeline could not apply, newest first.
//!
//! Query: `limit` (1 to 10 000, default 100), `before` (a row id: the page after the one
//! whose last row had that id), `payload=hex` (add each kept payload as hex; a payload over
//! the store's per-payload cap was cut, so then `stored < size`). Rows are
//! [`crate::store::DeadLetterRow`]; the store's rules (stored once per source position,
//! bounded, expired) are in [`crate::store::deadletter`].

use axum::extract::{Query, State};
use axum::Json;

use super::error::ApiError;
use super::handlers::QueryPairs;
use super::ApiState;
use crate::store::{DeadLetterFilter, DeadLetterRow};

/// `GET /api/dead-letters`.
pub async fn dead_letters(
    State(state): State<ApiState>,
    query: QueryPairs,
) -> Result<Json<Vec<DeadLetterRow>>, ApiError> {
    let Query(pairs) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let p = super::params::Params::parse(pairs, &["limit", "before", "payload"])?;
    let payload = match p.text("payload").as_deref() {
        None => false,
        Some("hex") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "payload must be hex (or absent), got {other:?}"
            )))
        }
    };
    let before = p
        .text("before")
        .map(|v| {
            v.parse::<i64>().map_err(|_| {
                ApiError::bad_request(format!(
                    "before must be a dead letter id (an integer), got {v:?}"
                ))
            })
        })
        .transpose()?;
    let filter = DeadLetterFilter {
        before,
        limit: p.limit()?,
        payload,
    };
    Ok(Json(state.reader.store()?.dead_letters(filter).await?))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use serde_json::Value;
    use tower::ServiceExt;

    use crate::api::{router, ApiState};
    use crate::pipeline::{Origin, Pipeline};
    use crate::store::Store;

    async fn get(router: &axum::Router, uri: &str) -> (StatusCode, Value) {
        let response = router
            .clone()
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn lists_pages_and_shows_payloads_on_request() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("osprey.db")).unwrap();
        let pipeline = Pipeline::new(store.writer());
        for junk in [&b"one"[..], b"two", b"three"] {
            pipeline
                .ingest(junk, Origin::Direct("t".into()))
                .await
                .unwrap();
        }
        let router = router(ApiState::new(store.reader(), pipeline.stats_handle()));
        let (status, json) = get(&router, "/api/dead-letters?limit=2").await;
        assert_eq!(status, StatusCode::OK, "{json}");
        let rows = json.as_array().unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0]["size"], 5);
        assert_eq!(rows[0]["source"], "direct:t");
        assert!(rows[0].get("payload_hex").is_none());
        assert!(rows[0]["reason"].as_str().unwrap().len() > 3);
        let last = rows[1]["id"].as_i64().unwrap();
        let (_, json) = get(
            &router,
            &format!("/api/dead-letters?before={last}&payload=hex"),
        )
        .await;
        assert_eq!(json[0]["payload_hex"], hex::encode(b"one"), "{json}");
        assert_eq!(json.as_array().unwrap().len(), 1);
        for bad in ["payload=base64", "before=x", "limit=0", "colour=red"] {
            let (status, json) = get(&router, &format!("/api/dead-letters?{bad}")).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {json}");
        }
        let (_, stats) = get(&router, "/api/stats").await;
        assert_eq!(stats["maintenance"]["dead_letters_evicted"], 0, "{stats}");
    }
}
