//! Constrained decoding: JSON Schema, JSON object mode, regular expressions
//! and Lark/EBNF grammars through `llguidance`, over Aerie's tokenizer.
//!
//! Strategy. A worker builds one [`GrammarCompiler`] from its tokenizer
//! (llguidance's token trie over every token's bytes). A request's
//! constraint compiles to a [`Grammar`], checked once when the request
//! arrives, so a bad schema is refused before any work. Each decoding
//! sequence holds a [`GrammarState`]: a matcher at the committed output.
//!
//! Verification scores a whole tree at once. The mask at tree node `i` must
//! be the grammar's mask after the committed output *and* `i`'s path, so
//! the state keeps the tokens it consumed beyond the committed output and
//! moves between paths by rolling back to their common prefix and
//! consuming the rest ([`GrammarState::mask_after`]). Verification walks a
//! single path from the root, so each step costs one token. Disallowed
//! tokens get `-inf` before argmax or sampling, so greedy output and the
//! sampled distribution are exactly those of plain decoding under the same
//! constraint. [`GrammarState::commit`] then moves the committed point to
//! the accepted tokens; rejected nodes are rolled back by the same
//! mechanism.

use crate::tokenizer::Tokenizer;
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory, TokenParser};
use std::sync::{Arc, Mutex};

/// What a request constrains its output to.
#[derive(Debug, Clone, PartialEq)]
pub enum ConstraintSpec {
    /// Any JSON object (OpenAI's `response_format: json_object`).
    JsonObject,
    /// A JSON Schema (OpenAI's `json_schema`).
    JsonSchema(serde_json::Value),
    /// A regular expression the whole output matches (SGLang's `regex`).
    Regex(String),
    /// A grammar in Lark syntax (SGLang's `ebnf`; llguidance reads
    /// GBNF-style `::=` rules as well).
    Ebnf(String),
}

/// Builds grammars over one tokenizer.
pub struct GrammarCompiler {
    factory: Arc<ParserFactory>,
}

impl GrammarCompiler {
    /// The token trie over `tok`'s vocabulary; `eos` is the token the
    /// grammar allows once the output is complete.
    pub fn new(tok: &Tokenizer, eos: u32) -> Result<Self, String> {
        let words: Vec<Vec<u8>> = (0..tok.vocab_size() as u32)
            .map(|id| {
                let b = tok.token_bytes(id);
                // Special tokens are marked so grammars never spell them
                // out of ordinary text.
                if tok.is_special(id) {
                    let mut m = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    m.extend(b);
                    m
                } else {
                    b
                }
            })
            .collect();
        Self::from_token_bytes(&words, eos, tok.bos_id)
    }

    /// Over a vocabulary given as each token's bytes (special tokens start
    /// with `TokTrie::SPECIAL_TOKEN_MARKER`); for models without a
    /// tokenizer of their own, such as the tests' tiny ones.
    pub fn from_token_bytes(words: &[Vec<u8>], eos: u32, bos: Option<u32>) -> Result<Self, String> {
        let info = TokRxInfo { vocab_size: words.len() as u32, tok_eos: eos, tok_bos: bos, tok_pad: None, tok_unk: None, tok_end_of_turn: None };
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(TokTrie::from(&info, words)));
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
        factory.quiet();
        Ok(GrammarCompiler { factory: Arc::new(factory) })
    }

    /// Compiles `spec`; the error says what is wrong with it.
    pub fn compile(&self, spec: &ConstraintSpec) -> Result<Grammar, String> {
        let top = match spec {
            ConstraintSpec::JsonObject => TopLevelGrammar::from_json_schema(compact(serde_json::json!({"type": "object"}))),
            ConstraintSpec::JsonSchema(s) => {
                if !s.is_object() && !s.is_boolean() {
                    return Err("a JSON Schema must be an object".into());
                }
                TopLevelGrammar::from_json_schema(compact(s.clone()))
            }
            ConstraintSpec::Regex(r) => TopLevelGrammar::from_regex(r),
            ConstraintSpec::Ebnf(g) => TopLevelGrammar::from_lark(g.clone()),
        };
        // Compiled once: errors surface before decoding starts, and each
        // sequence then starts from a copy of the compiled parser.
        let parser = self.factory.create_parser(top).map_err(|e| e.to_string())?;
        let g = Grammar { parser: Arc::new(Mutex::new(parser)) };
        g.start()?;
        Ok(g)
    }
}

/// Compact JSON (no optional whitespace): a small model given freedom to
/// put whitespace between tokens can fill its budget with it.
fn compact(mut schema: serde_json::Value) -> serde_json::Value {
    if let Some(o) = schema.as_object_mut() {
        o.entry("x-guidance").or_insert_with(|| serde_json::json!({"whitespace_flexible": false}));
    }
    schema
}

/// A compiled constraint, cheap to clone; each sequence starts its own
/// [`GrammarState`] from it.
#[derive(Clone)]
pub struct Grammar {
    /// The compiled parser, never advanced itself (the lock only guards
    /// the copy).
    parser: Arc<Mutex<TokenParser>>,
}

impl std::fmt::Debug for Grammar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Grammar")
    }
}

impl PartialEq for Grammar {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.parser, &other.parser)
    }
}

impl Grammar {
    /// A fresh matcher at the start of the output.
    pub fn start(&self) -> Result<GrammarState, String> {
        let parser = self.parser.lock().unwrap_or_else(|e| e.into_inner()).deep_clone();
        let m = Matcher::new(Ok(parser));
        if let Some(e) = m.get_error() {
            return Err(e);
        }
        Ok(GrammarState { m, path: Vec::new() })
    }
}

