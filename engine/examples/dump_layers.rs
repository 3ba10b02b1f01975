//! Diagnostic: runs one prompt (ids as a JSON list in argv[1]) through
//! SmolLM2 and writes, as raw little-endian f32, the residual stream after
//! every layer (layers × n × hidden) and then the last row's logits, to
//! argv[2]. tests/oracle/dump_llama_layers.py writes the same from llama.cpp.
use aerie_engine::{AttnMask, DType, Engine, ForwardOptions, LogitsRows, SeqInput};
use std::io::Write;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let ids: Vec<u32> = serde_json::from_str(&std::fs::read_to_string(&args[1]).unwrap()).unwrap();
    let e = Engine::load("smollm2", DType::Auto).unwrap();
    let m = &e.model;
    let layers = m.config.num_layers;
    let mut cache = m.new_cache();
    let opts = ForwardOptions { want_hidden: false, aux_layers: (0..layers).collect() };
    let mut batch = [SeqInput { cache: &mut cache, tokens: &ids, positions: None, mask: AttnMask::Causal, logits: LogitsRows::Last }];
    let out = m.forward(&mut batch, &opts).unwrap();
    let mut f = std::io::BufWriter::new(std::fs::File::create(&args[2]).unwrap());
    for a in &out[0].aux {
        for v in a {
            f.write_all(&v.to_le_bytes()).unwrap();
        }
    }
    for v in &out[0].logits {
        f.write_all(&v.to_le_bytes()).unwrap();
    }
}
