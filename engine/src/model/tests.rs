//! The restricted output layer's context extras, through `forward_batch`.

use cascade_weights::{OpenOptions, WeightStore};

use crate::fixture::{self, FixtureSpec};
use crate::model::{Logits, Model, SeqInput};
use crate::scratch::Scratch;

#[test]
fn context_extras_get_their_full_logits_past_the_subset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    fixture::write(&FixtureSpec::default(), &path).unwrap();
    let load = || Model::load(&WeightStore::new(), &path, &OpenOptions::default()).unwrap();
    let full = load();
    let mut sub = load();
    let ids: Vec<u32> = (0..100).collect();
    sub.restrict_output(&ids).unwrap();
    let v = full.vocab_size();
    let (a, b) = ([3u32, 150, 200], [7u32, 9]);
    // Sequence a asks for two tokens past the subset (and one inside it, and one past the
    // vocabulary, both ignored); b for none.
    let extra_a = [5u32, 150, 230, 100_000];
    let run = |m: &Model, extra: &[u32]| {
        let mut kv = m.new_storage(4, 8).unwrap();
        let seqs = [
            SeqInput {
                tokens: &a,
                table: &[0, 1],
                past: 0,
                want: Logits::All,
                extra,
            },
            SeqInput {
                tokens: &b,
                table: &[2, 3],
                past: 0,
                want: Logits::Last,
                extra: &[],
            },
        ];
        let mut logits = Vec::new();
        m.forward_batch(&mut kv, &seqs, &mut Scratch::default(), &mut logits)
            .unwrap();
        logits
    };
    let (f, r) = (run(&full, &[]), run(&sub, &extra_a));
    assert_eq!(f.len(), 4 * v);
    for row in 0..4 {
        for id in 0..v {
            let (x, y) = (f[row * v + id], r[row * v + id]);
            let in_a_extra = row < 3 && (id == 150 || id == 230);
            if id < 100 || in_a_extra {
                assert_eq!(x.to_bits(), y.to_bits(), "row {row} token {id}");
            } else {
                assert_eq!(y, f32::NEG_INFINITY, "row {row} token {id}");
            }
        }
    }
}
