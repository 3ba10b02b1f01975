//! Turning token ids into the text a client sees.
//!
//! Strategy. Tokens are decoded incrementally and released only as whole
//! UTF-8 characters (`StreamDecoder`). Stop strings may span tokens, so the
//! last `longest_stop - 1` bytes (rounded to a character boundary) are held
//! back until the next token proves they do not start a stop string. When a
//! stop string appears, the text before it is released, the stop string and
//! everything after it are dropped, and the request ends with `stop`.

use aerie_engine::{StreamDecoder, Tokenizer};

pub struct TextStream {
    decoder: StreamDecoder,
    stops: Vec<String>,
    hold: usize,
    /// Decoded but not yet released.
    pending: String,
    pub stopped: bool,
}

impl TextStream {
    pub fn new(stops: Vec<String>) -> Self {
        let hold = stops.iter().map(|s| s.len()).max().unwrap_or(0).saturating_sub(1);
        TextStream { decoder: StreamDecoder::new(true), stops, hold, pending: String::new(), stopped: false }
    }

    /// Adds a token; returns text that is safe to release.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> String {
        if self.stopped {
            return String::new();
        }
        if let Ok(Some(t)) = self.decoder.push(tok, id) {
            self.pending.push_str(&t);
        }
        if self.cut_at_stop() {
            return std::mem::take(&mut self.pending);
        }
        let mut cut = self.pending.len().saturating_sub(self.hold);
        while !self.pending.is_char_boundary(cut) {
            cut -= 1;
        }
        let rest = self.pending.split_off(cut);
        std::mem::replace(&mut self.pending, rest)
    }

    /// The held-back tail, at the end of generation, including a trailing
    /// incomplete character (as U+FFFD).
    pub fn finish(&mut self, tok: &Tokenizer) -> String {
        if self.stopped {
            return String::new();
        }
        if let Ok(Some(t)) = self.decoder.flush(tok) {
            self.pending.push_str(&t);
        }
        self.cut_at_stop();
        std::mem::take(&mut self.pending)
    }

    /// Cuts the pending text before the earliest stop string, if one has
    /// appeared, and marks the stream stopped.
    fn cut_at_stop(&mut self) -> bool {
        let Some(at) = self.stops.iter().filter_map(|s| self.pending.find(s.as_str())).min() else { return false };
        self.stopped = true;
        self.pending.truncate(at);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aerie_engine::{DType, Engine};

    fn run(text: &str, stops: &[&str]) -> (String, bool) {
        let e = Engine::load("smollm2", DType::Auto).unwrap();
        let ids = e.tokenizer.encode(text, false).unwrap();
        let mut s = TextStream::new(stops.iter().map(|x| x.to_string()).collect());
        let mut out = String::new();
        for id in ids {
            let piece = s.push(&e.tokenizer, id);
            // Released text never holds a partial character or a stop.
            assert!(!stops.iter().any(|st| piece.contains(st)));
            out.push_str(&piece);
        }
        out.push_str(&s.finish(&e.tokenizer));
        (out, s.stopped)
    }

    #[test]
    fn a_character_cut_by_the_token_budget_ends_as_a_replacement_character() {
        let e = Engine::load("smollm2", DType::Auto).unwrap();
        // Find a character that takes more than one byte-level token.
        let (ch, ids) = ["☃", "日", "語", "🦀", "😀"]
            .iter()
            .map(|c| (*c, e.tokenizer.encode(c, false).unwrap()))
            .find(|(_, ids)| ids.len() > 1)
            .expect("some character splits into byte tokens");
        let mut s = TextStream::new(Vec::new());
        let mut out = String::new();
        for &id in &ids[..ids.len() - 1] {
            out.push_str(&s.push(&e.tokenizer, id));
        }
        assert_eq!(out, "", "a partial {ch} is never released mid-stream");
        assert_eq!(s.finish(&e.tokenizer), "\u{FFFD}");
        // Complete, it comes out whole and finish adds nothing.
        let mut s = TextStream::new(Vec::new());
        let out: String = ids.iter().map(|&id| s.push(&e.tokenizer, id)).collect();
        assert_eq!(out + &s.finish(&e.tokenizer), ch);
    }

    #[test]
    fn stop_strings_match_across_tokens_and_are_removed() {
        assert_eq!(run("Hello wonderful world, again", &["derful w"]), ("Hello won".into(), true));
        assert_eq!(run("Hello wonderful world", &["zzz", "world"]), ("Hello wonderful ".into(), true));
        assert_eq!(run("Hello wonderful world", &["nope"]), ("Hello wonderful world".into(), false));
    }

    #[test]
    fn multibyte_text_survives_holdback() {
        assert_eq!(run("héllo ☃ snow 日本語 ok", &["日本"]), ("héllo ☃ snow ".into(), true));
        assert_eq!(run("héllo ☃ snow 日本語", &["xyz"]), ("héllo ☃ snow 日本語".into(), false));
    }
}
