//! libFuzzer target: the router's request parser on arbitrary bytes.
//! The first byte picks the endpoint (even: chat completions, odd:
//! completions); the rest is the body. A panic or a broken parser contract
//! (`RouterState::check_parse`) is a crash.
#![no_main]

use aerie_engine::{DType, Engine};
use aerie_router::{RouterConfig, RouterState};
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};

struct Fixture {
    rt: tokio::runtime::Runtime,
    state: Arc<RouterState>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let state = {
            let _g = rt.enter();
            let e = Engine::load("smollm2", DType::Auto).unwrap();
            let ctx = e.model.config.max_position_embeddings;
            let Engine { tokenizer, template, .. } = e;
            let cfg = RouterConfig { targets: vec!["http://127.0.0.1:9".into()], ..Default::default() };
            RouterState::new(cfg, tokenizer, template, ctx, None).unwrap()
        };
        Fixture { rt, state }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else { return };
    let f = fixture();
    let _g = f.rt.enter();
    if let Err(broken) = f.state.check_parse(mode % 2 == 0, body) {
        panic!("{broken}");
    }
});
