//! The station dashboard: a small web UI (and the JSON API behind it) served by `tirpd` on the
//! box's network, showing the radiographer the newest studies with their flag, probability,
//! patient name/ID and heat-map, updated live through server-sent events.
//!
//! Routes (every one needs the dashboard token, see [`serve`]):
//!
//! | route                              | what                                              |
//! |------------------------------------|---------------------------------------------------|
//! | `GET /`                            | newest studies, newest first, live                |
//! | `GET /studies/{id}`                | one study: big heat-map, all fields, live         |
//! | `GET /status`                      | board, device, firmware, bundle, queue, latency…  |
//! | `GET /app.js`, `GET /app.css`      | the pages' script and style (no inline script)    |
//! | `GET /api/studies`                 | `[StudyView]`, newest first                       |
//! | `GET /api/studies/{id}`            | `StudyView` (404 `{"error": …}` if unknown)       |
//! | `GET /api/studies/{id}/heatmap.png`| the overlay PNG (404 if none)                     |
//! | `GET /api/status`                  | `StatusView` + `latency` + `studies_kept` …       |
//! | `GET /api/events`                  | SSE: `event: study` + `StudyView` JSON per publish|
//!
//! Patient identity (name, ID, accession) leaves the box only through this dashboard: the
//! request log on stderr carries the method, the path without its query string and the status.

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// How many studies the dashboard keeps when not told otherwise.
pub const DEFAULT_HISTORY: usize = 200;
/// The cookie that `?token=` sets for the page's own `fetch`/`EventSource` calls.
pub const SESSION_COOKIE: &str = "tirp_dash";
/// At most this many live (SSE) clients at once; more get 503.
pub const MAX_LIVE_CLIENTS: usize = 32;
/// How long after `stop` open connections get to finish before they are cut.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(150);
/// How often the server looks at the `stop` flag.
const STOP_POLL: Duration = Duration::from_millis(50);

const INDEX_HTML: &str = include_str!("index.html");
const STUDY_HTML: &str = include_str!("study.html");
const STATUS_HTML: &str = include_str!("status.html");
const APP_JS: &str = include_str!("app.js");
const APP_CSS: &str = include_str!("app.css");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Where a study is in the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StudyState {
    Queued,
    Done,
    Failed,
}

/// One study (one received instance) as the dashboard shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyView {
    /// Stable id of the instance on the box (hex).
    pub id: String,
    /// First byte of the C-STORE (or hot-folder pick-up).
    pub received_unix_ms: u64,
    pub done_unix_ms: Option<u64>,
    pub state: StudyState,
    /// Shown ONLY on the dashboard (the station needs it to match the flag).
    pub patient_name: Option<String>,
    pub patient_id: Option<String>,
    pub accession: Option<String>,
    pub body_part: Option<String>,
    /// `"dicom:DRSTATION"` or `"hotfolder"`.
    pub source: String,
    /// E.g. `"suspected primary bone tumour"`.
    pub flag: Option<String>,
    pub pbt: Option<bool>,
    pub probability: Option<f32>,
    pub threshold: Option<f32>,
    /// `"name version"`.
    pub bundle: Option<String>,
    /// `"cpu"` / `"cuda"`.
    pub backend: Option<String>,
    /// First byte → flag.
    pub latency_ms: Option<f64>,
    /// Why it failed (no patient data).
    pub error: Option<String>,
    pub has_heatmap: bool,
}

/// What the status page shows; produced on demand by the daemon's callback.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StatusView {
    pub device_id: String,
    pub board: String,
    pub firmware_version: String,
    pub bundle: Option<String>,
    pub slot: Option<String>,
    pub backend: Option<String>,
    /// `"AE@addr:port"`.
    pub dicom: Option<String>,
    pub queue_depth: u64,
    pub outbox_depth: u64,
    pub uptime_s: u64,
    /// Counters from other services (DICOM stats etc.).
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// First byte → flag latency over the done studies kept (nearest-rank percentiles).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// How many done studies with a latency the figures are over.
    pub n: usize,
}

/// Where and how the dashboard serves.
#[derive(Debug, Clone)]
pub struct DashboardConfig {
    pub addr: SocketAddr,
    /// The bearer token every request must carry (or `?token=` once, which sets a cookie).
    pub token: String,
    /// At most this many studies are listed by `GET /api/studies` (newest first); default 200.
    pub history: usize,
}

impl DashboardConfig {
    pub fn new(addr: SocketAddr, token: impl Into<String>) -> Self {
        DashboardConfig {
            addr,
            token: token.into(),
            history: DEFAULT_HISTORY,
        }
    }
}

