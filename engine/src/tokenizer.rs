//! Tokenization through the `tokenizers` crate, built either from a
//! Hugging Face `tokenizer.json` or from GGUF `tokenizer.ggml.*` metadata.
//!
//! For GGUF the tokenizer is rebuilt to match llama.cpp's: byte-level BPE
//! with the file's vocabulary and merges, the pre-tokenizer regexes that
//! llama.cpp uses for the file's `tokenizer.ggml.pre`, and special tokens
//! from the token types (CONTROL = 3 is matched only when parsing specials,
//! USER_DEFINED = 4 always, as in llama.cpp).

use crate::error::{EngineError, Result};
use crate::loader::gguf::GgufTokenizerMeta;
use sha2::{Digest, Sha256};
use std::path::Path;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

fn tk_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Tokenizer(e.to_string())
}

pub struct Tokenizer {
    /// Matches control tokens like `<|im_start|>` in text.
    with_special: tokenizers::Tokenizer,
    /// Treats control-token text as ordinary text.
    plain: tokenizers::Tokenizer,
    pub bos_id: Option<u32>,
    pub eos_ids: Vec<u32>,
    pub add_bos: bool,
    pub bos_token: String,
    pub eos_token: String,
    pub chat_template: Option<String>,
    hash: String,
    /// The longest token's text in bytes (computed on first use).
    max_token_bytes: std::sync::OnceLock<usize>,
}

/// [`Tokenizer::prompt_ids_within`]'s answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BoundedIds {
    /// The text fits: its prompt ids, exactly as [`Tokenizer::prompt_ids`] gives them.
    Ids(Vec<u32>),
    /// The text holds more tokens than the limit: at least this many.
    TooLong { at_least: usize },
}

/// Bytes tokenized at once when counting a long text's tokens.
const COUNT_CHUNK_BYTES: usize = 16 << 10;

