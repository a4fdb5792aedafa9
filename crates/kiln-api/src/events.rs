//! Server-sent events: live changes of executions (and their stages) and
//! of groups (and their instances), and the tail of a stage's log.
//!
//! Each stream compares what the databases say on every tick with what it
//! sent last, so it never misses a change that a notification would have
//! to carry from deep in the engine, and a client that reconnects gets the
//! whole current state first. Streams end after `max_seconds`: an
//! EventSource reconnects by itself (after the `retry` the stream sets),
//! and a client that forgot one does not hold a connection forever.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use kiln_pipeline::PipelineError;
use tokio::time::Instant;

use crate::AppState;
use crate::ErrorBody;
use crate::pipelines::{MAX_OFFSET, PipelineApiError, StageName, blocking};

/// How often a stream looks for changes.
const TICK: Duration = Duration::from_millis(400);
/// The longest a stream lasts before the client reconnects.
const MAX_SECONDS: u64 = 30;
/// How long an EventSource waits before it reconnects.
const RETRY: Duration = Duration::from_millis(300);

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only this pipeline's executions.
    pipeline: Option<String>,
    /// End the stream after this many seconds (at most 30, the default).
    #[param(minimum = 0, maximum = 30)]
    max_seconds: Option<u64>,
}

/// One server-sent event, as a client's EventSource receives it.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ServerSentEvent {
    /// The event's type.
    event: Option<String>,
    /// Its JSON.
    data: String,
    id: Option<String>,
    /// How long to wait before reconnecting, in milliseconds.
    retry: Option<u64>,
}

fn seconds(given: Option<u64>) -> Result<u64, PipelineApiError> {
    match given {
        Some(s) if s > MAX_SECONDS => Err(PipelineApiError::BadRequest(format!(
            "max_seconds {s}: streams last at most {MAX_SECONDS} seconds (an EventSource reconnects by itself)"
        ))),
        s => Ok(s.unwrap_or(MAX_SECONDS)),
    }
}

/// What one tick saw: each item's key and JSON.
type Snapshot = BTreeMap<String, (&'static str, String)>;

fn snapshot(state: &AppState, pipeline: Option<&str>) -> Result<Snapshot, PipelineError> {
    let mut items = Snapshot::new();
    for e in state.pipelines.executions(pipeline, 100)? {
        let json = serde_json::to_string(&e).unwrap_or_default();
        items.insert(format!("execution/{}", e.id), ("execution", json));
    }
    let groups = state
        .fleet
        .groups()
        .map_err(|e| PipelineError::Io(e.to_string()))?;
    for g in groups {
        let json = serde_json::to_string(&g).unwrap_or_default();
        items.insert(format!("group/{}", g.group.name), ("group", json));
    }
    Ok(items)
}

struct Watch {
    state: AppState,
    pipeline: Option<String>,
    sent: Snapshot,
    queue: VecDeque<Event>,
    started: bool,
    deadline: Instant,
}

/// Live changes: an `execution` event with the whole execution whenever
/// its status or a stage's changes, a `group` event with the whole group
/// (instances, rollouts, load balancer statistics) whenever it changes, a
/// `removed` event with the key of what is gone, and `ready` once the
/// current state has been sent.
#[utoipa::path(get, path = "/v1/events", tag = "events", params(EventsQuery),
    responses((status = 200, content_type = "text/event-stream", body = ServerSentEvent,
        description = "Server-sent events: execution, group, removed, ready")))]
