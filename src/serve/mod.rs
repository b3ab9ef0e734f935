//! `cascade serve`: an OpenAI-compatible HTTP server over the [`Engine`] (axum on a tokio
//! runtime built here; the engine's scheduler thread does the work).
//!
//! It listens first and loads the models in the background (`/health` answers 503 until they
//! are ready). Each request is submitted with a non-blocking sink that forwards its events to the
//! response; dropping the response (a client that goes away) cancels the request. SIGINT or
//! SIGTERM stops accepting, cancels what runs and exits within [`HARD_EXIT`].

mod error;
mod handlers;
mod metrics;
mod openai;
mod params;
mod request;
mod response;
mod run;
mod sse;
mod stop;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header;
use axum::middleware::{self as mw, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Notify;

use cascade_engine::{CancelToken, Engine, EngineConfig, EngineError};

pub use error::ApiError;
pub use openai::{ModeName, RuleName};
pub use params::{resolve_mode, Limits, ModeDefaults, Settings};
pub use request::{parse_request, read_request};
pub use response::Kind;

/// The longest a shutdown may take before the process exits anyway.
pub const HARD_EXIT: Duration = Duration::from_secs(10);
/// `max_tokens` of a chat request that gives none (the answer runs to its end, up to this).
pub const DEFAULT_MAX_TOKENS: usize = 2048;
/// `max_tokens` of a `/v1/completions` request that gives none (OpenAI's default).
pub const DEFAULT_COMPLETION_TOKENS: usize = 16;

#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub engine: EngineConfig,
    pub host: String,
    pub port: u16,
    /// Requests to `/v1/*` must carry `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// The `model` requests must name.
    pub model_name: String,
    pub max_body_bytes: usize,
    pub defaults: ModeDefaults,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("loading the models: {0}")]
    Load(#[from] EngineError),
    #[error("metrics exporter: {0}")]
    Metrics(#[from] metrics_exporter_prometheus::BuildError),
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Loading,
    Ready,
    ShuttingDown,
}

/// What the handlers share.
pub struct AppState {
    cfg: ServeConfig,
    engine: OnceLock<Arc<Engine>>,
    load_error: Mutex<Option<EngineError>>,
    /// Wakes the shutdown path when loading fails.
    load_failed: Notify,
    shutting_down: AtomicBool,
    /// The engine's shutdown, once begun.
    stopping: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Requests in flight, cancelled at shutdown.
    inflight: Mutex<HashMap<u64, CancelToken>>,
    next_key: AtomicU64,
    next_id: AtomicU64,
    prometheus: PrometheusHandle,
    /// Unix seconds when the server started.
    started: u64,
}

impl AppState {
    fn new(cfg: ServeConfig, prometheus: PrometheusHandle) -> AppState {
        AppState {
            cfg,
            engine: OnceLock::new(),
            load_error: Mutex::new(None),
            load_failed: Notify::new(),
            shutting_down: AtomicBool::new(false),
            stopping: Mutex::new(None),
            inflight: Mutex::new(HashMap::new()),
            next_key: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            prometheus,
            started: response::unix_now(),
        }
    }

    fn phase(&self) -> Phase {
        if self.shutting_down.load(Ordering::Relaxed) {
            Phase::ShuttingDown
        } else if self.engine.get().is_some() {
            Phase::Ready
        } else {
            Phase::Loading
        }
    }

    /// The engine, or 503 while loading or shutting down.
    fn engine(&self) -> Result<Arc<Engine>, ApiError> {
        match self.phase() {
            Phase::Loading => Err(ApiError::loading()),
            Phase::ShuttingDown => Err(ApiError::shutting_down()),
            Phase::Ready => self.engine.get().cloned().ok_or_else(ApiError::loading),
        }
    }

    fn limits(&self, engine: &Engine, kind: response::Kind) -> params::Limits {
        params::Limits {
            context: engine.target().config.context_length,
            default_max_tokens: match kind {
                response::Kind::Chat => DEFAULT_MAX_TOKENS,
                response::Kind::Completion => DEFAULT_COMPLETION_TOKENS,
            },
        }
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Tracks a request for shutdown (cancelled at once when shutdown has begun).
    fn register(&self, cancel: CancelToken) -> u64 {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let mut map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if self.shutting_down.load(Ordering::SeqCst) {
            cancel.cancel();
        }
        map.insert(key, cancel);
        key
    }

    fn unregister(&self, key: u64) {
        let mut map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&key);
    }

    /// Refuses new requests and cancels those in flight.
    fn begin_shutdown(&self) {
        let map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        self.shutting_down.store(true, Ordering::SeqCst);
        for c in map.values() {
            c.cancel();
        }
    }
}

/// Runs the server until SIGINT or SIGTERM (or a failed load).
pub fn run(cfg: ServeConfig) -> Result<(), ServeError> {
    let prometheus = metrics::install()?;
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("cascade-http")
        .enable_all()
        .build()?;
    let out = rt.block_on(serve(cfg, prometheus));
    rt.shutdown_timeout(Duration::from_secs(1));
    out
}

async fn serve(cfg: ServeConfig, prometheus: PrometheusHandle) -> Result<(), ServeError> {
    let addr = format!("{}:{}", cfg.host, cfg.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let local = listener.local_addr()?;
    let state = Arc::new(AppState::new(cfg, prometheus.clone()));
    tokio::spawn(metrics::upkeep(prometheus));
    tokio::spawn(load(state.clone()));
    announce(&state, local);
    let app = router(state.clone());
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal(state.clone()))
        .await?;
    stop_engine(&state).await;
    let failed = state
        .load_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    failed.map_or(Ok(()), |e| Err(ServeError::Load(e)))
}

fn announce(st: &AppState, addr: SocketAddr) {
    eprintln!(
        "cascade serve: model '{}' ({}), loading; listening on http://{addr}",
        st.cfg.model_name,
        st.cfg.engine.target.display()
    );
    println!("listening on http://{addr}");
}

async fn load(st: Arc<AppState>) {
    let cfg = st.cfg.engine.clone();
    let out = tokio::task::spawn_blocking(move || Engine::load(&cfg)).await;
    match out {
        Ok(Ok(engine)) => {
            eprintln!(
                "cascade serve: ready (models loaded in {:.2}s)",
                engine.load_s
            );
            let _ = st.engine.set(Arc::new(engine));
        }
        Ok(Err(e)) => {
            *st.load_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
            st.load_failed.notify_one();
        }
        Err(e) => {
            *st.load_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(
                EngineError::ThreadPool(format!("model loading stopped: {e}")),
            );
            st.load_failed.notify_one();
        }
    }
}

fn router(st: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(handlers::health))
        .route("/metrics", get(handlers::metrics))
        .route("/v1/models", get(handlers::models))
        .route("/v1/chat/completions", post(handlers::chat))
        .route("/v1/completions", post(handlers::completions))
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(mw::from_fn_with_state(st.clone(), front))
        .layer(DefaultBodyLimit::max(st.cfg.max_body_bytes))
        .layer(mw::from_fn(metrics::count))
        .with_state(st)
}