impl Tokenizer {
    pub fn from_gguf(meta: &GgufTokenizerMeta) -> Result<Self> {
        if meta.model != "gpt2" {
            return Err(tk_err(format!("GGUF tokenizer model `{}` is not supported (only byte-level BPE, `gpt2`)", meta.model)));
        }
        let vocab: ahash::AHashMap<String, u32> =
            meta.tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let merges: Vec<(String, String)> = meta
            .merges
            .iter()
            .filter_map(|m| m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())))
            .collect();
        let build = |with_control: bool| -> Result<tokenizers::Tokenizer> {
            let bpe = BPE::builder().vocab_and_merges(vocab.clone(), merges.clone()).build().map_err(tk_err)?;
            let mut tk = tokenizers::Tokenizer::new(bpe);
            tk.with_pre_tokenizer(Some(pre_tokenizer(&meta.pre)?));
            tk.with_decoder(Some(ByteLevel::default()));
            let added: Vec<AddedToken> = meta
                .tokens
                .iter()
                .zip(&meta.token_types)
                .filter(|(_, &ty)| ty == TOKEN_TYPE_USER_DEFINED || (with_control && ty == TOKEN_TYPE_CONTROL))
                .map(|(t, &ty)| AddedToken::from(t.clone(), ty == TOKEN_TYPE_CONTROL))
                .collect();
            tk.add_special_tokens(&added);
            Ok(tk)
        };
        let tok_str = |id: Option<u32>| id.and_then(|i| meta.tokens.get(i as usize)).cloned().unwrap_or_default();
        let mut h = Sha256::new();
        h.update(meta.pre.as_bytes());
        for t in &meta.tokens {
            h.update(t.as_bytes());
            h.update([0]);
        }
        for m in &meta.merges {
            h.update(m.as_bytes());
            h.update([1]);
        }
        Ok(Tokenizer {
            with_special: build(true)?,
            plain: build(false)?,
            bos_id: meta.bos_id,
            eos_ids: meta.eos_id.into_iter().collect(),
            add_bos: meta.add_bos,
            bos_token: tok_str(meta.bos_id),
            eos_token: tok_str(meta.eos_id),
            chat_template: meta.chat_template.clone(),
            hash: hex8(&h.finalize()),
            max_token_bytes: std::sync::OnceLock::new(),
        })
    }

    /// Loads `tokenizer.json` and, if present, `tokenizer_config.json`.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let p = dir.join("tokenizer.json");
        let bytes = std::fs::read(&p).map_err(|source| EngineError::Io { path: p.clone(), source })?;
        let with_special = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| tk_err(format!("{}: {e}", p.display())))?;
        let plain = with_special.clone();
        let cfg: serde_json::Value = std::fs::read_to_string(dir.join("tokenizer_config.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(serde_json::Value::Null);
        let tok_field = |k: &str| -> Option<String> {
            match cfg.get(k)? {
                serde_json::Value::String(s) => Some(s.clone()),
                v => v.get("content").and_then(|c| c.as_str()).map(str::to_string),
            }
        };
        let bos_token = tok_field("bos_token").unwrap_or_default();
        let eos_token = tok_field("eos_token").unwrap_or_default();
        let chat_template = match cfg.get("chat_template") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .or(a.first())
                .and_then(|t| t.get("template"))
                .and_then(|t| t.as_str())
                .map(str::to_string),
            _ => None,
        };
        let gen_cfg: serde_json::Value = std::fs::read_to_string(dir.join("generation_config.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(serde_json::Value::Null);
        let mut eos_ids: Vec<u32> = match gen_cfg.get("eos_token_id") {
            Some(serde_json::Value::Number(n)) => n.as_u64().map(|v| v as u32).into_iter().collect(),
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_u64().map(|v| v as u32)).collect(),
            _ => Vec::new(),
        };
        if let Some(id) = with_special.token_to_id(&eos_token) {
            if !eos_ids.contains(&id) {
                eos_ids.push(id);
            }
        }
        let mut h = Sha256::new();
        h.update(&bytes);
        Ok(Tokenizer {
            bos_id: with_special.token_to_id(&bos_token),
            with_special,
            plain,
            eos_ids,
            add_bos: cfg.get("add_bos_token").and_then(|v| v.as_bool()).unwrap_or(false),
            bos_token,
            eos_token,
            chat_template,
            hash: hex8(&h.finalize()),
            max_token_bytes: std::sync::OnceLock::new(),
        })
    }

    /// Writes `tokenizer.json`, `tokenizer_config.json` (BOS/EOS, the chat
    /// template, whether a BOS is added) and `generation_config.json` (the
    /// EOS ids) to `dir`, so that [`Self::from_hf_dir`] reads back a
    /// tokenizer that encodes as this one does. A tokenizer built from GGUF
    /// metadata is written with its control tokens as special tokens.
    pub fn save_hf(&self, dir: &Path) -> Result<()> {
        let io = |p: std::path::PathBuf| move |source| EngineError::Io { path: p, source };
        let p = dir.join("tokenizer.json");
        self.with_special.save(&p, false).map_err(|e| tk_err(format!("{}: {e}", p.display())))?;
        let cfg = serde_json::json!({
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "add_bos_token": self.add_bos,
            "chat_template": self.chat_template,
            "tokenizer_class": "PreTrainedTokenizerFast",
        });
        let p = dir.join("tokenizer_config.json");
        std::fs::write(&p, serde_json::to_string_pretty(&cfg).expect("a JSON value serializes")).map_err(io(p.clone()))?;
        let gen = serde_json::json!({ "bos_token_id": self.bos_id, "eos_token_id": self.eos_ids });
        let p = dir.join("generation_config.json");
        std::fs::write(&p, serde_json::to_string_pretty(&gen).expect("a JSON value serializes")).map_err(io(p.clone()))
    }

    /// Token ids of `text`. With `parse_special`, control-token text such as
    /// `<|im_start|>` becomes that one token (llama.cpp's `special=True`).
    /// A BOS is never added here; callers decide (see `add_bos`).
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        let tk = if parse_special { &self.with_special } else { &self.plain };
        Ok(tk.encode_fast(text, false).map_err(tk_err)?.get_ids().to_vec())
    }

    /// Text of `ids`; special tokens are dropped when `skip_special`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.with_special.decode(ids, skip_special).map_err(tk_err)
    }

    pub fn vocab_size(&self) -> usize {
        self.with_special.get_vocab_size(true)
    }

    /// The bytes token `id` stands for (what OpenAI's logprobs report as
    /// `bytes`): byte-level BPE pieces are mapped back to their raw bytes,
    /// so a token holding half of a UTF-8 character gives exactly that half.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        if let Some(piece) = self.with_special.id_to_token(id) {
            // Added tokens (`<|im_end|>`) are stored as their text.
            if self.with_special.get_added_vocabulary().simple_id_to_token(id).is_none() {
                if let Some(b) = byte_level_bytes(&piece) {
                    return b;
                }
            }
        }
        self.decode(&[id], false).map(String::into_bytes).unwrap_or_default()
    }

    /// Whether `id` is a special (control) token such as `<|im_end|>`.
    pub fn is_special(&self, id: u32) -> bool {
        self.with_special.get_added_vocabulary().get_added_tokens_decoder().get(&id).is_some_and(|t| t.special)
    }

    pub fn token_to_id(&self, t: &str) -> Option<u32> {
        self.with_special.token_to_id(t)
    }

    /// A short hash identifying the vocabulary and merges.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// Prompt ids for text with special tokens recognized, BOS added if the
    /// tokenizer asks for one and the text did not already produce it.
    pub fn prompt_ids(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.encode(text, true)?;
        if self.add_bos {
            if let Some(b) = self.bos_id {
                if ids.first() != Some(&b) {
                    ids.insert(0, b);
                }
            }
        }
        Ok(ids)
    }

    /// Prompt ids of `text` if it holds at most `limit` tokens; otherwise a
    /// lower bound on its length, found without tokenizing all of it.
    ///
    /// Why: a client can send megabytes of text, and tokenizing it whole
    /// costs seconds of CPU and about a hundred bytes of memory per byte of
    /// text, only to refuse it. First, no token is longer than the
    /// vocabulary's longest entry, so `bytes / longest` tokens is a floor
    /// that refuses most oversized texts without any work. A text that
    /// passes it and is still large is counted in chunks cut before spaces
    /// (word boundaries for every pre-tokenizer Aerie loads), stopping as
    /// soon as the count is past the limit by more than the cuts could
    /// account for. Only a text that fits is tokenized whole, so the result
    /// is exactly [`Tokenizer::prompt_ids`].
    pub fn prompt_ids_within(&self, text: &str, limit: usize) -> Result<BoundedIds> {
        let longest = *self.max_token_bytes.get_or_init(|| self.with_special.get_vocab(true).keys().map(|t| t.len()).max().unwrap_or(1).max(1));
        let floor = text.len().div_ceil(longest);
        if floor > limit {
            return Ok(BoundedIds::TooLong { at_least: floor });
        }
        if text.len() > COUNT_CHUNK_BYTES {
            // Up to 4 tokens per cut may differ from tokenizing the whole.
            const SLACK_PER_CUT: usize = 4;
            let (mut at, mut counted, mut cuts) = (0usize, 0usize, 0usize);
            while at < text.len() {
                let end = chunk_end(text, at, COUNT_CHUNK_BYTES);
                counted += self.encode(&text[at..end], true)?.len();
                at = end;
                if at < text.len() {
                    cuts += 1;
                }
                let at_least = counted.saturating_sub(cuts * SLACK_PER_CUT);
                if at_least > limit {
                    return Ok(BoundedIds::TooLong { at_least });
                }
            }
        }
        let ids = self.prompt_ids(text)?;
        if ids.len() > limit {
            return Ok(BoundedIds::TooLong { at_least: ids.len() });
        }
        Ok(BoundedIds::Ids(ids))
    }

    pub fn is_eos(&self, id: u32) -> bool {
        self.eos_ids.contains(&id)
    }
}

