//! `/metrics`: the Prometheus exporter behind the `metrics` facade (the engine's scheduler
//! metrics and the server's own HTTP counters).

use std::time::Duration;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

use cascade_engine::scheduler::metrics as m;

/// Counter, label `status`: HTTP responses by status code.
pub const HTTP_REQUESTS: &str = "cascade:http_requests_total";
/// Gauge: generation requests whose response is still being produced or streamed.
pub const IN_FLIGHT: &str = "cascade:http_requests_in_flight";

/// Installs the global recorder (once per process) and describes every metric. Counters get
/// Prometheus' `_total` suffix where their name lacks it, as vLLM's do
/// (`vllm:spec_decode_num_drafts_total`); names keep their `:`.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    let mut b = PrometheusBuilder::new().with_recommended_naming(true);
    for name in [m::TTFT, m::ITL, m::E2E] {
        b = b.set_buckets_for_metric(Matcher::Full(name.into()), m::LATENCY_BUCKETS)?;
    }
    for name in [m::BATCH_SEQUENCES, m::BATCH_ROWS] {
        b = b.set_buckets_for_metric(Matcher::Full(name.into()), m::BATCH_BUCKETS)?;
    }
    let handle = b.install_recorder()?;
    m::describe();
    metrics::describe_counter!(HTTP_REQUESTS, "HTTP responses by status code.");
    metrics::describe_gauge!(IN_FLIGHT, "Generation requests being answered.");
    metrics::gauge!(IN_FLIGHT).set(0.0);
    Ok(handle)
}

/// Drains the histograms' buckets now and then (the exporter leaves upkeep to its user).
pub async fn upkeep(handle: PrometheusHandle) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        handle.run_upkeep();
    }
}

/// Middleware: counts responses by status.
pub async fn count(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    metrics::counter!(HTTP_REQUESTS, "status" => resp.status().as_str().to_owned()).increment(1);
    resp
}
