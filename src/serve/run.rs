//! One request in flight: submitted to the engine with a non-blocking sink, its events read
//! back as text pieces (stop strings applied) and one outcome. Dropping a [`Run`] cancels the
//! request (its [`Ticket`] holds the cancel guard), which is how a client that disconnects stops
//! its generation.

use std::sync::Arc;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use cascade_engine::{
    CancelGuard, CancelToken, Completion, Engine, EngineError, Event, Request, StopReason,
};

use super::error::ApiError;
use super::metrics::IN_FLIGHT;
use super::stop::StopMatcher;
use super::AppState;

/// What reading a request yields: released text, then its end.
#[derive(Debug)]
pub enum Piece {
    Text(String),
    End(Box<Outcome>),
}

#[derive(Debug)]
pub struct Outcome {
    /// `stop` or `length`.
    pub finish: &'static str,
    pub completion: Completion,
    /// Tokens generated (up to the stop string when one cut the text).
    pub completion_tokens: usize,
}

/// The server's hold on a request: registered for shutdown, counted in flight, cancelled when
/// dropped.
pub struct Ticket {
    state: Arc<AppState>,
    key: u64,
    _guard: CancelGuard,
}

impl Ticket {
    fn new(state: Arc<AppState>, cancel: &CancelToken) -> Ticket {
        let key = state.register(cancel.clone());
        metrics::gauge!(IN_FLIGHT).increment(1.0);
        Ticket {
            state,
            key,
            _guard: cancel.guard(),
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.state.unregister(self.key);
        metrics::gauge!(IN_FLIGHT).decrement(1.0);
    }
}

pub struct Run {
    rx: UnboundedReceiver<Event>,
    cancel: CancelToken,
    stops: StopMatcher,
    /// Tokens received so far.
    tokens: usize,
    /// The end, kept while the held-back text goes out first.
    ended: Option<Box<Outcome>>,
    _ticket: Ticket,
}

impl Run {
    /// Submits `req` (tokenizing its prompt off the async threads).
    pub async fn start(
        state: &Arc<AppState>,
        engine: Arc<Engine>,
        req: Request,
        stops: Vec<String>,
    ) -> Result<Run, ApiError> {
        let (tx, rx) = unbounded_channel();
        let sink = Box::new(move |ev: Event| tx.send(ev).is_ok());
        let (_id, cancel) = tokio::task::spawn_blocking(move || engine.submit_with(req, sink))
            .await
            .map_err(|e| ApiError::internal(format!("submitting the request: {e}")))??;
        let ticket = Ticket::new(state.clone(), &cancel);
        Ok(Run {
            rx,
            cancel,
            stops: StopMatcher::new(stops),
            tokens: 0,
            ended: None,
            _ticket: ticket,
        })
    }

    /// The next piece of text (never empty) or the end.
    pub async fn next(&mut self) -> Result<Piece, ApiError> {
        if let Some(o) = self.ended.take() {
            return Ok(Piece::End(o));
        }
        loop {
            match self.rx.recv().await {
                Some(Event::Tokens { ids, text }) => {
                    if self.stops.hit() {
                        continue;
                    }
                    self.tokens += ids.len();
                    let out = self.stops.push(&text);
                    if self.stops.hit() {
                        self.cancel.cancel();
                    }
                    if !out.is_empty() {
                        return Ok(Piece::Text(out));
                    }
                }
                Some(Event::Done(c)) => {
                    let outcome = Box::new(self.outcome(*c)?);
                    let rest = self.stops.finish();
                    if rest.is_empty() {
                        return Ok(Piece::End(outcome));
                    }
                    self.ended = Some(outcome);
                    return Ok(Piece::Text(rest));
                }
                Some(Event::Failed(e)) => return Err(e.into()),
                None => return Err(EngineError::SchedulerGone.into()),
            }
        }
    }

    fn outcome(&self, completion: Completion) -> Result<Outcome, ApiError> {
        let (finish, completion_tokens) = if self.stops.hit() {
            ("stop", self.tokens)
        } else {
            let finish = match completion.stop {
                StopReason::EndOfGeneration => "stop",
                StopReason::MaxTokens | StopReason::ContextFull => "length",
                // Not by us (a stop string) nor by the client (it would not be reading).
                StopReason::Cancelled => return Err(ApiError::shutting_down()),
            };
            (finish, completion.tokens.len())
        };
        Ok(Outcome {
            finish,
            completion,
            completion_tokens,
        })
    }
}