/// Middleware before every route but `/health`: the API key on `/v1/*`, then 503 while the
/// models load or the server shuts down.
async fn front(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if path == "/health" {
        return next.run(req).await;
    }
    if path.starts_with("/v1/") || path == "/v1" {
        if let Some(key) = &st.cfg.api_key {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(bearer);
            if !given.is_some_and(|g| same(g.as_bytes(), key.as_bytes())) {
                return ApiError::unauthorized().into_response();
            }
        }
    }
    if let Err(e) = st.engine() {
        return e.into_response();
    }
    next.run(req).await
}

/// The token of an `Authorization: Bearer TOKEN` header.
fn bearer(v: &str) -> Option<&str> {
    let (scheme, token) = v.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Compares without stopping at the first difference (no timing hint about the key).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Resolves on SIGINT, SIGTERM or a failed load; then refuses new requests, cancels the running
/// ones, starts stopping the engine, and arms the hard exit.
async fn shutdown_signal(st: Arc<AppState>) {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    let (why, code) = tokio::select! {
        _ = tokio::signal::ctrl_c() => ("SIGINT", 0),
        _ = term => ("SIGTERM", 0),
        _ = st.load_failed.notified() => ("the models failed to load", 1),
    };
    eprintln!("cascade serve: {why}: shutting down");
    st.begin_shutdown();
    std::thread::spawn(move || {
        std::thread::sleep(HARD_EXIT);
        eprintln!("cascade serve: shutdown took over {HARD_EXIT:?}; exiting");
        std::process::exit(code);
    });
    if let Some(engine) = st.engine.get().cloned() {
        let stopping = tokio::task::spawn_blocking(move || engine.shutdown());
        *st.stopping.lock().unwrap_or_else(|e| e.into_inner()) = Some(stopping);
    }
}

/// Waits for the scheduler thread that shutdown began stopping.
async fn stop_engine(st: &AppState) {
    let stopping = st.stopping.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(s) = stopping {
        let _ = s.await;
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    /// Status line and body of a raw HTTP/1.1 request.
    fn call(addr: SocketAddr, head: &str) -> (String, String) {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(format!("{head}\r\nConnection: close\r\n\r\n").as_bytes())
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let (status, rest) = out.split_once("\r\n").unwrap();
        let body = rest.split_once("\r\n\r\n").unwrap().1;
        (status.to_string(), body.to_string())
    }

    #[test]
    fn while_loading_health_says_so_and_the_rest_is_503_after_the_key_check() {
        let cfg = ServeConfig {
            engine: EngineConfig::default(),
            host: "127.0.0.1".into(),
            port: 0,
            api_key: Some("k".into()),
            model_name: "m".into(),
            max_body_bytes: 1024,
            defaults: ModeDefaults {
                mode: ModeName::Target,
                rule: None,
                alpha: None,
                draft_len: Default::default(),
                lookup: true,
                draft_model: false,
            },
        };
        let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
            .build_recorder()
            .handle();
        let state = Arc::new(AppState::new(cfg, handle));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let addr = rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(l, router(state)).await });
            addr
        });
        let _serving = std::thread::spawn(move || rt.block_on(std::future::pending::<()>()));
        let (status, body) = call(addr, "GET /health HTTP/1.1\r\nHost: x");
        assert!(status.contains(" 503 "), "{status}");
        assert_eq!(body, r#"{"status":"loading"}"#);
        let (status, _) = call(addr, "GET /v1/models HTTP/1.1\r\nHost: x");
        assert!(status.contains(" 401 "), "{status}");
        for path in ["/v1/models", "/metrics", "/elsewhere"] {
            let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k");
            let (status, body) = call(addr, &head);
            assert!(status.contains(" 503 "), "{path}: {status}");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["error"]["code"], "loading", "{path}: {body}");
        }
    }

    #[test]
    fn bearer_tokens_are_read_and_compared_whole() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd") && !same(b"abc", b"ab"));
    }
}
