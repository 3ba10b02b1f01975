//! `aerie bench tp`: batch-1 greedy decoding of SmolLM2 (or any model) on
//! the f32 path, tensor-parallel over `--world` rank processes with
//! `--threads-per-rank` threads each, against the unsharded model with
//! `world × threads-per-rank` threads in one process: the same cores either
//! way. Rank 0 decodes and the others follow its forward passes, as in a
//! target worker's group (each step's plan included). The ranks are child
//! processes of this binary (the `--rank` form); rank 0 reports.

use aerie_engine::{DType, Engine, Model};
use aerie_target_worker::collective::shm::{ShmCollective, DEFAULT_SLOT_BYTES};
use aerie_target_worker::collective::{GroupIdentity, GroupReduce};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::sync::Arc;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct TpBenchArgs {
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    #[arg(long, default_value_t = 2)]
    pub world: usize,
    /// Weights: `float32` (dequantized) or `auto` (the checkpoint's own
    /// storage, e.g. SmolLM2's Q4_1 blocks, which shards keep).
    #[arg(long, default_value = "float32", value_parser = ["float32", "auto"])]
    pub dtype: String,
    #[arg(long, default_value_t = 1)]
    pub threads_per_rank: usize,
    #[arg(long, default_value_t = 128)]
    pub prompt_len: usize,
    #[arg(long, default_value_t = 64)]
    pub decode_steps: usize,
    /// Internal: this process is rank N of group --group.
    #[arg(long, hide = true)]
    pub rank: Option<usize>,
    #[arg(long, hide = true)]
    pub group: Option<String>,
}

fn dtype(a: &TpBenchArgs) -> DType {
    if a.dtype == "auto" {
        DType::Auto
    } else {
        DType::F32
    }
}

/// (prefill ms, median decode ms, the tokens).
fn decode(model: &Model, prompt_len: usize, steps: usize) -> Result<(f64, f64, Vec<u32>)> {
    let r = crate::bench_forward::greedy_decode(model, prompt_len, steps, 0)?;
    Ok((r.prefill_ms, r.decode_ms, r.ids))
}

pub fn run(a: TpBenchArgs) -> Result<()> {
    let dir = std::path::Path::new("/dev/shm");
    if let (Some(rank), Some(group)) = (a.rank, &a.group) {
        let e = Engine::load(&a.model, dtype(&a))?;
        let id = GroupIdentity { world: a.world, model: e.model.fingerprint.clone(), version: env!("CARGO_PKG_VERSION").into() };
        let c = if rank == 0 {
            ShmCollective::create(dir, group, &id, DEFAULT_SLOT_BYTES, Duration::from_secs(60))?
        } else {
            ShmCollective::join(dir, group, rank, &id, Duration::from_secs(60))?
        };
        let shard = aerie_engine::tp::shard(&e.model, Arc::new(GroupReduce::new(Box::new(c))))?;
        drop(e);
        if rank > 0 {
            aerie_engine::tp::mirror::follow(&shard)?;
            return Ok(());
        }
        let (prefill, step, ids) = decode(&shard, a.prompt_len, a.decode_steps)?;
        aerie_engine::tp::mirror::stop(&shard)?;
        println!("{}", serde_json::json!({"prefill_ms": prefill, "decode_ms": step, "ids": ids}));
        return Ok(());
    }
    if !(2..=8).contains(&a.world) {
        bail!("--world must be 2 to 8");
    }
    let exe = std::env::current_exe().context("locating the aerie binary")?;
    let group = format!("bench-tp-{}", std::process::id());
    let common = |r: usize| {
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(["--threads", &a.threads_per_rank.to_string(), "bench", "tp", "--model", &a.model, "--world", &a.world.to_string(), "--dtype", &a.dtype]);
        cmd.args(["--prompt-len", &a.prompt_len.to_string(), "--decode-steps", &a.decode_steps.to_string(), "--rank", &r.to_string(), "--group", &group]);
        cmd
    };
    let mut children = Vec::new();
    for r in 1..a.world {
        children.push(common(r).stdout(std::process::Stdio::null()).spawn().context("starting a rank")?);
    }
    let out = common(0).output().context("running rank 0")?;
    for mut c in children {
        c.wait()?;
    }
    if !out.status.success() {
        bail!("rank 0 failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let tp: serde_json::Value = serde_json::from_slice(&out.stdout).context("rank 0's report")?;
    // The unsharded model with all the ranks' threads, in this process.
    let e = Engine::load(&a.model, dtype(&a))?;
    let (prefill, step, ids) = decode(&e.model, a.prompt_len, a.decode_steps)?;
    let same = tp["ids"].as_array().map(|v| v.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).collect::<Vec<_>>()) == Some(ids.clone());
    let tp_step = tp["decode_ms"].as_f64().unwrap_or(f64::NAN);
    println!("{} {}, batch-1 greedy decode, {}-token prompt, median of {} steps", a.model, a.dtype, a.prompt_len, a.decode_steps);
    println!("| setting | prefill ms | decode ms/step | tok/s |\n|---|---|---|---|");
    println!("| TP=1, {} threads | {prefill:.1} | {step:.2} | {:.1} |", aerie_kernels::cpu::pool::threads(), 1e3 / step);
    println!("| TP={}, {} thread(s) per rank | {:.1} | {tp_step:.2} | {:.1} |", a.world, a.threads_per_rank, tp["prefill_ms"].as_f64().unwrap_or(f64::NAN), 1e3 / tp_step);
    println!("TP={} / TP=1 decode speed: {:.2}x; greedy tokens {}", a.world, step / tp_step, if same { "identical" } else { "differ (a near-tie; see the f16 KV note in engine::tp)" });
    Ok(())
}
