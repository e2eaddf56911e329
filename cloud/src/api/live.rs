//! `GET /api/fleet/events`: the fleet page kept live with server-sent events, instead of the
//! whole fleet fetched again every few seconds.
//!
//! ```text
//!  every second: fleet mark (one query: device count, newest last_seen/status, newest alert id)
//!      unchanged ─► nothing (a `: keep-alive` comment every 15 s holds the connection)
//!      changed   ─► alert events stored after the cursor ─► `event: alert`, `id: <cursor>`
//!                ─► the same page again ─► `event: fleet` with the order of the page's ids, the
//!                   counts, and only the rows that differ from what this stream sent last
//! ```
//!
//! The parameters are those of `/api/fleet` ([`super::views::FLEET_PARAMS`]) plus `after`, the
//! alert cursor: alerts stored after it are sent first (absent: only alerts from now on). A
//! client that reconnects passes the last `id` it received and misses nothing. The first
//! `fleet` event carries every row of the page. A browser reads the stream with `fetch` (so the
//! API token goes in the `Authorization` header; `EventSource` cannot send one).
//!
//! Cost: a stream holds no store connection between polls; an idle fleet costs one small
//! query per second per stream, and a change costs one fleet page (ranking 10,000 devices took
//! about 0.35 s in a debug build), so a stream waits four times as long as its last look took
//! before the next, and spends at most a fifth of its time on the store. The stream ends when
//! the client goes away or the server shuts down.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream};
use serde::Serialize;

use super::error::ApiError;
use super::handlers::{params, QueryPairs};
use super::views::{fleet_query, FLEET_PARAMS};
use super::ApiState;
use crate::store::fleetview::{FleetCounts, FleetMark, FleetQuery, FleetRow};

/// How often a stream looks at the store, at least (a slow look makes it wait longer).
pub const POLL: Duration = Duration::from_secs(1);

/// Most alert events sent per poll (a stream far behind catches up over several).
const ALERTS_PER_POLL: u32 = 500;

/// The `fleet` event: what changed on the page.
#[derive(Debug, Serialize)]
struct FleetChange<'a> {
    total: u64,
    offset: u32,
    limit: u32,
    counts: FleetCounts,
    /// The page's device ids, in order.
    order: Vec<&'a str>,
    /// Rows that are new on the page or differ from the last ones sent.
    rows: Vec<&'a FleetRow>,
}

/// One stream's state.
struct Live {
    state: ApiState,
    query: FleetQuery,
    mark: Option<FleetMark>,
    after: i64,
    /// What was last sent per device of the page (its row as JSON).
    sent: HashMap<String, String>,
    order: Vec<String>,
    counts: Option<FleetCounts>,
    pending: VecDeque<Event>,
    first: bool,
    /// Time between looks at the store: [`POLL`], longer when a look is slow.
    pause: Duration,
}

/// `GET /api/fleet/events`.
pub async fn fleet_events(
    State(state): State<ApiState>,
    query: QueryPairs,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let mut names = FLEET_PARAMS.to_vec();
    names.push("after");
    let p = params(query, &names)?;
    let fleet = fleet_query(&p)?;
    let after = match p.time_ms("after") {
        Ok(Some(after)) if after >= 0 => after,
        Ok(None) => state.reader.fleet_mark().await?.alert_id,
        _ => {
            return Err(ApiError::bad_request(
                "after must be a non-negative integer: the id of the last alert event received",
            ))
        }
    };
    let live = Live {
        state,
        query: fleet,
        mark: None,
        after,
        sent: HashMap::new(),
        order: Vec::new(),
        counts: None,
        pending: VecDeque::new(),
        first: true,
        pause: POLL,
    };
    let events = stream::unfold(live, |mut live| async move {
        let event = live.next().await?;
        Some((Ok(event), live))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

impl Live {
    /// The next event; `None` ends the stream (server shutting down).
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            if !self.first {
                let mut shutdown = self.state.shutdown.clone();
                tokio::select! {
                    () = tokio::time::sleep(self.pause) => {}
                    () = async { match shutdown.as_mut() {
                        Some(s) => s.wait().await,
                        None => std::future::pending().await,
                    } } => return None,
                }
            }
            self.first = false;
            let started = std::time::Instant::now();
            let polled = self.poll().await;
            // A stream spends at most a fifth of its time reading the store: a fleet whose page
            // takes 0.3 s to rank is looked at every 1.5 s, not every second.
            self.pause = POLL.max(started.elapsed() * 4);
            if let Err(e) = polled {
                tracing::warn!(error = %e, "live fleet view: store read failed; retrying");
                self.mark = None;
                self.pending
                    .push_back(Event::default().event("error").data(e.message));
            }
        }
    }

    /// Looks at the store once and queues what changed.
    async fn poll(&mut self) -> Result<(), ApiError> {
        let mark = self.state.reader.fleet_mark().await?;
        if self.mark == Some(mark) {
            return Ok(());
        }
        let alerts = self
            .state
            .reader
            .alerts_after(self.after, ALERTS_PER_POLL)
            .await?;
        // A full batch may leave alerts behind: look again at the next poll.
        let caught_up = alerts.len() < ALERTS_PER_POLL as usize;
        for (id, alert) in alerts {
            self.after = id;
            self.pending
                .push_back(json_event("alert", &alert).id(id.to_string()));
        }
        let page = self.state.reader.fleet_page(self.query.clone()).await?;
        let mut sent = HashMap::with_capacity(page.rows.len());
        let mut changed = Vec::new();
        for row in &page.rows {
            let json = serde_json::to_string(row).unwrap_or_default();
            if self.sent.get(&row.device) != Some(&json) {
                changed.push(row);
            }
            sent.insert(row.device.clone(), json);
        }
        let order: Vec<&str> = page.rows.iter().map(|r| r.device.as_str()).collect();
        let same_order = order
            .iter()
            .copied()
            .eq(self.order.iter().map(String::as_str));
        if !changed.is_empty() || !same_order || self.counts != Some(page.counts) {
            self.pending.push_back(json_event(
                "fleet",
                &FleetChange {
                    total: page.total,
                    offset: page.offset,
                    limit: page.limit,
                    counts: page.counts,
                    order: order.clone(),
                    rows: changed,
                },
            ));
        }
        self.order = order.into_iter().map(str::to_owned).collect();
        self.sent = sent;
        self.counts = Some(page.counts);
        // Only once everything above is queued: a failed read polls again.
        self.mark = caught_up.then_some(mark);
        Ok(())
    }
}

fn json_event(name: &str, value: &impl Serialize) -> Event {
    Event::default()
        .event(name)
        .data(serde_json::to_string(value).unwrap_or_default())
}