/// Where a counting chunk starting at `at` ends: just before the first space
/// at least `size` bytes on (a word boundary), or, with no space within
/// 4 KiB of that, at the next character boundary.
fn chunk_end(text: &str, at: usize, size: usize) -> usize {
    let mut end = (at + size).min(text.len());
    while !text.is_char_boundary(end) {
        end += 1;
    }
    let window = &text.as_bytes()[end..(end + 4096).min(text.len())];
    match window.iter().position(|&b| b == b' ') {
        Some(i) => end + i,
        None => end,
    }
}

fn hex8(d: &[u8]) -> String {
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// llama.cpp's pre-tokenizer for a `tokenizer.ggml.pre` name.
fn pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper> {
    let split = |re: &str| -> Result<PreTokenizerWrapper> {
        Ok(Split::new(SplitPattern::Regex(re.to_string()), SplitDelimiterBehavior::Isolated, false).map_err(tk_err)?.into())
    };
    let byte_level_no_regex: PreTokenizerWrapper = ByteLevel::new(false, true, false).into();
    Ok(match pre {
        // Digits one by one, then GPT-2's regex.
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva" => {
            Sequence::new(vec![Digits::new(true).into(), ByteLevel::new(false, true, true).into()]).into()
        }
        "llama-bpe" | "llama3" | "falcon3" => Sequence::new(vec![
            split(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")?,
            byte_level_no_regex,
        ])
        .into(),
        "qwen2" | "deepseek-r1-qwen" => Sequence::new(vec![
            split(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")?,
            byte_level_no_regex,
        ])
        .into(),
        _ => ByteLevel::new(false, true, true).into(),
    })
}

/// The raw bytes of a byte-level BPE piece (GPT-2's reversible mapping of
/// bytes to printable characters: printable Latin-1 bytes stand for
/// themselves, the other 68 bytes for U+0100 onwards in byte order), or
/// `None` when a character is outside that alphabet (not a byte-level piece).
fn byte_level_bytes(piece: &str) -> Option<Vec<u8>> {
    static TABLE: std::sync::OnceLock<std::collections::HashMap<char, u8>> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
        let mut m = std::collections::HashMap::new();
        let mut next = 256u32;
        for b in 0..=255u8 {
            let c = if printable(b) {
                b as u32
            } else {
                next += 1;
                next - 1
            };
            m.insert(char::from_u32(c).expect("valid code point"), b);
        }
        m
    });
    piece.chars().map(|c| table.get(&c).copied()).collect()
}

