//! What the draft-length controllers learned, carried from one request to the next: acceptance
//! by drafted position for prompt lookup and for the draft model, per combination of speculative
//! settings (draft length aside) and sampling parameters (seed aside: it does not change what
//! gets accepted on average). Bounded: the least recently used entry goes first.

use crate::sampler::SamplingParams;
use crate::speculative::{Controller, DraftLen, SpecConfig};

/// Entries kept at most.
const CAPACITY: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq)]
struct Key {
    spec: SpecConfig,
    sampling: SamplingParams,
}

impl Key {
    fn new(spec: &SpecConfig, sampling: &SamplingParams) -> Key {
        Key {
            spec: SpecConfig {
                draft_len: DraftLen::default(),
                ..*spec
            },
            sampling: SamplingParams {
                seed: 0,
                ..*sampling
            },
        }
    }
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Memory {
    /// Most recently used last.
    entries: Vec<(Key, Controller, Controller)>,
}

impl Memory {
    /// The lookup and draft-model controllers a request with these settings starts from.
    pub fn controllers(
        &mut self,
        spec: &SpecConfig,
        sampling: &SamplingParams,
    ) -> (Controller, Controller) {
        let key = Key::new(spec, sampling);
        match self.entries.iter().position(|(k, _, _)| *k == key) {
            Some(i) => {
                let e = self.entries.remove(i);
                let out = (e.1.resumed(spec.draft_len), e.2.resumed(spec.draft_len));
                self.entries.push(e);
                out
            }
            None => (
                Controller::new(spec.draft_len),
                Controller::new(spec.draft_len),
            ),
        }
    }

    /// Keeps what a finished request's controllers learned.
    pub fn store(
        &mut self,
        spec: &SpecConfig,
        sampling: &SamplingParams,
        c: (Controller, Controller),
    ) {
        let key = Key::new(spec, sampling);
        self.entries.retain(|(k, _, _)| *k != key);
        if self.entries.len() >= CAPACITY {
            self.entries.remove(0);
        }
        self.entries.push((key, c.0, c.1));
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_without_the_seed_and_bounded() {
        let mut m = Memory::default();
        let spec = SpecConfig::default();
        for seed in 0..100u64 {
            let s = SamplingParams {
                temperature: 0.7,
                seed,
                ..SamplingParams::greedy()
            };
            let c = m.controllers(&spec, &s);
            m.store(&spec, &s, c);
        }
        assert_eq!(m.len(), 1, "one entry for every seed");
        for t in 0..100 {
            let s = SamplingParams {
                temperature: 0.01 * (t + 1) as f32,
                ..SamplingParams::greedy()
            };
            let c = m.controllers(&spec, &s);
            m.store(&spec, &s, c);
        }
        assert_eq!(m.len(), CAPACITY);
    }
}
