//! `aerie bench collective`: latency and bandwidth of the shared-memory
//! all-reduce of a tensor-parallel group, by message size. Rank 0 runs here
//! and starts the other ranks as child processes of this binary (the
//! `--rank` form), as a group of target-worker ranks would run.

use aerie_target_worker::collective::shm::{ShmCollective, DEFAULT_SLOT_BYTES};
use aerie_target_worker::collective::{Collective, GroupIdentity};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct CollectiveBenchArgs {
    /// Ranks in the group.
    #[arg(long, default_value_t = 2)]
    pub world: usize,
    /// Message sizes in floats.
    #[arg(long, value_delimiter = ',', default_value = "1,64,576,4096,36864,262144,1048576,4194304")]
    pub sizes: Vec<usize>,
    /// Timed all-reduces per size (after warm-up); the median is reported.
    #[arg(long, default_value_t = 200)]
    pub reps: usize,
    /// Internal: this process is rank N of group --group.
    #[arg(long, hide = true)]
    pub rank: Option<usize>,
    #[arg(long, hide = true)]
    pub group: Option<String>,
}

fn identity(world: usize) -> GroupIdentity {
    GroupIdentity { world, model: "bench".into(), version: env!("CARGO_PKG_VERSION").into() }
}

fn rounds(c: &mut ShmCollective, sizes: &[usize], reps: usize) -> Result<Vec<f64>> {
    let mut medians = Vec::new();
    for &n in sizes {
        let mut buf: Vec<f32> = (0..n).map(|i| (i % 97) as f32).collect();
        let reps = if n >= 1 << 20 { reps.min(20) } else { reps };
        for _ in 0..3 {
            c.all_reduce_sum(&mut buf)?;
        }
        let mut t = Vec::with_capacity(reps);
        for _ in 0..reps {
            let s = Instant::now();
            c.all_reduce_sum(&mut buf)?;
            t.push(s.elapsed().as_secs_f64());
        }
        t.sort_by(|a, b| a.total_cmp(b));
        medians.push(t[t.len() / 2]);
    }
    Ok(medians)
}

pub fn run(a: CollectiveBenchArgs) -> Result<()> {
    let dir = std::path::Path::new("/dev/shm");
    if let (Some(rank), Some(group)) = (a.rank, &a.group) {
        let mut c = ShmCollective::join(dir, group, rank, &identity(a.world), Duration::from_secs(30))?;
        rounds(&mut c, &a.sizes, a.reps)?;
        return Ok(());
    }
    if !(2..=8).contains(&a.world) {
        bail!("--world must be 2 to 8");
    }
    let group = format!("bench-{}", std::process::id());
    let exe = std::env::current_exe().context("locating the aerie binary")?;
    let sizes: Vec<String> = a.sizes.iter().map(|s| s.to_string()).collect();
    let mut children = Vec::new();
    for r in 1..a.world {
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(["bench", "collective", "--world", &a.world.to_string(), "--reps", &a.reps.to_string(), "--sizes", &sizes.join(",")]);
        cmd.args(["--rank", &r.to_string(), "--group", &group]);
        children.push(cmd.spawn().context("starting a rank")?);
    }
    let mut c = ShmCollective::create(dir, &group, &identity(a.world), DEFAULT_SLOT_BYTES, Duration::from_secs(30))?;
    let medians = rounds(&mut c, &a.sizes, a.reps)?;
    for mut ch in children {
        ch.wait()?;
    }
    println!("shared-memory all-reduce, {} ranks (processes), {} KiB slots; median of {} calls (20 for 1M floats and up)", a.world, DEFAULT_SLOT_BYTES >> 10, a.reps);
    println!("| floats | bytes | latency µs | algorithm GB/s |\n|---|---|---|---|");
    for (&n, &t) in a.sizes.iter().zip(&medians) {
        let bytes = n * 4;
        println!("| {n} | {bytes} | {:.1} | {:.2} |", t * 1e6, bytes as f64 / t / 1e9);
    }
    Ok(())
}