pub async fn events(
    State(state): State<AppState>,
    Query(q): Query<EventsQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, PipelineApiError> {
    let seconds = seconds(q.max_seconds)?;
    let watch = Watch {
        state,
        pipeline: q.pipeline,
        sent: Snapshot::new(),
        queue: VecDeque::from([Event::default().retry(RETRY).comment("kiln events")]),
        started: false,
        deadline: Instant::now() + Duration::from_secs(seconds),
    };
    let stream = futures_util::stream::unfold(watch, |mut w| async move {
        loop {
            if let Some(event) = w.queue.pop_front() {
                return Some((Ok(event), w));
            }
            if w.started {
                if Instant::now() + TICK > w.deadline {
                    return None;
                }
                tokio::time::sleep(TICK).await;
            }
            let (state, pipeline) = (w.state.clone(), w.pipeline.clone());
            let now = match blocking(move || snapshot(&state, pipeline.as_deref())).await {
                Ok(now) => now,
                Err(e) => {
                    if let PipelineApiError::Pipeline(e) = e {
                        tracing::warn!(error = %e, "events: reading the state failed");
                    }
                    continue;
                }
            };
            for (key, (kind, json)) in &now {
                if w.sent.get(key).map(|(_, j)| j) != Some(json) {
                    w.queue
                        .push_back(Event::default().event(*kind).data(json.clone()));
                }
            }
            for key in w.sent.keys().filter(|k| !now.contains_key(*k)) {
                let data = serde_json::json!({ "key": key }).to_string();
                w.queue
                    .push_back(Event::default().event("removed").data(data));
            }
            if !w.started {
                w.queue
                    .push_back(Event::default().event("ready").data("{}"));
                w.started = true;
            }
            w.sent = now;
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    stage: StageName,
    /// Where to start, in bytes of the log.
    #[serde(default)]
    #[param(minimum = 0, maximum = 4_294_967_296u64)]
    offset: u64,
    /// End the stream after this many seconds (at most 30, the default).
    #[param(minimum = 0, maximum = 30)]
    max_seconds: Option<u64>,
}

struct Tail {
    state: AppState,
    id: String,
    stage: &'static str,
    offset: u64,
    done: bool,
    deadline: Instant,
}

/// Follows a stage's log: `log` events carry the new text and the offset
/// to resume from; `end` comes once the stage has finished and its log is
/// all sent.
#[utoipa::path(get, path = "/v1/executions/{id}/logs/stream", tag = "executions",
    params(("id" = String, Path, description = "The execution's id"), StreamQuery),
    responses((status = 200, content_type = "text/event-stream", body = ServerSentEvent,
        description = "Server-sent events: log (JSON text and next_offset), end"),
        (status = 404, description = "No such execution", body = ErrorBody)))]
pub async fn log_stream(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, PipelineApiError> {
    if q.offset > MAX_OFFSET {
        return Err(PipelineApiError::BadRequest(format!(
            "offset {} is past the end of any stage log",
            q.offset
        )));
    }
    let seconds = seconds(q.max_seconds)?;
    state.pipelines.execution(&id)?;
    let tail = Tail {
        state,
        id,
        stage: q.stage.as_str(),
        offset: q.offset,
        done: false,
        deadline: Instant::now() + Duration::from_secs(seconds),
    };
    let stream = futures_util::stream::unfold(tail, |mut t| async move {
        if t.done {
            return None;
        }
        loop {
            let (state, id, stage, offset) = (t.state.clone(), t.id.clone(), t.stage, t.offset);
            let read = blocking(move || {
                // The stage's status first: text written before it
                // finished is then surely in the read that follows.
                let e = state.pipelines.execution(&id)?;
                let finished = e.stage(stage).is_some_and(|s| {
                    !matches!(
                        s.status,
                        kiln_pipeline::StageStatus::Pending
                            | kiln_pipeline::StageStatus::InProgress
                    )
                }) || e.status.is_final();
                let (text, next) = state.pipelines.log(&id, stage, offset)?;
                Ok((finished, text, next))
            })
            .await;
            let (finished, text, next) = match read {
                Ok(r) => r,
                Err(e) => {
                    t.done = true;
                    let message = match e {
                        PipelineApiError::Pipeline(e) => e.to_string(),
                        PipelineApiError::BadRequest(m) => m,
                    };
                    let data = serde_json::json!({ "error": message }).to_string();
                    return Some((Ok(Event::default().event("end").data(data)), t));
                }
            };
            if !text.is_empty() {
                t.offset = next;
                let data = serde_json::json!({ "text": text, "next_offset": next }).to_string();
                return Some((Ok(Event::default().event("log").data(data)), t));
            }
            if finished {
                t.done = true;
                let data = serde_json::json!({ "next_offset": next }).to_string();
                return Some((Ok(Event::default().event("end").data(data)), t));
            }
            if Instant::now() + TICK > t.deadline {
                return None;
            }
            tokio::time::sleep(TICK).await;
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
