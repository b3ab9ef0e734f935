//! Stop strings over streamed text: the text is cut before the first stop string, and a tail
//! that could be the start of one is held back until the next piece decides it.

#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text received but not yet released (a possible start of a stop string).
    held: String,
    hit: bool,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> StopMatcher {
        StopMatcher {
            stops,
            ..StopMatcher::default()
        }
    }

    /// Whether a stop string has appeared (nothing more is released after it).
    pub fn hit(&self) -> bool {
        self.hit
    }

    /// Takes the next piece of text and returns what can be released now.
    pub fn push(&mut self, piece: &str) -> String {
        if self.hit {
            return String::new();
        }
        self.held.push_str(piece);
        if let Some(at) = self.first_stop() {
            self.hit = true;
            self.held.truncate(at);
            return std::mem::take(&mut self.held);
        }
        let keep = self.partial_tail();
        let out = self.held[..self.held.len() - keep].to_string();
        self.held.drain(..self.held.len() - keep);
        out
    }

    /// The held-back tail at the end of the text (it was no stop string after all).
    pub fn finish(&mut self) -> String {
        if self.hit {
            return String::new();
        }
        std::mem::take(&mut self.held)
    }

    /// Byte offset of the earliest stop string in the held text.
    fn first_stop(&self) -> Option<usize> {
        self.stops.iter().filter_map(|s| self.held.find(s)).min()
    }

    /// Length in bytes of the longest suffix of the held text that is a proper prefix of a stop
    /// string (always on a character boundary: the stop strings are valid UTF-8).
    fn partial_tail(&self) -> usize {
        let h = self.held.as_bytes();
        let mut best = 0;
        for s in &self.stops {
            let s = s.as_bytes();
            let most = (s.len() - 1).min(h.len());
            if let Some(n) = (best + 1..=most).rev().find(|&n| h.ends_with(&s[..n])) {
                best = n;
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            out += &m.push(p);
        }
        out += &m.finish();
        (out, m.hit())
    }

    #[test]
    fn no_stops_passes_text_through() {
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
    }

    #[test]
    fn cuts_before_a_stop_in_one_piece() {
        assert_eq!(run(&["\n\n"], &["x = 1\n\ny"]), ("x = 1".into(), true));
    }

    #[test]
    fn a_stop_split_across_pieces_is_found() {
        assert_eq!(
            run(&["END"], &["ab", "cE", "N", "Dzz"]),
            ("abc".into(), true)
        );
    }

    #[test]
    fn a_false_start_is_released() {
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(m.push("aE"), "a");
        assert_eq!(m.push("N"), "");
        assert_eq!(m.push("x"), "ENx");
        assert_eq!(m.finish(), "");
        assert!(!m.hit());
    }

    #[test]
    fn the_held_tail_comes_out_at_the_end() {
        assert_eq!(run(&["END"], &["abE", "N"]), ("abEN".into(), false));
    }

    #[test]
    fn the_earliest_of_several_stops_wins() {
        assert_eq!(run(&["c", "ab"], &["xabc"]), ("x".into(), true));
    }

    #[test]
    fn multibyte_text_is_cut_on_boundaries() {
        assert_eq!(run(&["é!"], &["caf", "é", "!"]), ("caf".into(), true));
        assert_eq!(run(&["éa"], &["€é", "b"]), ("€éb".into(), false));
    }

    #[test]
    fn nothing_after_a_hit() {
        let mut m = StopMatcher::new(vec!["s".into()]);
        assert_eq!(m.push("as"), "a");
        assert_eq!(m.push("more"), "");
        assert_eq!(m.finish(), "");
    }
}
