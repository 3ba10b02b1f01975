//! Aerie's drafters. Each implements the engine's
//! [`Proposer`](aerie_engine::spec::Proposer) trait:
//!
//! - [`eagle::EagleProposer`]: EAGLE-1/2 and EAGLE-3 heads on target features;
//! - [`standalone::StandaloneProposer`]: a separate small language model;
//! - [`ngram::NgramProposer`]: n-gram matches over the request and a shared trie.
//!
//! Model-based drafters grow EAGLE-2 dynamic trees ([`tree_search`]).
//! [`service`] serves them to target workers over `aerie.v1.DraftService`.

pub mod eagle;
pub mod error;
pub mod ngram;
pub mod random_head;
pub mod service;
pub mod standalone;
pub mod token_map;
pub mod train;
pub mod tree_search;

pub use error::{DraftError, Result};

use aerie_engine::spec::{Proposer, TreeSpec};
use aerie_engine::{DType, Engine, Model, Tokenizer};
use aerie_kernels::cuda::device::Device;
use ngram::{NgramConfig, NgramProposer, NgramTrie};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// `--speculative-algorithm` values, as SGLang names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecAlgorithm {
    /// EAGLE-1/2 head, or a target's own MTP layers (`NEXTN` is an alias,
    /// as in SGLang).
    Eagle,
    Eagle3,
    Ngram,
    Standalone,
}

impl std::str::FromStr for SpecAlgorithm {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_uppercase().as_str() {
            "EAGLE" | "NEXTN" => Ok(SpecAlgorithm::Eagle),
            "EAGLE3" => Ok(SpecAlgorithm::Eagle3),
            "NGRAM" => Ok(SpecAlgorithm::Ngram),
            "STANDALONE" => Ok(SpecAlgorithm::Standalone),
            other => Err(format!("unknown speculative algorithm `{other}` (EAGLE, EAGLE3, NEXTN, NGRAM, STANDALONE)")),
        }
    }
}

/// Everything needed to build proposers for one target.
#[derive(Debug, Clone)]
pub struct DraftOptions {
    pub algorithm: SpecAlgorithm,
    /// `--speculative-draft-model-path`: a head directory (EAGLE/EAGLE3) or a
    /// model (STANDALONE: GGUF file, HF directory or a known name).
    pub draft_model_path: Option<PathBuf>,
    pub tree: TreeSpec,
    /// `--speculative-token-map`.
    pub token_map: Option<PathBuf>,
    pub ngram: NgramConfig,
    /// `--speculative-min-draft-score`: model drafters neither expand nor
    /// verify a node whose path probability is below this. 0 (the default)
    /// keeps SGLang's fixed-size trees. N-gram drafts ignore it.
    pub min_draft_score: f32,
}

/// The checkpoint directory `model_path` names, when it carries MTP layers
/// of its own (MiMo, or NextN layers after its decoder layers): EAGLE and
/// NEXTN without `--speculative-draft-model-path` draft with them.
/// A config that announces MTP layers whose first projection is not in the
/// files (a conversion that dropped them) does not count.
pub fn builtin_mtp(model_path: &str) -> Option<PathBuf> {
    let dir = std::path::Path::new(model_path);
    let ck = eagle::mtp::MtpCheckpoint::detect(dir).ok()??;
    let st = aerie_engine::loader::hf::SafetensorsDir::open(dir).ok()?;
    st.has(&ck.names(0).input_proj()).then(|| dir.to_path_buf())
}

/// The EAGLE head Aerie trained and ships for `target`, if it is SmolLM2-135M
/// and the head is found: under `$AERIE_MODELS_DIR`, in a `models/` directory
/// above the running binary (a source checkout's `target/release/aerie`), or
/// in the source tree this crate was built from. `--speculative-algorithm
/// EAGLE` without `--speculative-draft-model-path` uses it.
pub fn shipped_head(target: &Model) -> Option<PathBuf> {
    let c = &target.config;
    if (c.hidden_size, c.num_layers, c.vocab_size) != (576, 30, 49152) {
        return None;
    }
    let name = "smollm2-135m-eagle";
    let mut roots: Vec<PathBuf> = std::env::var_os("AERIE_MODELS_DIR").map(PathBuf::from).into_iter().collect();
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(|a| a.join("models")));
    }
    roots.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models"));
    roots.into_iter().map(|r| r.join(name)).find(|d| d.join("config.json").is_file() && d.join("model.safetensors").is_file())
}

