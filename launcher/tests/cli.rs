//! The `aerie` binary as a user runs it: real processes, real model.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn aerie(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aerie")).args(args).env("AERIE_THREADS", "2").output().expect("run aerie")
}

fn model_path() -> PathBuf {
    let out = aerie(&["fetch-model", "smollm2"]);
    assert!(out.status.success(), "fetch-model failed: {}", String::from_utf8_lossy(&out.stderr));
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Runs generate on `path` and expects a clean failure naming `needle`.
fn expect_clean_error(path: &Path, needle: &str) {
    let out = aerie(&["generate", "--model", path.to_str().unwrap(), "--prompt", "hi", "--max-tokens", "2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure for {}", path.display());
    assert_ne!(out.status.code(), Some(101), "process panicked: {err}");
    assert!(!err.contains("panicked"), "process panicked: {err}");
    assert!(err.contains(needle), "error should mention `{needle}`: {err}");
}

#[test]
fn generate_json_is_greedy_and_deterministic() {
    let _g = crate::common::shared();
    let m = model_path();
    let run = || {
        let out = aerie(&["generate", "--model", m.to_str().unwrap(), "--prompt", "List three colors.", "--max-tokens", "24", "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let (a, b) = (run(), run());
    assert_eq!(a["token_ids"], b["token_ids"]);
    let n = a["token_ids"].as_array().unwrap().len();
    assert!(n > 0 && n <= 24);
    assert!(!a["text"].as_str().unwrap().is_empty());
    assert!(a["prompt_ids"].as_array().unwrap().len() > 10);
    assert!(a["stats"]["decode_tok_s"].as_f64().unwrap() > 0.0);
    // Peak RSS stays within the 350 MB budget.
    let rss = a["stats"]["peak_rss_mb"].as_f64().unwrap();
    assert!(rss < 350.0, "peak RSS {rss} MB");
}

#[test]
fn raw_mode_parses_special_tokens() {
    let _g = crate::common::shared();
    let m = model_path();
    let out = aerie(&["generate", "--model", m.to_str().unwrap(), "--raw", "--prompt", "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", "--max-tokens", "1", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<u64> = v["prompt_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
    assert_eq!(ids[0], 1, "<|im_start|> is one token (id 1)");
    assert_eq!(ids.iter().filter(|&&i| i == 1).count(), 2);
    assert!(ids.contains(&2), "<|im_end|> is one token (id 2)");
}

#[test]
fn sampling_with_seed_is_reproducible() {
    let _g = crate::common::shared();
    let m = model_path();
    let args = ["generate", "--model", m.to_str().unwrap(), "--prompt", "Tell me a story.", "--max-tokens", "16", "--temperature", "0.9", "--top-p", "0.95", "--seed", "42", "--json"];
    let a: serde_json::Value = serde_json::from_slice(&aerie(&args).stdout).unwrap();
    let b: serde_json::Value = serde_json::from_slice(&aerie(&args).stdout).unwrap();
    assert_eq!(a["token_ids"], b["token_ids"]);
}

#[test]
fn bad_model_files_fail_cleanly() {
    let _g = crate::common::shared();
    let good = std::fs::read(model_path()).unwrap();
    let dir = tempfile::tempdir().unwrap();

    let truncated = dir.path().join("truncated.gguf");
    std::fs::write(&truncated, &good[..good.len() / 2]).unwrap();
    expect_clean_error(&truncated, "truncated");

    let header_only = dir.path().join("header.gguf");
    std::fs::write(&header_only, &good[..4096]).unwrap();
    expect_clean_error(&header_only, "header.gguf");

    let magic = dir.path().join("magic.gguf");
    let mut bad = good[..1 << 20].to_vec();
    bad[..4].copy_from_slice(b"XXXX");
    std::fs::write(&magic, &bad).unwrap();
    expect_clean_error(&magic, "magic.gguf");

    let empty = dir.path().join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    expect_clean_error(&empty, "empty.gguf");

    expect_clean_error(&dir.path().join("missing.gguf"), "missing.gguf");

    // A HF directory whose tensor has the wrong shape.
    let hf = dir.path().join("hf");
    std::fs::create_dir(&hf).unwrap();
    std::fs::write(
        hf.join("config.json"),
        r#"{"architectures":["LlamaForCausalLM"],"hidden_size":64,"intermediate_size":128,"num_hidden_layers":1,
            "num_attention_heads":2,"num_key_value_heads":1,"vocab_size":32,"max_position_embeddings":64}"#,
    )
    .unwrap();
    let data = vec![0u8; 32 * 63 * 4];
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![32, 63], &data).unwrap();
    safetensors::serialize_to_file([("model.embed_tokens.weight", view)], None, &hf.join("model.safetensors")).unwrap();
    expect_clean_error(&hf, "model.embed_tokens.weight");

    // An unknown architecture.
    std::fs::write(hf.join("config.json"), r#"{"architectures":["GPTNeoXForCausalLM"],"hidden_size":64}"#).unwrap();
    expect_clean_error(&hf, "GPTNeoXForCausalLM");
}

fn generate_json(args: &[&str]) -> serde_json::Value {
    let out = aerie(args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `aerie generate --speculative-algorithm …` emits plain greedy's tokens
/// and reports SGLang's speculation counters.
#[test]
fn speculative_generate_matches_plain_and_reports_stats() {
    let _g = crate::common::shared();
    let m = model_path();
    let m = m.to_str().unwrap();
    let prompt = "Count from 1 to 30, separated by commas.";
    let base = ["generate", "--model", m, "--prompt", prompt, "--max-tokens", "60", "--ignore-eos", "--json"];
    let plain = generate_json(&base);
    let head = tempfile::tempdir().unwrap();
    let out = aerie(&["random-head", "--model", m, "--kind", "eagle3", "--draft-vocab-size", "4096", "--out", head.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let runs: Vec<Vec<&str>> = vec![
        vec!["--speculative-algorithm", "NGRAM"],
        vec!["--speculative-algorithm", "EAGLE3", "--speculative-draft-model-path", head.path().to_str().unwrap(), "--speculative-num-steps", "3", "--speculative-eagle-topk", "1"],
        vec!["--speculative-algorithm", "STANDALONE", "--speculative-draft-model-path", m],
        // The shipped head with no tree flag: `aerie serve`'s default setting.
        vec!["--speculative-algorithm", "EAGLE"],
    ];
    for extra in runs {
        let v = generate_json(&[&base[..], &extra[..]].concat());
        assert_eq!(v["token_ids"], plain["token_ids"], "{extra:?}");
        let s = &v["stats"];
        for k in ["spec_verify_ct", "spec_num_correct_drafts", "spec_num_proposed_drafts", "spec_accept_length", "spec_accept_rate", "spec_correct_drafts_histogram"] {
            assert!(!s[k].is_null(), "{extra:?}: stats lack {k}: {s}");
        }
        let verifies = s["spec_verify_ct"].as_u64().unwrap();
        let hist: u64 = s["spec_correct_drafts_histogram"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).sum();
        assert_eq!(hist, verifies, "{extra:?}: one histogram entry per verify");
        let tau = s["spec_accept_length"].as_f64().unwrap();
        assert!((tau - 59.0 / verifies as f64).abs() < 1e-9, "{extra:?}: accept length counts emitted tokens per verify");
        if extra[1] == "EAGLE3" {
            assert_eq!(v["speculative"]["num_draft_tokens"], 4, "topk 1 makes a chain of steps + 1");
        }
        if extra[1] == "EAGLE" {
            let sp = &v["speculative"];
            assert_eq!((sp["num_steps"].as_u64(), sp["eagle_topk"].as_u64(), sp["num_draft_tokens"].as_u64()), (Some(1), Some(1), Some(2)), "{sp}");
            assert_eq!(sp["min_draft_score"].as_f64(), Some(0.3), "{sp}");
            assert!(sp["token_map"].as_str().unwrap().ends_with("smollm2-135m-eagle/hot_vocab_2048.json"), "{sp}");
            assert!(tau > 1.0, "the trained head is accepted sometimes: tau {tau}");
        }
        if extra[1] == "STANDALONE" {
            assert!(tau > 3.0, "the target drafting for itself is accepted: tau {tau}");
        }
    }
}

#[test]
fn bad_speculative_settings_fail_cleanly() {
    let _g = crate::common::shared();
    let m = model_path();
    let m = m.to_str().unwrap();
    let cases: [(&[&str], &str); 4] = [
        // EAGLE alone would use the shipped SmolLM2 head; EAGLE-3 has none.
        (&["--speculative-algorithm", "EAGLE3"], "--speculative-draft-model-path"),
        (&["--speculative-algorithm", "STANDALONE", "--speculative-draft-model-path", m, "--speculative-num-steps", "2", "--speculative-eagle-topk", "2", "--speculative-num-draft-tokens", "9"], "impossible"),
        (&["--speculative-algorithm", "MEDUSA"], "unknown speculative algorithm"),
        (&["--speculative-algorithm", "EAGLE", "--speculative-draft-model-path", "/nonexistent/head"], "/nonexistent/head"),
    ];
    for (extra, needle) in cases {
        let out = aerie(&[&["generate", "--model", m, "--prompt", "hi", "--max-tokens", "4"][..], extra].concat());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} should fail");
        assert!(!err.contains("panicked"), "{extra:?} panicked: {err}");
        assert!(err.contains(needle), "{extra:?}: error should mention `{needle}`: {err}");
    }
}

#[test]
fn router_refuses_a_bad_worker_list_before_loading_anything() {
    let _g = crate::common::shared();
    let dir = tempfile::tempdir().unwrap();
    let misspelt = dir.path().join("misspelt.toml");
    std::fs::write(&misspelt, "target = [\"http://127.0.0.1:1\"]\n").unwrap();
    let no_scheme = dir.path().join("no_scheme.toml");
    std::fs::write(&no_scheme, "targets = [\"127.0.0.1:1\"]\n").unwrap();
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "drafts = [\"http://127.0.0.1:2\"]\n").unwrap();
    let missing = dir.path().join("missing.toml");
    let cases = [(&misspelt, "unknown field `target`"), (&no_scheme, "http://"), (&empty, "no target workers"), (&missing, "missing.toml")];
    for (file, needle) in cases {
        let out = aerie(&["router", "--port", "0", "--workers-file", file.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{file:?} should fail");
        assert!(!err.contains("panicked"), "{file:?} panicked: {err}");
        assert!(err.contains(needle), "{file:?}: error should mention `{needle}`: {err}");
    }
}

/// `aerie train-eagle` end to end through the binary, on a ShareGPT file cut
/// mid-record, with stderr a pipe (as under `tee` or CI): the progress of
/// both phases shows as plain lines, the head is written, and the draft
/// worker's code path loads it and stays lossless.
#[test]
fn train_eagle_through_a_pipe_reports_progress_and_writes_a_usable_head() {
    let _g = crate::common::shared();
    let m = model_path();
    let m = m.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("sharegpt.json");
    let record = |id: &str, q: &str, a: &str| format!(r#"{{"id":"{id}","conversations":[{{"from":"human","value":"{q}"}},{{"from":"gpt","value":"{a}"}}]}}"#);
    let complete = [record("a", "Name a color.", "Blue."), record("b", "Say hi.", "Hi!"), record("c", "Count to three.", "1, 2, 3.")];
    // The last record is cut mid-string, as in the PyPI package.
    std::fs::write(&data, format!("[{},\n{{\"id\":\"d\",\"conversations\":[{{\"from\":\"human\",\"value\":\"Tell me", complete.join(",\n"))).unwrap();
    let out_dir = dir.path().join("head");
    let out = Command::new(env!("CARGO_BIN_EXE_aerie"))
        .args(["train-eagle", "--model", m, "--data", data.to_str().unwrap(), "--out", out_dir.to_str().unwrap()])
        .args(["--conversations", "2", "--max-new-tokens", "6", "--epochs", "2", "--batch-seqs", "1", "--hot-vocab", "512", "--ttt-steps", "2", "--ce-weight", "0.5"])
        // The third record is held out: scored, never trained on.
        .args(["--val-conversations", "1", "--val-skip", "2"])
        .env("AERIE_THREADS", "2")
        .env("AERIE_PROGRESS_SECS", "0")
        .output()
        .expect("run aerie");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("3 complete records read (the file is cut"), "{err}");
    for line in ["features: 1/2, ", "features: 2/2, ", "held-out features: 1/1, ", "held-out at step 0: accuracy ", "held-out at step 4: accuracy ", "training: 1/4, loss ", "training: 4/4, loss "] {
        assert!(err.contains(line), "stderr lacks `{line}`: {err}");
    }
    let run: serde_json::Value = serde_json::from_slice(&std::fs::read(out_dir.join("train_run.json")).unwrap()).unwrap();
    assert_eq!(run["conversations"], 2, "{run}");
    assert_eq!(run["steps_this_run"], 4, "{run}");
    assert_eq!(run["train"]["ce_weight"], 0.5, "{run}");
    let val = std::fs::read_to_string(out_dir.join("val.csv")).unwrap();
    assert_eq!(val.lines().count(), 3, "a header, step 0 and the last step: {val}");
    let held_out_meta = std::fs::read_to_string(dir.path().join("head").join("features-val").join("meta.json")).unwrap();
    assert!(held_out_meta.contains("skip=2"), "{held_out_meta}");
    let losses = std::fs::read_to_string(out_dir.join("loss.csv")).unwrap();
    assert_eq!(losses.lines().count(), 5, "a header and one row per step: {losses}");
    let hot: Vec<u32> = serde_json::from_slice(&std::fs::read(out_dir.join("hot_vocab.json")).unwrap()).unwrap();
    let bad = aerie(&["train-eagle", "--model", m, "--data", data.to_str().unwrap(), "--out", out_dir.to_str().unwrap(), "--ce-weight=-1"]);
    let bad_err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && bad_err.contains("--ce-weight -1"), "{bad_err}");
    let overlap = aerie(&["train-eagle", "--model", m, "--data", data.to_str().unwrap(), "--out", out_dir.to_str().unwrap(), "--conversations", "2", "--val-conversations", "1", "--val-skip", "1"]);
    let overlap_err = String::from_utf8_lossy(&overlap.stderr);
    assert!(!overlap.status.success() && overlap_err.contains("overlap the training slice"), "{overlap_err}");
    assert!(!hot.is_empty() && hot.len() <= 512, "{} hot ids", hot.len());

    // The new head drafts, and greedy output stays the target's.
    let base = ["generate", "--model", m, "--prompt", "Name three colors.", "--max-tokens", "16", "--ignore-eos", "--json"];
    let plain = generate_json(&base);
    let spec = generate_json(&[&base[..], &["--speculative-algorithm", "EAGLE", "--speculative-draft-model-path", out_dir.to_str().unwrap(), "--speculative-num-steps", "2", "--speculative-eagle-topk", "2", "--speculative-num-draft-tokens", "4"]].concat());
    assert_eq!(spec["token_ids"], plain["token_ids"]);
    assert!(spec["stats"]["spec_verify_ct"].as_u64().unwrap() > 0, "{}", spec["stats"]);
}

/// `--device cuda` on a machine without an NVIDIA driver is one line on
/// stderr and a non-zero exit, before any loading; with
/// AERIE_CUDA_INTERPRET=1 the same command runs the CUDA path on the CPU,
/// and speculation there emits the CUDA path's plain greedy tokens; plain
/// decoding runs the library GEMM unless batch invariance is asked for.
#[test]
fn generate_on_the_cuda_device() {
    let _g = crate::common::shared();
    let m = model_path();
    let has_driver = ["/usr/lib/x86_64-linux-gnu/libcuda.so.1", "/usr/lib64/libcuda.so.1"].iter().any(|p| Path::new(p).exists());
    if !has_driver {
        let out = Command::new(env!("CARGO_BIN_EXE_aerie"))
            .args(["generate", "--model", m.to_str().unwrap(), "--prompt", "hi", "--device", "cuda"])
            .env_remove("AERIE_CUDA_INTERPRET")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line expected: {err}");
        assert!(err.contains("no NVIDIA driver") && err.contains("AERIE_CUDA_INTERPRET=1"), "{err}");
    }
    let bad = aerie(&["generate", "--model", m.to_str().unwrap(), "--prompt", "hi", "--device", "cuda:x"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("unknown device"));

    let run = |extra: &[&str]| {
        let mut args = vec!["generate", "--model", m.to_str().unwrap(), "--prompt", "Count from 1 to 10.", "--max-tokens", "10", "--json", "--device", "cuda"];
        args.extend_from_slice(extra);
        let out = Command::new(env!("CARGO_BIN_EXE_aerie")).args(&args).env("AERIE_CUDA_INTERPRET", "1").output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    // Plain decoding takes the library GEMM by default; with a drafter, or
    // asked for, the batch-invariant kernels; and speculation refuses the
    // library GEMM, which would not be lossless.
    let library = run(&[]);
    assert_eq!(library["stats"]["batch_invariant"], false, "{}", library["stats"]);
    assert_eq!(library["token_ids"].as_array().unwrap().len(), 10);
    let plain = run(&["--enable-deterministic-inference"]);
    let spec = run(&["--speculative-algorithm", "NGRAM"]);
    assert_eq!((plain["stats"]["batch_invariant"].as_bool(), spec["stats"]["batch_invariant"].as_bool()), (Some(true), Some(true)));
    assert_eq!(plain["token_ids"].as_array().unwrap().len(), 10);
    assert_eq!(plain["token_ids"], spec["token_ids"]);
    let out = Command::new(env!("CARGO_BIN_EXE_aerie"))
        .args(["generate", "--model", m.to_str().unwrap(), "--prompt", "hi", "--max-tokens", "2", "--device", "cuda", "--gemm-mode", "library", "--speculative-algorithm", "NGRAM"])
        .env("AERIE_CUDA_INTERPRET", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--gemm-mode library") && err.contains("lossless"), "{err}");
}

/// `aerie bench forward --random-weights` builds a model of a config.json's
/// shape in memory and reports prefill, decode and the verify curve, on the
/// CPU and on the (interpreted) CUDA device; a bad config is one clean error.
#[test]
fn bench_forward_runs_random_weights_of_a_configs_shape() {
    let _g = crate::common::shared();
    let dir = tempfile::tempdir().unwrap();
    let cfg = serde_json::json!({"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256, "max_position_embeddings": 512,
        "rope_parameters": {"rope_theta": 500000.0, "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64}});
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let d = dir.path().to_str().unwrap();
    for interp in [false, true] {
        let mut args = vec!["bench", "forward", "--model", d, "--random-weights", "--prompt-len", "20", "--decode-steps", "3", "--reps", "2", "--verify-sizes", "1,4,16", "--json", "--peak-gbs", "100"];
        if interp {
            args.extend(["--device", "cuda"]);
        }
        let out = Command::new(env!("CARGO_BIN_EXE_aerie")).args(&args).env("AERIE_THREADS", "2").env("AERIE_CUDA_INTERPRET", "1").output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["device"].as_str().unwrap().contains("interpreted"), interp, "{v}");
        assert!(v["decode_tok_s"].as_f64().unwrap() > 0.0, "{v}");
        let curve = v["verify_ms"].as_array().unwrap();
        assert_eq!(curve.iter().map(|c| c["k"].as_u64().unwrap()).collect::<Vec<_>>(), vec![1, 4, 16]);
        assert!(curve.iter().all(|c| c["ms"].as_f64().unwrap() > 0.0));
        // Bandwidth figures exist only on a device.
        assert_eq!(v["bandwidth_fraction"].is_number(), interp, "{v}");
        let params = 256.0 * 64.0 * 2.0 + 2.0 * (64.0 * 16.0 * (2.0 * 4.0 + 2.0 * 2.0) + 3.0 * 64.0 * 128.0);
        assert_eq!(v["params"].as_f64().unwrap(), params);
    }
    let out = aerie(&["bench", "forward", "--model", "/nonexistent/config.json", "--random-weights"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("config.json"), "{err}");
}

/// `aerie export-hf --tokenizer-only` writes the tokenizer files a Hugging
/// Face directory needs, and they tokenize as the GGUF does.
#[test]
fn export_hf_tokenizer_only_writes_loadable_tokenizer_files() {
    let _g = crate::common::shared();
    let dir = tempfile::tempdir().unwrap();
    let m = model_path();
    let out = aerie(&["export-hf", "--model", m.to_str().unwrap(), "--out", dir.path().to_str().unwrap(), "--tokenizer-only"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut names: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["generation_config.json", "tokenizer.json", "tokenizer_config.json"]);
    let tk = aerie_engine::Tokenizer::from_hf_dir(dir.path()).unwrap();
    let e = aerie_engine::Engine::load_path(&m, aerie_engine::DType::Auto).unwrap();
    for text in ["Name three rivers in Europe, please.", "<|im_start|>user\nhi<|im_end|>"] {
        assert_eq!(tk.encode(text, true).unwrap(), e.tokenizer.encode(text, true).unwrap(), "{text:?}");
    }
    assert_eq!((tk.bos_id, tk.eos_ids.clone()), (e.tokenizer.bos_id, e.tokenizer.eos_ids.clone()));
}

/// `--dtype` takes SGLang's names: bfloat16 runs on the CUDA device (what
/// auto gives there), float16 runs there with f16 weights, and the GPU
/// precisions on the CPU path are refused before loading.
#[test]
fn dtype_names_follow_sglang_and_unsupported_pairs_fail_cleanly() {
    let _g = crate::common::shared();
    let m = model_path();
    let gen = |dtype: &str, device: &str| {
        Command::new(env!("CARGO_BIN_EXE_aerie"))
            .args(["generate", "--model", m.to_str().unwrap(), "--prompt", "hi", "--max-tokens", "2", "--json", "--dtype", dtype, "--device", device])
            .env("AERIE_THREADS", "2")
            .env("AERIE_CUDA_INTERPRET", "1")
            .output()
            .unwrap()
    };
    let bf16 = gen("bfloat16", "cuda");
    assert!(bf16.status.success(), "{}", String::from_utf8_lossy(&bf16.stderr));
    let auto = gen("auto", "cuda");
    let ids = |o: &std::process::Output| serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["token_ids"].clone();
    assert_eq!(ids(&bf16), ids(&auto), "bfloat16 is what auto runs on the device");
    let f16 = gen("float16", "cuda");
    assert!(f16.status.success(), "{}", String::from_utf8_lossy(&f16.stderr));
    assert_eq!(ids(&f16).as_array().map(Vec::len), Some(2), "{}", String::from_utf8_lossy(&f16.stdout));
    for (dtype, device, needle) in [("bfloat16", "cpu", "--device cuda"), ("float32", "cuda", "bfloat16"), ("int3", "cpu", "unknown dtype")] {
        let out = gen(dtype, device);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{dtype} on {device}");
        assert!(err.contains(needle), "{dtype} on {device}: {err}");
        assert!(err.trim_end().lines().count() <= 3, "{dtype} on {device}: a short error: {err}");
    }
}

/// `aerie bench tp`: SmolLM2 tensor-parallel over two rank processes (the
/// shared-memory collective) decodes greedily as the unsharded model does,
/// and the group leaves nothing in /dev/shm.
#[test]
fn tensor_parallel_ranks_as_processes_decode_like_the_whole_model() {
    let _g = crate::common::shared();
    let m = model_path();
    let before: Vec<_> = std::fs::read_dir("/dev/shm").unwrap().filter_map(|e| e.ok()).map(|e| e.file_name()).filter(|n| n.to_string_lossy().starts_with("aerie-tp-")).collect();
    let out = aerie(&["bench", "tp", "--model", m.to_str().unwrap(), "--prompt-len", "24", "--decode-steps", "12"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("| TP=2, 1 thread(s) per rank |") && text.contains("greedy tokens identical"), "{text}");
    let after: Vec<_> = std::fs::read_dir("/dev/shm").unwrap().filter_map(|e| e.ok()).map(|e| e.file_name()).filter(|n| n.to_string_lossy().starts_with("aerie-tp-")).collect();
    assert_eq!(before, after, "no group segment left behind");
}

/// `aerie bench features` on the interpreted device measures the hand-off
/// of every transport through a real reader process (the reader checks each
/// block's bounds and checksum, so a wrong ring fails the run), prints one
/// row per transport, and leaves no ring or exported memory behind.
#[test]
fn bench_features_hands_off_through_every_transport() {
    let _g = crate::common::shared();
    let child = Command::new(env!("CARGO_BIN_EXE_aerie"))
        .args(["bench", "features", "--device", "cuda", "--reps", "5", "--rows", "1,4", "--width", "64"])
        .env("AERIE_CUDA_INTERPRET", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    for kind in ["inline", "shm", "cuda-ipc"] {
        let row = text.lines().find(|l| l.starts_with(&format!("| {kind} |"))).unwrap_or_else(|| panic!("no {kind} row in\n{text}"));
        let cells: Vec<f64> = row.split('|').filter_map(|c| c.trim().parse().ok()).collect();
        assert_eq!(cells.len(), 3, "{row}");
        assert!(cells.iter().all(|&t| t > 0.0), "{row}");
    }
    let left: Vec<String> = std::fs::read_dir("/dev/shm")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("aerie-features-{pid}-")) || n.starts_with(&format!("aerie-cuda-ipc-{pid}-")))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // A reader that cannot open the device ring fails the run with its reason.
    let out = aerie(&["bench", "features", "--transports", "cuda-ipc", "--reps", "1"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("needs --device cuda"), "{}", String::from_utf8_lossy(&out.stderr));
}
