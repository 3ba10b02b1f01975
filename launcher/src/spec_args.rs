//! Speculative-decoding flags, named and defaulted as SGLang's.

use aerie_draft_worker::ngram::NgramConfig;
use aerie_draft_worker::{DraftOptions, SpecAlgorithm};
use aerie_engine::spec::TreeSpec;
use clap::Args;
use std::path::PathBuf;

/// `--speculative-min-draft-score` of the shipped head's default setting.
pub const SHIPPED_MIN_DRAFT_SCORE: f32 = 0.3;

#[derive(Args, Debug, Clone, Default)]
pub struct SpecArgs {
    /// EAGLE, EAGLE3, NEXTN (alias of EAGLE), NGRAM or STANDALONE. Unset: no speculation.
    #[arg(long, value_parser = parse_alg)]
    pub speculative_algorithm: Option<SpecAlgorithm>,
    /// Draft head directory (EAGLE/EAGLE3) or draft model (STANDALONE: GGUF, HF dir or a known name).
    #[arg(long)]
    pub speculative_draft_model_path: Option<PathBuf>,
    /// Draft steps per round, i.e. the deepest tree level (default 5).
    #[arg(long)]
    pub speculative_num_steps: Option<usize>,
    /// Children expanded per tree node (default 4; 1 drafts a chain).
    #[arg(long)]
    pub speculative_eagle_topk: Option<usize>,
    /// Tree nodes verified per round, root included (default 8; a chain's default is steps + 1).
    #[arg(long)]
    pub speculative_num_draft_tokens: Option<usize>,
    /// Model drafters neither expand nor verify a node whose path probability
    /// (the product of draft probabilities from the root) is below this, so
    /// unsure rounds verify fewer rows (default 0: SGLang's fixed-size trees).
    #[arg(long, value_parser = parse_score)]
    pub speculative_min_draft_score: Option<f32>,
    /// FR-Spec hot-vocabulary id list for EAGLE heads (.json, .npy or .safetensors).
    #[arg(long)]
    pub speculative_token_map: Option<PathBuf>,
    /// NGRAM: shortest suffix matched (default 1).
    #[arg(long)]
    pub speculative_ngram_min_match_window_size: Option<usize>,
    /// NGRAM: longest suffix matched (default 12).
    #[arg(long)]
    pub speculative_ngram_max_match_window_size: Option<usize>,
    /// NGRAM: branches per node for the longest match (default 1).
    #[arg(long)]
    pub speculative_ngram_min_bfs_breadth: Option<usize>,
    /// NGRAM: branches per node for the shortest match (default 10).
    #[arg(long)]
    pub speculative_ngram_max_bfs_breadth: Option<usize>,
    /// NGRAM: tokens kept after a match, the deepest draft (default 18).
    #[arg(long)]
    pub speculative_ngram_branch_length: Option<usize>,
    /// NGRAM: nodes of the process-wide trie before it is cleared (default 1,000,000).
    #[arg(long)]
    pub speculative_ngram_capacity: Option<usize>,
}

fn parse_alg(s: &str) -> Result<SpecAlgorithm, String> {
    s.parse()
}

fn parse_score(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        Ok(v) => Err(format!("{v} is not a probability (0 to 1)")),
        Err(e) => Err(format!("`{s}`: {e}")),
    }
}

impl SpecArgs {
    /// The tree implied by the flags: SGLang's (5, 4, 8) for what is unset;
    /// with topk 1 and no token count, a chain of steps + 1.
    pub fn tree(&self) -> TreeSpec {
        let d = TreeSpec::default();
        let num_steps = self.speculative_num_steps.unwrap_or(d.num_steps);
        let topk = self.speculative_eagle_topk.unwrap_or(d.topk);
        let num_draft_tokens = self.speculative_num_draft_tokens.unwrap_or(if topk == 1 { num_steps + 1 } else { d.num_draft_tokens });
        TreeSpec { num_steps, topk, num_draft_tokens }
    }

    /// Whether any of the three tree flags was given.
    pub fn tree_flags_given(&self) -> bool {
        self.speculative_num_steps.is_some() || self.speculative_eagle_topk.is_some() || self.speculative_num_draft_tokens.is_some()
    }