/// Fewest KV tokens a STANDALONE draft model on a device gets.
const STANDALONE_MIN_KV_TOKENS: usize = 8192;

/// What a factory shares between the proposers it builds.
enum Shared {
    /// A head, and any further MTP layers chained after it.
    Eagle(Arc<eagle::EagleHead>, Vec<Arc<eagle::EagleHead>>),
    Standalone(Arc<Model>),
    Ngram(Arc<Mutex<NgramTrie>>),
}

/// Loads a drafter once and hands out one proposer per request.
pub struct ProposerFactory {
    opts: DraftOptions,
    target: Arc<Model>,
    shared: Shared,
    /// The device the drafter runs on, if any: a target on the same one
    /// may hand features over through CUDA IPC.
    device: Option<Arc<dyn Device>>,
}

impl ProposerFactory {
    /// Loads and checks the drafter for `target`.
    pub fn new(opts: DraftOptions, target: Arc<Model>, target_tokenizer: &Tokenizer) -> Result<Self> {
        Self::new_on(opts, target, target_tokenizer, None)
    }

    /// [`Self::new`], with the drafter's forward passes on a CUDA device
    /// (a GPU or the interpreter) when `device` gives one and a KV pool size
    /// in tokens: an EAGLE/EAGLE-3/MTP head's layers and lm_head, or a
    /// STANDALONE draft model. N-gram drafting has nothing to place.
    pub fn new_on(opts: DraftOptions, target: Arc<Model>, target_tokenizer: &Tokenizer, device: Option<(Arc<dyn Device>, usize)>) -> Result<Self> {
        let device_handle = device.as_ref().map(|(d, _)| d.clone());
        // A draft tree step on a device attends to the committed prefix plus
        // at most 64 uncommitted rows (the attention kernel's mask bits).
        if device.is_some() && matches!(opts.algorithm, SpecAlgorithm::Eagle | SpecAlgorithm::Eagle3) {
            let rows = opts.tree.num_steps.saturating_sub(1) * opts.tree.topk;
            if rows > aerie_engine::cuda::MAX_TREE_NODES {
                return Err(DraftError::BadSetting(format!(
                    "on a CUDA device a draft tree holds at most {} uncommitted rows; (--speculative-num-steps {} - 1) x --speculative-eagle-topk {} = {rows}",
                    aerie_engine::cuda::MAX_TREE_NODES,
                    opts.tree.num_steps,
                    opts.tree.topk
                )));
            }
        }
        // On a device a head keeps the checkpoint's values (bf16 there);
        // on the CPU its matrices become Q8_0 (see `quantized_q8`).
        let place = |h: eagle::EagleHead, first: Option<&eagle::EagleHead>| -> Result<eagle::EagleHead> {
            match &device {
                Some((dev, tokens)) => h.to_device_sharing(&target, dev.clone(), *tokens, first),
                None => Ok(h.quantized_q8()),
            }
        };
        let need_path = || {
            opts.draft_model_path.clone().ok_or_else(|| {
                let shipped = if opts.algorithm == SpecAlgorithm::Eagle { " (Aerie ships one only for SmolLM2-135M, in models/smollm2-135m-eagle)" } else { "" };
                DraftError::BadSetting(format!("--speculative-algorithm {:?} needs --speculative-draft-model-path{shipped}", opts.algorithm))
            })
        };
        if opts.algorithm != SpecAlgorithm::Ngram {
            opts.tree.validate()?;
        }
        if opts.token_map.is_some() && opts.algorithm != SpecAlgorithm::Eagle {
            return Err(DraftError::BadSetting("--speculative-token-map applies to --speculative-algorithm EAGLE only".into()));
        }
        let shared = match opts.algorithm {
            SpecAlgorithm::Eagle | SpecAlgorithm::Eagle3 => {
                // Only EAGLE has a shipped default, and only an unset path looks for it.
                let dir = match opts.draft_model_path.clone().or_else(|| (opts.algorithm == SpecAlgorithm::Eagle).then(|| shipped_head(&target)).flatten()) {
                    Some(d) => d,
                    None => need_path()?,
                };
                let map = opts.token_map.as_deref().map(token_map::TokenMap::load).transpose()?;
                // A checkpoint with MTP layers (the target's own, or a
                // separate NextN one) drafts with its first MTP layer.
                let mut chain = Vec::new();
                let head = match eagle::mtp::MtpCheckpoint::detect(&dir)? {
                    Some(ck) if opts.algorithm == SpecAlgorithm::Eagle => {
                        // Further MTP layers draft the deeper levels, as far as the tree goes.
                        let mut layers = eagle::EagleHead::load_mtp_layers(&ck, ck.num_layers.min(opts.tree.num_steps).max(1), &target, map.as_ref())?.into_iter();
                        let Some(first) = layers.next() else { return Err(DraftError::BadSetting(format!("{} announces no MTP layer", dir.display()))) };
                        chain.extend(layers);
                        first
                    }
                    Some(_) => return Err(DraftError::BadSetting(format!("{} holds MTP layers; use --speculative-algorithm EAGLE or NEXTN", dir.display()))),
                    None => eagle::EagleHead::load(&dir, &target, map.as_ref())?,
                };
                let want = if opts.algorithm == SpecAlgorithm::Eagle3 { eagle::EagleKind::Eagle3 } else { eagle::EagleKind::Eagle };
                if head.kind() != want && head.kind() != eagle::EagleKind::Mtp {
                    return Err(DraftError::BadSetting(format!(
                        "{} holds an {:?} head but --speculative-algorithm asks for {:?}",
                        dir.display(),
                        head.kind(),
                        opts.algorithm
                    )));
                }
                // The chain's layers share the first's lm_head rows on a device.
                let head = place(head, None)?;
                let chain = chain.into_iter().map(|l| place(l, Some(&head)).map(Arc::new)).collect::<Result<Vec<_>>>()?;
                Shared::Eagle(Arc::new(head), chain)
            }
            SpecAlgorithm::Standalone => {
                let p = need_path()?;
                let e = Engine::load(&p.to_string_lossy(), DType::Auto)?;
                if e.tokenizer.hash() != target_tokenizer.hash() {
                    return Err(DraftError::BadSetting(format!("STANDALONE draft model {} has a different tokenizer from the target", p.display())));
                }
                match &device {
                    Some((dev, tokens)) => {
                        let m = Arc::try_unwrap(e.model).map_err(|_| DraftError::BadSetting("the STANDALONE draft model is shared; it cannot move to the device".into()))?;
                        // `tokens` is sized for one head layer: a model of
                        // L layers gets the same memory (tokens / L), but
                        // room for a few long sequences at least.
                        let pool = (*tokens / m.config.num_layers.max(1)).max(STANDALONE_MIN_KV_TOKENS);
                        Shared::Standalone(Arc::new(m.to_device(dev.clone(), pool)?))
                    }
                    None => Shared::Standalone(e.model),
                }
            }
            SpecAlgorithm::Ngram => {
                opts.ngram.validate().map_err(DraftError::BadSetting)?;
                Shared::Ngram(NgramProposer::shared_trie(&opts.ngram))
            }
        };
        Ok(ProposerFactory { opts, target, shared, device: device_handle })
    }

