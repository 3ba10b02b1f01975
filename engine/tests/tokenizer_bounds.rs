//! `Tokenizer::prompt_ids_within`: exact ids for texts that fit, a refusal
//! with a true lower bound for texts that do not, without tokenizing a huge
//! text whole.

use aerie_engine::{BoundedIds, DType, Engine};
use std::time::Instant;

fn engine() -> Engine {
    Engine::load("smollm2", DType::Auto).expect("load smollm2")
}

/// Prose of about `bytes` bytes, with words, digits, punctuation and newlines.
fn prose(bytes: usize) -> String {
    let words = ["The", "quick", "brown", "fox,", "jumps", "over", "42", "lazy", "dogs.\n", "Über", "naïve", "café", "日本語", "<|im_start|>"];
    let mut s = String::new();
    let mut i = 0usize;
    while s.len() < bytes {
        s.push_str(words[i % words.len()]);
        s.push(' ');
        i = i.wrapping_mul(31).wrapping_add(7) % 1009;
    }
    s
}

#[test]
fn texts_that_fit_get_exactly_the_plain_ids() {
    let e = engine();
    for bytes in [10, 5_000, 40_000, 100_000] {
        let text = prose(bytes);
        let want = e.tokenizer.prompt_ids(&text).unwrap();
        assert_eq!(e.tokenizer.prompt_ids_within(&text, want.len()).unwrap(), BoundedIds::Ids(want.clone()), "{bytes} bytes");
        // One token short of fitting is refused with the true count or less.
        match e.tokenizer.prompt_ids_within(&text, want.len() - 1).unwrap() {
            BoundedIds::TooLong { at_least } => assert!(at_least >= want.len() - 1 && at_least <= want.len(), "{bytes}: {at_least} vs {}", want.len()),
            other => panic!("{bytes} bytes: {other:?}"),
        }
    }
}

#[test]
fn huge_texts_are_refused_with_a_true_lower_bound_and_quickly() {
    let e = engine();
    // About 200k tokens.
    let text = prose(1 << 20);
    let t = Instant::now();
    let BoundedIds::TooLong { at_least } = e.tokenizer.prompt_ids_within(&text, 8192).unwrap() else { panic!("accepted") };
    let bounded = t.elapsed();
    let t = Instant::now();
    let full = e.tokenizer.prompt_ids(&text).unwrap().len();
    let whole = t.elapsed();
    assert!(at_least > 8192 && at_least <= full, "{at_least} vs {full}");
    // Counting stops a little past the limit: far less work than the whole
    // (a ratio, not a time limit: both ran here, now).
    assert!(bounded * 5 < whole, "bounded {bounded:?}, whole {whole:?}");
    // 4 MB of one repeated long token: refused by the length floor alone.
    let BoundedIds::TooLong { at_least } = e.tokenizer.prompt_ids_within(&"=".repeat(4 << 20), 8192).unwrap() else { panic!("accepted") };
    assert!(at_least > 8192);
}
