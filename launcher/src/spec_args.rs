//! Speculative-decoding flags, named and defaulted as SGLang's.

use aerie_draft_worker::ngram::NgramConfig;
use aerie_draft_worker::{DraftOptions, SpecAlgorithm};
use aerie_engine::spec::TreeSpec;
use clap::Args;
use std::path::PathBuf;

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