    /// Fills in the shipped head's defaults when EAGLE drafts with it (no
    /// `--speculative-draft-model-path`); `find_head` returns its directory,
    /// or `None` when the target has no shipped head. Used by `aerie generate` and
    /// `aerie draft-worker`, so both run the shipped head the same way:
    ///
    /// - the token map, unless given, is the head's 2,048 most frequent
    ///   answer tokens (`hot_vocab_2048.json`): on CPU a smaller draft
    ///   lm_head makes a round cheaper (0.6 ms instead of 1.4 ms) and τ at
    ///   the default chain rises slightly (docs/benchmarks.md, "A smaller hot
    ///   vocabulary"); the full 8,192-id list is kept for wide trees;
    /// - with no tree flag, the tree is a (1, 1, 2) chain and the minimum
    ///   draft score 0.3 unless given: the fastest setting measured on CPU,
    ///   where a verify costs nearly one decode per extra row, so SGLang's
    ///   (5, 4, 8) runs slower than plain decoding. Any tree flag gives
    ///   SGLang's defaults for the rest, and a score of 0.
    pub fn apply_shipped_head_defaults(&mut self, find_head: impl FnOnce() -> Option<PathBuf>) {
        if self.speculative_algorithm != Some(SpecAlgorithm::Eagle) || self.speculative_draft_model_path.is_some() {
            return;
        }
        // Looked up only here: plain decoding never probes for the head.
        let Some(dir) = find_head() else { return };
        if self.speculative_token_map.is_none() {
            self.speculative_token_map = ["hot_vocab_2048.json", "hot_vocab.json"].into_iter().map(|f| dir.join(f)).find(|p| p.is_file());
        }
        if !self.tree_flags_given() {
            self.speculative_num_steps = Some(1);
            self.speculative_eagle_topk = Some(1);
            self.speculative_num_draft_tokens = Some(2);
            self.speculative_min_draft_score.get_or_insert(SHIPPED_MIN_DRAFT_SCORE);
        }
    }

    /// When EAGLE (or NEXTN) has no draft path and the target checkpoint
    /// `model_path` carries its own MTP layers, drafts with them: the draft
    /// path becomes the target's directory and, with no tree flag, the tree
    /// is the (1, 1, 2) chain SGLang recommends for MiMo's MTP. Returns
    /// whether it did; the shipped-head defaults then no longer apply.
    pub fn apply_mtp_defaults(&mut self, model_path: &str) -> bool {
        if self.speculative_algorithm != Some(SpecAlgorithm::Eagle) || self.speculative_draft_model_path.is_some() {
            return false;
        }
        let Some(dir) = aerie_draft_worker::builtin_mtp(model_path) else { return false };
        self.speculative_draft_model_path = Some(dir);
        if !self.tree_flags_given() {
            self.speculative_num_steps = Some(1);
            self.speculative_eagle_topk = Some(1);
            self.speculative_num_draft_tokens = Some(2);
        }
        true
    }

