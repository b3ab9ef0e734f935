//! Forward passes of one model: the restricted output layer's context extras and rows reduced to
//! their argmax, through `forward_batch` and the one-sequence wrappers.

use cascade_weights::{OpenOptions, WeightStore};

use crate::fixture::{self, FixtureSpec};
use crate::model::{Logits, Model, Outputs, Reduce, SeqInput};
use crate::sampler::argmax_valid;
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
                reduce: Reduce::Logits,
                extra,
                prompt: 0,
            },
            SeqInput {
                tokens: &b,
                table: &[2, 3],
                past: 0,
                want: Logits::Last,
                reduce: Reduce::Logits,
                extra: &[],
                prompt: 0,
            },
        ];
        let mut out = Outputs::default();
        m.forward_batch(&mut kv, &seqs, &mut Scratch::default(), &mut out)
            .unwrap();
        out.logits
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

/// With the output layer restricted, a row reduced to its argmax is the argmax of the same row
/// returned whole (the ids outside the subset are -inf there), and the other sequence's rows
/// come back unchanged and compacted.
#[test]
fn reduced_rows_are_the_argmax_of_the_restricted_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    fixture::write(&FixtureSpec::default(), &path).unwrap();
    let mut m = Model::load(&WeightStore::new(), &path, &OpenOptions::default()).unwrap();
    let ids: Vec<u32> = (0..256).step_by(3).collect();
    m.restrict_output(&ids).unwrap();
    let v = m.vocab_size();
    let (a, b) = ([3u32, 150, 200, 9], [7u32, 9, 11]);
    let run = |ra: Reduce, rb: Reduce| {
        let mut kv = m.new_storage(4, 8).unwrap();
        let seqs = [
            SeqInput {
                tokens: &b,
                table: &[2, 3],
                past: 0,
                want: Logits::Last,
                reduce: rb,
                extra: &[],
                prompt: 0,
            },
            SeqInput {
                tokens: &a,
                table: &[0, 1],
                past: 0,
                want: Logits::All,
                reduce: ra,
                extra: &a,
                prompt: 0,
            },
        ];
        let mut out = Outputs::default();
        m.forward_batch(&mut kv, &seqs, &mut Scratch::default(), &mut out)
            .unwrap();
        out
    };
    let whole = run(Reduce::Logits, Reduce::Logits);
    let mixed = run(Reduce::Argmax, Reduce::Logits);
    assert_eq!(whole.logits.len(), 5 * v);
    assert_eq!(mixed.logits, whole.logits[..v], "b's row whole and first");
    assert_eq!(mixed.argmax.len(), 4);
    for (r, &id) in mixed.argmax.iter().enumerate() {
        let row = &whole.logits[(1 + r) * v..(2 + r) * v];
        assert_eq!(Some(id), argmax_valid(row, m.valid_mask()), "a's row {r}");
        assert!(
            ids.contains(&id) || a.contains(&id),
            "{id} outside the subset"
        );
    }
    let both = run(Reduce::Argmax, Reduce::Argmax);
    assert!(both.logits.is_empty());
    assert_eq!(both.argmax[1..], mixed.argmax[..], "a's choices after b's");
}

/// `forward_greedy` gives each row's greedy choice of the rows `forward_rows` returns whole, and
/// leaves the cache where `forward_rows` leaves it.
#[test]
fn forward_greedy_is_the_argmax_of_the_whole_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    fixture::write(&FixtureSpec::default(), &path).unwrap();
    let m = Model::load(&WeightStore::new(), &path, &OpenOptions::default()).unwrap();
    let (prompt, next) = ([3u32, 40, 41, 99, 7], [12u32, 200, 5]);
    let v = m.vocab_size();
    let (mut a, mut b) = (m.new_cache(16).unwrap(), m.new_cache(16).unwrap());
    let (mut logits, mut ids) = (Vec::new(), Vec::new());
    m.forward_rows(&prompt, &mut a, Logits::Last, 5, &mut logits)
        .unwrap();
    m.forward_greedy(&prompt, &mut b, Logits::Last, 5, &mut ids)
        .unwrap();
    assert_eq!(ids, [argmax_valid(&logits, m.valid_mask()).unwrap()]);
    m.forward_rows(&next, &mut a, Logits::All, 0, &mut logits)
        .unwrap();
    m.forward_greedy(&next, &mut b, Logits::All, 0, &mut ids)
        .unwrap();
    let want: Vec<u32> = logits
        .chunks(v)
        .map(|row| argmax_valid(row, m.valid_mask()).unwrap())
        .collect();
    assert_eq!((ids.len(), ids), (3, want));
    assert_eq!(a.len(), b.len());
}