/// Incremental, UTF-8-safe detokenization: text is released only once the
/// bytes decoded so far form whole characters.
pub struct StreamDecoder {
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
    skip_special: bool,
}

impl StreamDecoder {
    pub fn new(skip_special: bool) -> Self {
        StreamDecoder { ids: Vec::new(), prefix: 0, read: 0, skip_special }
    }

    /// Adds a token; returns the text it completes, if any.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let before = tok.decode(&self.ids[self.prefix..self.read], self.skip_special)?;
        let now = tok.decode(&self.ids[self.prefix..], self.skip_special)?;
        if now.len() > before.len() && !now.ends_with('\u{FFFD}') {
            let out = now.get(before.len()..).unwrap_or("").to_string();
            self.prefix = self.read;
            self.read = self.ids.len();
            Ok(Some(out))
        } else {
            Ok(None)
        }
    }

    /// At the end of generation: whatever is still held back, with an
    /// incomplete trailing character as U+FFFD (as other OpenAI servers
    /// send it) rather than silently dropped.
    pub fn flush(&mut self, tok: &Tokenizer) -> Result<Option<String>> {
        let before = tok.decode(&self.ids[self.prefix..self.read], self.skip_special)?;
        let now = tok.decode(&self.ids[self.prefix..], self.skip_special)?;
        self.prefix = self.ids.len();
        self.read = self.ids.len();
        Ok(now.get(before.len()..).filter(|t| !t.is_empty()).map(str::to_string))
    }
}

#[cfg(test)]
mod tests {
    use super::byte_level_bytes;

    #[test]
    fn byte_level_pieces_map_back_to_their_bytes() {
        assert_eq!(byte_level_bytes("Ġthe").unwrap(), b" the");
        assert_eq!(byte_level_bytes("Ċ").unwrap(), b"\n");
        // "é" is 0xC3 0xA9; byte-level BPE writes it as "Ã©", and half a
        // character stays half.
        assert_eq!(byte_level_bytes("Ã©").unwrap(), "é".as_bytes());
        assert_eq!(byte_level_bytes("Ã").unwrap(), vec![0xC3]);
        // SentencePiece's "▁" is not a byte-level character.
        assert!(byte_level_bytes("▁the").is_none());
    }
}