    /// Draft options, or `None` when speculation is off.
    pub fn options(&self) -> Option<DraftOptions> {
        let algorithm = self.speculative_algorithm?;
        let d = NgramConfig::default();
        let tree = self.tree();
        let ngram = NgramConfig {
            min_match_window: self.speculative_ngram_min_match_window_size.unwrap_or(d.min_match_window),
            max_match_window: self.speculative_ngram_max_match_window_size.unwrap_or(d.max_match_window),
            min_bfs_breadth: self.speculative_ngram_min_bfs_breadth.unwrap_or(d.min_bfs_breadth),
            max_bfs_breadth: self.speculative_ngram_max_bfs_breadth.unwrap_or(d.max_bfs_breadth),
            branch_length: self.speculative_ngram_branch_length.unwrap_or(d.branch_length),
            capacity: self.speculative_ngram_capacity.unwrap_or(d.capacity),
            num_draft_tokens: tree.num_draft_tokens,
        };
        Some(DraftOptions { algorithm, draft_model_path: self.speculative_draft_model_path.clone(), tree, token_map: self.speculative_token_map.clone(), ngram, min_draft_score: self.speculative_min_draft_score.unwrap_or(0.0) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head_dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for f in ["hot_vocab.json", "hot_vocab_2048.json"] {
            std::fs::write(d.path().join(f), "[1,2,3]").unwrap();
        }
        d
    }

    fn eagle() -> SpecArgs {
        SpecArgs { speculative_algorithm: Some(SpecAlgorithm::Eagle), ..Default::default() }
    }

    #[test]
    fn eagle_with_the_shipped_head_and_no_tree_flags_is_the_fast_chain() {
        let d = head_dir();
        let mut s = eagle();
        s.apply_shipped_head_defaults(|| Some(d.path().to_path_buf()));
        let o = s.options().unwrap();
        assert_eq!((o.tree.num_steps, o.tree.topk, o.tree.num_draft_tokens), (1, 1, 2));
        assert_eq!(o.min_draft_score, SHIPPED_MIN_DRAFT_SCORE);
        assert_eq!(o.token_map.as_deref(), Some(d.path().join("hot_vocab_2048.json").as_path()));
    }

    #[test]
    fn given_flags_win_over_the_shipped_defaults() {
        let d = head_dir();
        let mut s = SpecArgs { speculative_num_steps: Some(3), speculative_eagle_topk: Some(1), ..eagle() };
        s.apply_shipped_head_defaults(|| Some(d.path().to_path_buf()));
        let o = s.options().unwrap();
        assert_eq!((o.tree.num_steps, o.tree.num_draft_tokens), (3, 4), "a tree flag replaces the chain");
        assert_eq!(o.min_draft_score, 0.0, "SGLang's fixed tree unless a score is asked for");
        assert!(o.token_map.unwrap().ends_with("hot_vocab_2048.json"), "the small map still applies");
        let map = PathBuf::from("/elsewhere/map.json");
        let mut s = SpecArgs { speculative_min_draft_score: Some(0.5), speculative_token_map: Some(map.clone()), ..eagle() };
        s.apply_shipped_head_defaults(|| Some(d.path().to_path_buf()));
        let o = s.options().unwrap();
        assert_eq!((o.tree.num_steps, o.tree.num_draft_tokens, o.min_draft_score), (1, 2, 0.5));
        assert_eq!(o.token_map, Some(map));
    }

    #[test]
    fn other_drafters_keep_sglang_defaults() {
        let d = head_dir();
        for mut s in [
            SpecArgs { speculative_draft_model_path: Some("/some/head".into()), ..eagle() },
            SpecArgs { speculative_algorithm: Some(SpecAlgorithm::Ngram), ..Default::default() },
            SpecArgs::default(),
        ] {
            let before = format!("{s:?}");
            let probed = std::cell::Cell::new(false);
            s.apply_shipped_head_defaults(|| {
                probed.set(true);
                Some(d.path().to_path_buf())
            });
            assert_eq!(format!("{s:?}"), before);
            assert!(!probed.get(), "only EAGLE without a head path looks for the shipped head: {before}");
        }
        let mut s = eagle();
        s.apply_shipped_head_defaults(|| None);
        let o = s.options().unwrap();
        assert_eq!((o.tree.num_steps, o.tree.topk, o.tree.num_draft_tokens), (5, 4, 8), "no shipped head: SGLang's tree");
        assert_eq!(o.token_map, None);
    }

    #[test]
    fn a_target_with_mtp_layers_drafts_with_them_unless_told_otherwise() {
        let d = tempfile::tempdir().unwrap();
        let cfg = serde_json::json!({"architectures": ["MiMoForCausalLM"], "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 64, "num_nextn_predict_layers": 1});
        std::fs::write(d.path().join("config.json"), cfg.to_string()).unwrap();
        let w = vec![0u8; 16 * 32 * 4];
        let t = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![16, 32], &w).unwrap();
        safetensors::serialize_to_file(vec![("model.mtp_layers.0.input_proj.weight", t)], None, &d.path().join("model.safetensors")).unwrap();
        let path = d.path().to_string_lossy().to_string();
        let mut s = eagle();
        assert!(s.apply_mtp_defaults(&path));
        // Then the shipped head is not looked for.
        s.apply_shipped_head_defaults(|| panic!("no shipped head for an MTP target"));
        let o = s.options().unwrap();
        assert_eq!(o.draft_model_path.as_deref(), Some(d.path()));
        assert_eq!((o.tree.num_steps, o.tree.topk, o.tree.num_draft_tokens), (1, 1, 2), "SGLang's MiMo recipe");
        let mut s = SpecArgs { speculative_num_steps: Some(3), ..eagle() };
        assert!(s.apply_mtp_defaults(&path));
        assert_eq!(s.tree().num_steps, 3, "tree flags are kept");
        for mut s in [SpecArgs { speculative_draft_model_path: Some("/some/head".into()), ..eagle() }, SpecArgs { speculative_algorithm: Some(SpecAlgorithm::Ngram), ..Default::default() }] {
            assert!(!s.apply_mtp_defaults(&path), "a given head or another drafter wins: {s:?}");
        }
        // Without num_nextn_predict_layers (or with a GGUF name) nothing changes.
        std::fs::write(d.path().join("config.json"), serde_json::json!({"architectures": ["Qwen2ForCausalLM"]}).to_string()).unwrap();
        assert!(!eagle().apply_mtp_defaults(&path));
        assert!(!eagle().apply_mtp_defaults("smollm2"));
    }
}
