//! A streamed response: `data: {chunk}` events, then `data: [DONE]`. The body owns the [`Run`]:
//! when the client goes away hyper drops the body, and with it the request (cancelled).

use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, StreamExt};
use serde_json::Value;

use super::response::Chunks;
use super::run::{Piece, Run};

struct State {
    run: Run,
    chunks: Chunks,
    /// The piece read before answering (so that early failures get a status code).
    first: Option<Piece>,
    done: bool,
}

fn data(v: &Value) -> Event {
    Event::default().data(v.to_string())
}

/// The SSE response of `run`, whose first piece has been read already.
pub fn respond(run: Run, chunks: Chunks, first: Piece) -> Response {
    let head: Vec<Event> = chunks.role().iter().map(data).collect();
    let state = State {
        run,
        chunks,
        first: Some(first),
        done: false,
    };
    let body = stream::iter(head)
        .chain(stream::unfold(state, step).flat_map(stream::iter))
        .map(Ok::<_, Infallible>);
    Sse::new(body)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// The events of the next piece; `None` after the last.
async fn step(mut st: State) -> Option<(Vec<Event>, State)> {
    if st.done {
        return None;
    }
    let piece = match st.first.take() {
        Some(p) => Ok(p),
        None => st.run.next().await,
    };
    let events = match piece {
        Ok(Piece::Text(t)) => vec![data(&st.chunks.text(&t))],
        Ok(Piece::End(o)) => {
            st.done = true;
            let mut ev: Vec<Event> = st.chunks.end(&o).iter().map(data).collect();
            ev.push(Event::default().data("[DONE]"));
            ev
        }
        // A failure after the stream began: an error object in a data event (as vLLM sends it).
        Err(e) => {
            st.done = true;
            vec![data(&e.body())]
        }
    };
    Some((events, st))
}
