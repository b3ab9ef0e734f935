//! A server-sent events parser fed with the bytes of a response as they arrive: lines may be
//! split across reads anywhere (inside a UTF-8 character, between `\r` and `\n`), events end at
//! a blank line, `:` lines are comments.
//!
//! Besides the standard `data:` and `event:` fields it keeps llama.cpp's `error:` field (its
//! server streams errors as `error: {...}`), as an event named `error`.

/// One dispatched event: its name (`message` unless `event:` said otherwise) and its data lines
/// joined with `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub name: String,
    pub data: String,
}

/// A line longer than this is refused: a server cannot make the client hold unbounded memory.
pub const MAX_LINE: usize = 4 << 20;

#[derive(Debug, Default)]
pub struct Parser {
    /// Bytes of the line not yet ended.
    line: Vec<u8>,
    /// The previous read ended with `\r`: a `\n` starting the next one belongs to it.
    after_cr: bool,
    name: Option<String>,
    data: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an event line exceeds {MAX_LINE} bytes")]
pub struct LineTooLong;

impl Parser {
    pub fn new() -> Parser {
        Parser::default()
    }

    /// Feeds bytes; returns the events they complete.
    pub fn push(&mut self, mut bytes: &[u8]) -> Result<Vec<Event>, LineTooLong> {
        let mut out = Vec::new();
        if self.after_cr && !bytes.is_empty() {
            if bytes[0] == b'\n' {
                bytes = &bytes[1..];
            }
            self.after_cr = false;
        }
        while let Some(i) = bytes.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.line.extend_from_slice(&bytes[..i]);
            self.check_len()?;
            let line = std::mem::take(&mut self.line);
            self.on_line(&line, &mut out);
            let crlf = bytes[i] == b'\r';
            bytes = &bytes[i + 1..];
            if crlf {
                match bytes.first() {
                    Some(b'\n') => bytes = &bytes[1..],
                    None => self.after_cr = true,
                    _ => {}
                }
            }
        }
        self.line.extend_from_slice(bytes);
        self.check_len()?;
        Ok(out)
    }

    /// The end of the stream: a last line without its newline and an event without its blank
    /// line still count (some servers close right after the final `data:` line).
    pub fn finish(&mut self) -> Option<Event> {
        let mut out = Vec::new();
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.on_line(&line, &mut out);
        }
        self.on_line(b"", &mut out);
        out.pop()
    }

    fn check_len(&self) -> Result<(), LineTooLong> {
        let pending = self.data.as_ref().map_or(0, String::len);
        if self.line.len() + pending > MAX_LINE {
            return Err(LineTooLong);
        }
        Ok(())
    }

    fn on_line(&mut self, line: &[u8], out: &mut Vec<Event>) {
        if line.is_empty() {
            let name = self.name.take();
            if let Some(data) = self.data.take() {
                out.push(Event {
                    name: name.unwrap_or_else(|| "message".into()),
                    data,
                });
            }
            return;
        }
        if line[0] == b':' {
            return;
        }
        let line = String::from_utf8_lossy(line);
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line.as_ref(), ""),
        };
        match field {
            "data" => self.add_data(value),
            "event" => self.name = Some(value.to_string()),
            "error" => {
                self.name = Some("error".into());
                self.add_data(value);
            }
            _ => {}
        }
    }

    fn add_data(&mut self, value: &str) {
        match &mut self.data {
            Some(d) => {
                d.push('\n');
                d.push_str(value);
            }
            None => self.data = Some(value.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(data: &str) -> Event {
        Event {
            name: "message".into(),
            data: data.into(),
        }
    }

    fn feed_all(parts: &[&[u8]]) -> Vec<Event> {
        let mut p = Parser::new();
        let mut out = Vec::new();
        for part in parts {
            out.extend(p.push(part).unwrap());
        }
        out.extend(p.finish());
        out
    }

    #[test]
    fn events_end_at_blank_lines() {
        let got = feed_all(&[b"data: {\"a\":1}\n\ndata: [DONE]\n\n"]);
        assert_eq!(got, vec![msg("{\"a\":1}"), msg("[DONE]")]);
    }

    #[test]
    fn any_split_gives_the_same_events() {
        let text =
            "data: {\"x\":\"é\"}\r\n\r\n: keep-alive\r\n\r\ndata:no-space\r\rdata: [DONE]\n\n";
        let whole = feed_all(&[text.as_bytes()]);
        assert_eq!(
            whole,
            vec![msg("{\"x\":\"é\"}"), msg("no-space"), msg("[DONE]")]
        );
        let b = text.as_bytes();
        for i in 0..b.len() {
            for j in i..b.len() {
                assert_eq!(
                    feed_all(&[&b[..i], &b[i..j], &b[j..]]),
                    whole,
                    "split {i} {j}"
                );
            }
        }
        // One byte at a time, with empty reads between.
        let bytes: Vec<&[u8]> = b.chunks(1).flat_map(|c| [c, &[][..]]).collect();
        assert_eq!(feed_all(&bytes), whole);
    }

    #[test]
    fn multi_line_data_names_and_llama_errors() {
        let got = feed_all(&[
            b"event: ping\ndata: a\ndata: b\n\nid: 7\nretry: 10\n\nerror: {\"code\":500}\n\n",
        ]);
        assert_eq!(
            got,
            vec![
                Event {
                    name: "ping".into(),
                    data: "a\nb".into()
                },
                Event {
                    name: "error".into(),
                    data: "{\"code\":500}".into()
                }
            ]
        );
    }

    #[test]
    fn unterminated_last_event_counts_and_garbage_is_harmless() {
        assert_eq!(feed_all(&[b"data: last"]), vec![msg("last")]);
        assert_eq!(feed_all(&[b"\xff\xfe garbage\n\ndata\n\n"]), vec![msg("")]);
        assert_eq!(feed_all(&[b""]), vec![]);
    }

    #[test]
    fn refuses_endless_lines() {
        let mut p = Parser::new();
        let chunk = vec![b'a'; 1 << 20];
        let mut r = Ok(vec![]);
        for _ in 0..5 {
            r = p.push(&chunk);
            if r.is_err() {
                break;
            }
        }
        assert_eq!(r, Err(LineTooLong));
    }
}