    /// A factory around an already-loaded STANDALONE draft model (e.g. the
    /// target itself, for tests and self-drafting).
    pub fn standalone(draft: Arc<Model>, target: Arc<Model>, tree: TreeSpec) -> Result<Self> {
        tree.validate()?;
        let opts = DraftOptions { algorithm: SpecAlgorithm::Standalone, draft_model_path: None, tree, token_map: None, ngram: NgramConfig::default(), min_draft_score: 0.0 };
        Ok(ProposerFactory { opts, target, shared: Shared::Standalone(draft), device: None })
    }

    /// The device the drafter runs on (`None` on the CPU).
    pub fn device(&self) -> Option<&Arc<dyn Device>> {
        self.device.as_ref()
    }

    /// A fresh proposer for one request.
    pub fn proposer(&self) -> Box<dyn Proposer> {
        match &self.shared {
            Shared::Eagle(h, chain) => Box::new(eagle::EagleProposer::new(h.clone(), self.target.clone(), self.opts.tree).with_chain(chain).with_min_score(self.opts.min_draft_score)),
            Shared::Standalone(m) => {
                Box::new(standalone::StandaloneProposer::new(m.clone(), self.target.config.vocab_size, self.opts.tree).with_min_score(self.opts.min_draft_score))
            }
            Shared::Ngram(t) => Box::new(NgramProposer::new(self.opts.ngram.clone(), t.clone())),
        }
    }

    pub fn options(&self) -> &DraftOptions {
        &self.opts
    }
}
