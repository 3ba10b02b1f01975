//! Profiling aid: scores a k-token batch (logits for every row) after 256
//! cached tokens, `iters` times, and prints the median milliseconds. Run it
//! under `perf record` to see where a verify step's time goes.
//! Usage: verify_loop [k=8] [iters=200]
use aerie_engine::{AttnMask, DType, Engine, ForwardOptions, LogitsRows, SeqInput};
use std::time::Instant;

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let k = args.first().copied().unwrap_or(8);
    let iters = args.get(1).copied().unwrap_or(200);
    let e = Engine::load("smollm2", DType::Auto).expect("load smollm2");
    let m = &e.model;
    let ids: Vec<u32> = (0..256 + k as u32).map(|i| 100 + (i * 37) % 20000).collect();
    let opts = ForwardOptions::default();
    let mut cache = m.new_cache();
    let mut pre = [SeqInput { cache: &mut cache, tokens: &ids[..256], positions: None, mask: AttnMask::Causal, logits: LogitsRows::None }];
    m.forward(&mut pre, &opts).expect("prefix");
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t0 = Instant::now();
        let mut step = [SeqInput { cache: &mut cache, tokens: &ids[256..], positions: None, mask: AttnMask::Causal, logits: LogitsRows::All }];
        m.forward(&mut step, &opts).expect("verify");
        times.push(t0.elapsed().as_secs_f64() * 1e3);
        cache.truncate(256);
    }
    times.sort_by(f64::total_cmp);
    println!("k={k}: median {:.2} ms over {iters}", times[iters / 2]);
}