struct Entry {
    /// Order of first publication (ties of `received_unix_ms`).
    seq: u64,
    study: StudyView,
    heatmap: Option<Arc<Vec<u8>>>,
}

#[derive(Default)]
struct Inner {
    next_seq: u64,
    /// Newest first by (`received_unix_ms`, `seq`).
    entries: Vec<Entry>,
}

/// The studies the dashboard shows and the live clients to tell about them. `Send + Sync`:
/// the daemon publishes from its worker threads while [`serve`] reads.
pub struct Dashboard {
    history: usize,
    status: Box<dyn Fn() -> StatusView + Send + Sync>,
    inner: Mutex<Inner>,
    /// Each published study, serialized once for every live client.
    events: broadcast::Sender<Arc<str>>,
}

impl std::fmt::Debug for Dashboard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dashboard")
            .field("history", &self.history)
            .field("studies", &self.lock().entries.len())
            .field("live_clients", &self.live_clients())
            .finish_non_exhaustive()
    }
}

impl Dashboard {
    /// Keeps the newest `history` studies (at least 1); `status` is called for every status
    /// request (keep it cheap and non-blocking).
    pub fn new(history: usize, status: Box<dyn Fn() -> StatusView + Send + Sync>) -> Dashboard {
        let (events, _) = broadcast::channel(256);
        Dashboard {
            history: history.max(1),
            status,
            inner: Mutex::new(Inner::default()),
            events,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves consistent data: carry on.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds or replaces (by id) a study and notifies live clients within a second.
    /// `heatmap_png` is the overlay PNG (served at `/api/studies/{id}/heatmap.png`); a
    /// replacement without one keeps no heat-map. `has_heatmap` is set from `heatmap_png`,
    /// so the pages never ask for a PNG that is not there.
    pub fn publish(&self, mut study: StudyView, heatmap_png: Option<Arc<Vec<u8>>>) {
        study.has_heatmap = heatmap_png.is_some();
        let json: Arc<str> = match serde_json::to_string(&study) {
            Ok(j) => j.into(),
            Err(_) => return, // a StudyView always serializes (non-finite floats become null)
        };
        {
            let mut inner = self.lock();
            if let Some(e) = inner.entries.iter_mut().find(|e| e.study.id == study.id) {
                e.study = study;
                e.heatmap = heatmap_png;
            } else {
                let seq = inner.next_seq;
                inner.next_seq += 1;
                inner.entries.push(Entry {
                    seq,
                    study,
                    heatmap: heatmap_png,
                });
            }
            inner.entries.sort_by(|a, b| {
                (b.study.received_unix_ms, b.seq).cmp(&(a.study.received_unix_ms, a.seq))
            });
            inner.entries.truncate(self.history);
        }
        // No live client is not an error.
        let _ = self.events.send(json);
    }

    /// Latency percentiles (p50, p95, max, n) over the done studies kept.
    pub fn latency(&self) -> LatencySummary {
        let mut v: Vec<f64> = self
            .lock()
            .entries
            .iter()
            .filter(|e| e.study.state == StudyState::Done)
            .filter_map(|e| e.study.latency_ms)
            .filter(|l| l.is_finite() && *l >= 0.0)
            .collect();
        v.sort_by(f64::total_cmp);
        let rank = |p: f64| -> Option<f64> {
            if v.is_empty() {
                return None;
            }
            let r = ((p / 100.0) * v.len() as f64).ceil() as usize;
            Some(v[r.clamp(1, v.len()) - 1])
        };
        LatencySummary {
            p50_ms: rank(50.0),
            p95_ms: rank(95.0),
            max_ms: v.last().copied(),
            n: v.len(),
        }
    }

    /// The studies kept, newest first.
    pub fn studies(&self) -> Vec<StudyView> {
        self.lock()
            .entries
            .iter()
            .map(|e| e.study.clone())
            .collect()
    }

    /// One study by id.
    pub fn study(&self, id: &str) -> Option<StudyView> {
        self.lock()
            .entries
            .iter()
            .find(|e| e.study.id == id)
            .map(|e| e.study.clone())
    }

    /// A study's heat-map PNG.
    pub fn heatmap(&self, id: &str) -> Option<Arc<Vec<u8>>> {
        self.lock()
            .entries
            .iter()
            .find(|e| e.study.id == id)
            .and_then(|e| e.heatmap.clone())
    }

    /// How many clients are listening on `/api/events` right now.
    pub fn live_clients(&self) -> usize {
        self.events.receiver_count()
    }

    /// The daemon's status callback.
    pub fn status(&self) -> StatusView {
        (self.status)()
    }
}

#[derive(Clone)]
struct App {
    dash: Arc<Dashboard>,
    token: Arc<str>,
    /// `hex(sha256(domain ‖ token))`: what the session cookie carries (not the token itself).
    session: Arc<str>,
    list_limit: usize,
    /// Becomes `true` on stop: live streams end so the graceful shutdown can finish.
    shutdown: watch::Receiver<bool>,
}

fn session_value(token: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"tirp-dashboard-session\0");
    h.update(token.as_bytes());
    hex::encode(h.finalize())
}

/// Constant-time equality (in the inputs' contents and lengths: both are hashed first).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let (ha, hb) = (Sha256::digest(a), Sha256::digest(b));
    let diff = ha
        .iter()
        .zip(hb.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[derive(PartialEq)]
enum Auth {
    Denied,
    /// By header or cookie.
    Ok,
    /// By `?token=`: the response sets the session cookie.
    Query,
}

fn authorize(app: &App, req: &Request) -> Auth {
    let headers = req.headers();
    let mut ok = false;
    for v in headers.get_all(header::AUTHORIZATION) {
        if let Ok(v) = v.to_str()
            && let Some((scheme, cred)) = v.trim().split_once(' ')
            && scheme.eq_ignore_ascii_case("bearer")
        {
            ok |= ct_eq(cred.trim().as_bytes(), app.token.as_bytes());
        }
    }
    for v in headers.get_all(header::COOKIE) {
        if let Ok(v) = v.to_str() {
            for c in v.split(';') {
                if let Some((name, value)) = c.trim().split_once('=')
                    && name == SESSION_COOKIE
                {
                    ok |= ct_eq(value.trim().as_bytes(), app.session.as_bytes());
                }
            }
        }
    }
    if ok {
        return Auth::Ok;
    }
    if let Ok(Query(q)) = Query::<HashMap<String, String>>::try_from_uri(req.uri())
        && let Some(t) = q.get("token")
        && ct_eq(t.as_bytes(), app.token.as_bytes())
    {
        return Auth::Query;
    }
    Auth::Denied
}

fn set_security_headers(h: &mut HeaderMap) {
    let s = HeaderValue::from_static;
    h.insert(header::CACHE_CONTROL, s("no-store"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, s("nosniff"));
    h.insert(header::CONTENT_SECURITY_POLICY, s(CSP));
    h.insert(header::X_FRAME_OPTIONS, s("DENY"));
    h.insert(header::REFERRER_POLICY, s("no-referrer"));
    h.insert("cross-origin-resource-policy", s("same-origin"));
}

/// The path as the request log shows it: no query string (where `?token=` is), at most 200
/// characters.
fn log_path(uri: &axum::http::Uri) -> String {
    uri.path().chars().take(200).collect()
}

/// The request log event: method, path (see [`log_path`]), status. Nothing else: no headers,
/// no client address, no study content. Refusals and errors (4xx, 5xx) at `warn`.
fn access_log(method: &axum::http::Method, uri: &axum::http::Uri, status: StatusCode) {
    let path = log_path(uri);
    let (method, status) = (method.as_str(), status.as_u16());
    if status >= 400 {
        tracing::warn!(method, path, status, "dashboard request");
    } else {
        tracing::info!(method, path, status, "dashboard request");
    }
}

/// Token check, security headers and the request log.
async fn guard(State(app): State<App>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let auth = authorize(&app, &req);
    let mut resp = match auth {
        Auth::Denied => (
            StatusCode::UNAUTHORIZED,
            [
                (header::WWW_AUTHENTICATE, "Bearer"),
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            ],
            "401 Unauthorized: this dashboard needs its token \
             (Authorization: Bearer TOKEN, or open it once with ?token=TOKEN).\n",
        )
            .into_response(),
        Auth::Ok | Auth::Query => next.run(req).await,
    };
    if auth == Auth::Query
        && let Ok(v) = HeaderValue::from_str(&format!(
            "{SESSION_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict",
            app.session
        ))
    {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    set_security_headers(resp.headers_mut());
    access_log(&method, &uri, resp.status());
    resp
}

fn html(body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

fn not_found(what: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(serde_json::json!({ "error": format!("no such {what}") })),
    )
        .into_response()
}

async fn api_studies(State(app): State<App>) -> Response {
    let mut v = app.dash.studies();
    v.truncate(app.list_limit);
    axum::Json(v).into_response()
}

async fn api_study(State(app): State<App>, Path(id): Path<String>) -> Response {
    match app.dash.study(&id) {
        Some(s) => axum::Json(s).into_response(),
        None => not_found("study"),
    }
}

async fn api_heatmap(State(app): State<App>, Path(id): Path<String>) -> Response {
    match app.dash.heatmap(&id) {
        Some(png) => ([(header::CONTENT_TYPE, "image/png")], png.as_ref().clone()).into_response(),
        None => not_found("heat-map"),
    }
}

/// What `GET /api/status` returns: the daemon's [`StatusView`] fields plus the dashboard's.
#[derive(Serialize)]
struct StatusJson {
    #[serde(flatten)]
    status: StatusView,
    latency: LatencySummary,
    studies_kept: usize,
    live_clients: usize,
}

async fn api_status(State(app): State<App>) -> Response {
    let status = app.dash.status();
    axum::Json(StatusJson {
        status,
        latency: app.dash.latency(),
        studies_kept: app.dash.lock().entries.len(),
        live_clients: app.dash.live_clients(),
    })
    .into_response()
}

async fn api_events(State(app): State<App>) -> Response {
    if app.dash.live_clients() >= MAX_LIVE_CLIENTS {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "too many live dashboard clients\n",
        )
            .into_response();
    }
    // Subscribed before the response goes out: a study published once the client has the
    // headers reaches it.
    let rx = app.dash.events.subscribe();
    let stream = futures_util::stream::unfold(
        (rx, app.shutdown.clone()),
        |(mut rx, mut shutdown)| async move {
            let r = tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return None,
                r = rx.recv() => r,
            };
            let ev = match r {
                Ok(json) => Event::default().event("study").data(&*json),
                // Missed some: the page refetches the list.
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    Event::default().event("resync").data("{}")
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            Some((Ok::<Event, Infallible>(ev), (rx, shutdown)))
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

fn router(app: App) -> Router {
    Router::new()
        .route("/", get(|| async { html(INDEX_HTML) }))
        .route("/studies/{id}", get(|| async { html(STUDY_HTML) }))
        .route("/status", get(|| async { html(STATUS_HTML) }))
        .route(
            "/app.js",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
                    APP_JS,
                )
            }),
        )
        .route(
            "/app.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], APP_CSS) }),
        )
        // Browsers ask for it on every page: no icon, and no 404 in the log.
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/api/studies", get(api_studies))
        .route("/api/studies/{id}", get(api_study))
        .route("/api/studies/{id}/heatmap.png", get(api_heatmap))
        .route("/api/status", get(api_status))
        .route("/api/events", get(api_events))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "404 Not Found\n",
            )
        })
        .layer(middleware::from_fn_with_state(app.clone(), guard))
        .with_state(app)
}