/// What a grammar admits at one point; see [`GrammarState::mask_for`].
pub struct TokenMask(std::result::Result<llguidance::toktrie::SimpleVob, String>);

impl TokenMask {
    /// Sets `-inf` on every forbidden token; after an error, on every
    /// token but the `stop` ones.
    pub fn apply(&self, logits: &mut [f32], stop: &[u32]) {
        match &self.0 {
            Ok(allowed) => {
                for (t, l) in logits.iter_mut().enumerate() {
                    if !allowed.is_allowed(t as u32) {
                        *l = f32::NEG_INFINITY;
                    }
                }
            }
            Err(e) => {
                tracing::warn!("constrained decoding: {e}; ending the sequence");
                for (t, l) in logits.iter_mut().enumerate() {
                    if !stop.contains(&(t as u32)) {
                        *l = f32::NEG_INFINITY;
                    }
                }
            }
        }
    }
}

/// One sequence's position in its grammar.
pub struct GrammarState {
    m: Matcher,
    /// Tokens consumed beyond the committed output (a tree path).
    path: Vec<u32>,
}

impl GrammarState {
    /// Moves the matcher to committed output + `path`.
    fn seek(&mut self, path: &[u32]) -> Result<(), String> {
        let common = self.path.iter().zip(path).take_while(|(a, b)| a == b).count();
        if common < self.path.len() {
            self.m.rollback(self.path.len() - common).map_err(|e| e.to_string())?;
            self.path.truncate(common);
        }
        for &t in &path[common..] {
            self.m.consume_token(t).map_err(|e| e.to_string())?;
            self.path.push(t);
        }
        Ok(())
    }

    /// Sets `-inf` on every token the grammar forbids after committed
    /// output + `path`. A path the grammar cannot follow (an error state)
    /// allows nothing but the `stop` tokens, so the sequence ends instead
    /// of leaving the constraint.
    pub fn mask_after(&mut self, path: &[u32], logits: &mut [f32], stop: &[u32]) {
        self.mask_for(path).apply(logits, stop);
    }

    /// The tokens the grammar admits after committed output + `path`,
    /// to apply later (masks are computed while the verify forward runs).
    pub fn mask_for(&mut self, path: &[u32]) -> TokenMask {
        match self.seek(path).and_then(|_| self.m.compute_mask_or_eos().map_err(|e| e.to_string())) {
            Ok(allowed) => TokenMask(Ok(allowed)),
            Err(e) => TokenMask(Err(e)),
        }
    }

    /// Whether the grammar admits `token` after committed output + `path`
    /// (drafters ask this of each candidate; no mask is computed).
    pub fn allows(&mut self, path: &[u32], token: u32) -> bool {
        self.seek(path).is_ok() && self.m.validate_tokens(&[token]).is_ok_and(|n| n == 1)
    }

    /// Makes `accepted` (tokens after the committed output) committed.
    pub fn commit(&mut self, accepted: &[u32]) {
        if let Err(e) = self.seek(accepted) {
            tracing::warn!("constrained decoding: committing the accepted tokens: {e}");
        }
        self.path.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_vocab() -> GrammarCompiler {
        let mut words: Vec<Vec<u8>> = (b'a'..=b'e').map(|c| vec![c]).collect();
        words.push(b"\xff<eos>".to_vec());
        GrammarCompiler::from_token_bytes(&words, 5, None).unwrap()
    }

    fn allowed(g: &mut GrammarState, path: &[u32]) -> Vec<u32> {
        let mut l = vec![0.0f32; 6];
        g.mask_after(path, &mut l, &[5]);
        (0..6).filter(|&t| l[t as usize] == 0.0).collect()
    }

    #[test]
    fn masks_follow_each_path_and_roll_back_between_paths() {
        let g = bytes_vocab().compile(&ConstraintSpec::Regex("a(b|cd)e?".into())).unwrap();
        let mut s = g.start().unwrap();
        assert_eq!(allowed(&mut s, &[]), vec![0]);
        assert_eq!(allowed(&mut s, &[0]), vec![1, 2]);
        // Sibling paths in any order: the state rolls back to their common prefix.
        assert_eq!(allowed(&mut s, &[0, 2]), vec![3]);
        assert_eq!(allowed(&mut s, &[0, 1]), vec![4, 5]);
        assert_eq!(allowed(&mut s, &[0, 2, 3]), vec![4, 5]);
        // Committing moves the start; paths are then relative to it.
        s.commit(&[0, 2]);
        assert_eq!(allowed(&mut s, &[]), vec![3]);
        assert_eq!(allowed(&mut s, &[3, 4]), vec![5]);
        // A second sequence starts from the beginning, untouched.
        assert_eq!(allowed(&mut g.start().unwrap(), &[]), vec![0]);
    }

    #[test]
    fn bad_constraints_say_what_is_wrong() {
        let c = bytes_vocab();
        assert!(c.compile(&ConstraintSpec::Regex("((".into())).unwrap_err().contains("regex"));
        assert!(c.compile(&ConstraintSpec::JsonSchema(serde_json::json!([1]))).unwrap_err().contains("object"));
        assert!(c.compile(&ConstraintSpec::JsonSchema(serde_json::json!({"type": "frob"}))).unwrap_err().contains("frob"));
    }
}
