//! The scheduler's metrics, recorded through the `metrics` facade (a server installs an exporter;
//! without one they cost nothing). Names follow vLLM's where vLLM has one, so its dashboards and
//! `vllm bench serve` read them; the rest are `cascade:*`.

/// Gauge: sequences running.
pub const REQUESTS_RUNNING: &str = "vllm:num_requests_running";
/// Gauge: requests waiting for a slot or KV blocks.
pub const REQUESTS_WAITING: &str = "vllm:num_requests_waiting";
/// Counter, label `finished_reason` (`stop`, `length`, `abort`, `error`): requests finished.
pub const REQUESTS_FINISHED: &str = "vllm:request_success_total";
/// Counter: prompt tokens of finished-prefill requests.
pub const PROMPT_TOKENS: &str = "vllm:prompt_tokens_total";
/// Counter: generated tokens.
pub const GENERATION_TOKENS: &str = "vllm:generation_tokens_total";
/// Histograms, seconds.
pub const TTFT: &str = "vllm:time_to_first_token_seconds";
pub const ITL: &str = "vllm:inter_token_latency_seconds";
pub const E2E: &str = "vllm:e2e_request_latency_seconds";
/// Histogram: sequences in one step, and rows (tokens) of its target forward.
pub const BATCH_SEQUENCES: &str = "cascade:batch_sequences";
pub const BATCH_ROWS: &str = "cascade:batch_rows";
/// Gauges: KV blocks of the target's pool in use (held by running sequences), free, and free
/// but holding a cached prefix.
pub const KV_BLOCKS_USED: &str = "cascade:kv_blocks_used";
/// Steps the scheduler has run (a cancelled request's blocks come back within one).
pub const STEPS: &str = "cascade:scheduler_steps";
pub const KV_BLOCKS_FREE: &str = "cascade:kv_blocks_free";
pub const KV_BLOCKS_CACHED: &str = "cascade:kv_blocks_cached";
/// Counters, tokens: prompt tokens looked up in the prefix cache, and found.
pub const PREFIX_QUERIES: &str = "vllm:prefix_cache_queries_total";
pub const PREFIX_HITS: &str = "vllm:prefix_cache_hits_total";
/// Counters: speculative rounds that drafted, tokens drafted, tokens accepted, and accepted per
/// drafted position (label `position`, 0-based).
pub const SPEC_DRAFTS: &str = "vllm:spec_decode_num_drafts";
pub const SPEC_DRAFT_TOKENS: &str = "vllm:spec_decode_num_draft_tokens";
pub const SPEC_ACCEPTED_TOKENS: &str = "vllm:spec_decode_num_accepted_tokens";
pub const SPEC_ACCEPTED_PER_POS: &str = "vllm:spec_decode_num_accepted_tokens_per_pos";

/// Counter, label `kind` (`whole`, `argmax`, `top_k`): logit rows the forwards returned, by how
/// they came back (reduced rows copy back a few values from a device, not the vocabulary).
pub const LOGIT_ROWS: &str = "cascade:logit_rows_total";

/// Histogram, seconds: the scheduler thread's time making one mask under a grammar (a drafted
/// position's, a plain step's, or a verification's rows): llguidance's allowed sets not made
/// beside the forward, and the row masks made of them.
pub const GRAMMAR_MASK: &str = "cascade:grammar_mask_seconds";

/// Histogram buckets (seconds) for the latency histograms, for an exporter to install.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0,
    40.0, 80.0,
];
/// Buckets for the batch histograms.
pub const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Registers every metric's description and starts the counters at zero (call once after
/// installing a recorder).
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(REQUESTS_RUNNING, "Sequences running in the batch.");
    describe_gauge!(
        REQUESTS_WAITING,
        "Requests waiting for a slot or KV blocks."
    );
    describe_counter!(REQUESTS_FINISHED, "Finished requests by finished_reason.");
    describe_counter!(PROMPT_TOKENS, Unit::Count, "Prompt tokens processed.");
    describe_counter!(GENERATION_TOKENS, Unit::Count, "Tokens generated.");
    describe_histogram!(TTFT, Unit::Seconds, "Time to first token.");
    describe_histogram!(ITL, Unit::Seconds, "Time between a stream's tokens.");
    describe_histogram!(E2E, Unit::Seconds, "Request latency, submission to end.");
    describe_histogram!(BATCH_SEQUENCES, "Sequences per scheduler step.");
    describe_histogram!(
        GRAMMAR_MASK,
        Unit::Seconds,
        "Scheduler time making one position's grammar mask."
    );
    describe_counter!(
        LOGIT_ROWS,
        Unit::Count,
        "Logit rows returned, by kind (whole, argmax, top_k)."
    );
    describe_histogram!(BATCH_ROWS, "Rows of a step's target forward.");
    describe_gauge!(KV_BLOCKS_USED, "KV blocks held by running sequences.");
    describe_gauge!(KV_BLOCKS_FREE, "KV blocks free (cached prefixes included).");
    describe_gauge!(
        KV_BLOCKS_CACHED,
        "Free KV blocks that hold a reusable prefix."
    );
    describe_counter!(
        PREFIX_QUERIES,
        Unit::Count,
        "Prompt tokens looked up in the prefix cache."
    );
    describe_counter!(
        PREFIX_HITS,
        Unit::Count,
        "Prompt tokens found in the prefix cache."
    );
    describe_counter!(SPEC_DRAFTS, "Speculative rounds that drafted tokens.");
    describe_counter!(SPEC_DRAFT_TOKENS, Unit::Count, "Tokens drafted.");
    describe_counter!(
        SPEC_ACCEPTED_TOKENS,
        Unit::Count,
        "Drafted tokens accepted."
    );
    describe_counter!(
        SPEC_ACCEPTED_PER_POS,
        Unit::Count,
        "Accepted tokens per drafted position."
    );
    // Present from the start, as vLLM's are (a dashboard or a scraper diffing counters needs the
    // series before the first speculative round).
    for c in [
        PROMPT_TOKENS,
        GENERATION_TOKENS,
        PREFIX_QUERIES,
        PREFIX_HITS,
        SPEC_DRAFTS,
        SPEC_DRAFT_TOKENS,
        SPEC_ACCEPTED_TOKENS,
    ] {
        metrics::counter!(c).increment(0);
    }
    for g in [
        REQUESTS_RUNNING,
        REQUESTS_WAITING,
        KV_BLOCKS_USED,
        KV_BLOCKS_CACHED,
    ] {
        metrics::gauge!(g).set(0.0);
    }
}