/// Serves on its own thread with its own small tokio runtime (2 worker threads max) until
/// `stop` is set; returns the bound address (`addr` may have port 0). Live streams end and
/// the server stops within ~300 ms of `stop`.
///
/// Every route needs the token: `Authorization: Bearer TOKEN`, or `?token=TOKEN` (which sets
/// an HttpOnly SameSite=Strict session cookie for the page's own calls). An empty token is
/// refused (`InvalidInput`).
pub fn serve(
    dash: Arc<Dashboard>,
    cfg: DashboardConfig,
    stop: Arc<AtomicBool>,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    if cfg.token.trim().is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the dashboard needs a non-empty token",
        ));
    }
    let listener = std::net::TcpListener::bind(cfg.addr)?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(2)
        .thread_name("tirpd-dashboard-rt")
        .enable_io()
        .enable_time()
        .build()?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let app = App {
        dash,
        session: session_value(&cfg.token).into(),
        token: cfg.token.into(),
        list_limit: if cfg.history == 0 {
            DEFAULT_HISTORY
        } else {
            cfg.history
        },
        shutdown: shutdown_rx.clone(),
    };
    let handle = std::thread::Builder::new()
        .name("tirpd-dashboard".into())
        .spawn(move || {
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(addr = %addr, error = e.to_string(), "dashboard: cannot serve");
                        return;
                    }
                };
                let signal = async move {
                    while !stop.load(Ordering::SeqCst) {
                        tokio::time::sleep(STOP_POLL).await;
                    }
                    let _ = shutdown_tx.send(true);
                };
                let server = axum::serve(listener, router(app)).with_graceful_shutdown(signal);
                let mut stopped = shutdown_rx;
                let deadline = async move {
                    let _ = stopped.wait_for(|s| *s).await;
                    tokio::time::sleep(SHUTDOWN_GRACE).await;
                };
                tokio::select! {
                    r = std::future::IntoFuture::into_future(server) => {
                        if let Err(e) = r {
                            tracing::error!(error = e.to_string(), "dashboard: server error");
                        }
                    }
                    _ = deadline => tracing::info!("dashboard: closing connections still open at stop"),
                }
            });
            rt.shutdown_timeout(Duration::from_millis(50));
        })?;
    Ok((addr, handle))
}

#[cfg(test)]
mod tests;
