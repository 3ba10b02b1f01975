//! Tensor-parallel target workers end to end: `aerie target-worker
//! --tp-size 2` as real rank processes over the shared-memory collective,
//! with the real SmolLM2 and real draft workers, driven through gRPC:
//! speculation stays lossless, a rank killed mid-stream fails the group
//! quickly and cleanly, and a rank with another model is refused at
//! formation. (`router::` runs a TP=2 `aerie serve` under the official
//! `openai` client.)

use crate::cluster::{client, collect, draft_worker, greedy, reference, rings_of, rt, start, stream_end, target_worker};
use crate::common::serial;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;

/// Pids of the processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
        // pid (comm) state ppid …; comm may hold spaces and parentheses.
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}

fn group_segments() -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with("aerie-tp-")).collect())
        .unwrap_or_default()
}

#[test]
fn tp2_greedy_speculation_equals_tp2_plain_with_eagle_and_ngram() {
    let _g = serial();
    let target = target_worker(&["--tp-size", "2"]);
    assert_eq!(children_of(target.proc.child.id()).len(), 1, "rank 0 started one other rank");
    let eagle = draft_worker();
    let ngram = start(&["draft-worker", "--speculative-algorithm", "NGRAM"]);
    const N: usize = 5;
    const TOKENS: u32 = 64;
    rt().block_on(async {
        let c = client(&target).await;
        // The five requests at once, batched as a server batches them.
        let run = |draft: Option<&crate::cluster::Worker>| {
            let handles: Vec<_> = (0..N).map(|i| tokio::spawn(collect(c.clone(), greedy(i, TOKENS, draft)))).collect();
            async move {
                let mut out = Vec::new();
                for h in handles {
                    out.push(h.await.unwrap().unwrap());
                }
                out
            }
        };
        let plain = run(None).await;
        for (i, (toks, f)) in plain.iter().enumerate() {
            assert_eq!((toks.len(), f.completion_tokens), (TOKENS as usize, TOKENS), "prompt {i}");
        }
        for (name, d) in [("EAGLE", &eagle), ("NGRAM", &ngram)] {
            let spec = run(Some(d)).await;
            let mut accepted = 0;
            for (i, ((s, f), (p, _))) in spec.iter().zip(&plain).enumerate() {
                assert_eq!(s, p, "{name}, prompt {i}: TP=2 speculative output differs from TP=2 plain");
                assert!(f.spec_verify_ct > 0, "{name}, prompt {i} was verified");
                accepted += f.spec_num_correct_drafts;
            }
            eprintln!("TP=2 {name}: {accepted} draft tokens accepted over {N} x {TOKENS} tokens");
            assert!(accepted > 0, "{name} drafts were accepted at TP=2");
        }
        // Split sums round differently, and through 8-bit activations and the
        // f16 KV cache that can tip a near-tie (measured: the paths part
        // where the reference's top two logits are 0.06 to 0.34 apart);
        // reported, not asserted (the f32 comparison, to 3e-6, is
        // `collective::tp_tests`).
        let same = (0..N).filter(|&i| plain[i].0 == reference(i, TOKENS as usize)).count();
        eprintln!("TP=2 plain equals in-process TP=1 on {same}/{N} prompts");
    });
}

#[test]
fn killing_rank_1_fails_both_streams_and_the_group_leaves_nothing_behind() {
    let _g = serial();
    let draft = draft_worker();
    let mut target = target_worker(&["--tp-size", "2"]);
    let pid = target.proc.child.id();
    let ranks = children_of(pid);
    assert_eq!(ranks.len(), 1, "rank 0 started one other rank");
    rt().block_on(async {
        let c = client(&target).await;
        let mut streams = Vec::new();
        for i in 0..2 {
            let mut s = c.clone().generate(greedy(i, 2000, Some(&draft))).await.unwrap().into_inner();
            s.next().await.unwrap().unwrap();
            streams.push(s);
        }
        crate::cluster::signal(ranks[0], "KILL");
        let t = Instant::now();
        for s in streams {
            let end = stream_end(s, Duration::from_secs(5)).await.expect("a stream hung after rank 1 died");
            match end {
                Some(Err(status)) => assert!(status.message().contains("tensor-parallel"), "the error names the group: {status:?}"),
                other => panic!("expected an error, got {other:?}"),
            }
        }
        eprintln!("both streams ended with the group's error {:?} after the kill", t.elapsed());
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    });
    let t = Instant::now();
    let status = loop {
        if let Some(s) = target.proc.child.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "rank 0 did not exit after its group broke");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success(), "rank 0 exits non-zero: {status}");
    assert!(!std::path::Path::new(&format!("/proc/{}", ranks[0])).exists(), "rank 1 was reaped");
    assert!(rings_of(pid).is_empty(), "rank 0's feature rings are gone: {:?}", rings_of(pid));
    assert!(!group_segments().iter().any(|n| n.contains(&format!("tw-{pid}"))), "{:?}", group_segments());
}

/// A rank that stops (SIGSTOP: a frozen process) is a stall: the stream
/// fails within 5 s and rank 0 exits non-zero.
#[test]
fn a_stopped_rank_fails_the_group_within_five_seconds() {
    let _g = serial();
    let mut target = target_worker(&["--tp-size", "2"]);
    let ranks = children_of(target.proc.child.id());
    rt().block_on(async {
        let c = client(&target).await;
        let mut s = c.clone().generate(greedy(0, 2000, None)).await.unwrap().into_inner();
        s.next().await.unwrap().unwrap();
        crate::cluster::signal(ranks[0], "STOP");
        let t = Instant::now();
        match stream_end(s, Duration::from_secs(5)).await.expect("the stream hung on a stopped rank") {
            Some(Err(status)) => assert!(status.message().contains("stalled"), "{status:?}"),
            other => panic!("expected an error, got {other:?}"),
        }
        eprintln!("the stream ended {:?} after rank 1 stopped", t.elapsed());
    });
    let t = Instant::now();
    while target.proc.child.try_wait().unwrap().is_none() {
        assert!(t.elapsed() < Duration::from_secs(10), "rank 0 did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!target.proc.child.wait().unwrap().success());
    // The stopped rank got SIGKILL when rank 0 exited (it cannot act on it
    // until continued, but it is gone rather than left stopped).
    let t = Instant::now();
    while std::path::Path::new(&format!("/proc/{}", ranks[0])).exists() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!std::path::Path::new(&format!("/proc/{}", ranks[0])).exists(), "rank 1 was left behind");
}

#[test]
fn group_formation_refuses_a_rank_with_a_different_model() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    // A tiny random-weight Llama with SmolLM2's tokenizer: another model.
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 49152, "rms_norm_eps": 1e-5, "tie_word_embeddings": true}"#,
    )
    .unwrap();
    let other = dir.path().join("other");
    let aerie = env!("CARGO_BIN_EXE_aerie");
    let out = Command::new(aerie).args(["export-hf", "--random-weights", dir.path().to_str().unwrap(), "--out", other.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let group = format!("refuse-{}", std::process::id());
    let rank0 = Command::new(aerie)
        .args(["--threads", "1", "target-worker", "--tp-size", "2", "--tp-rank", "0", "--tp-group", &group])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rank1 = Command::new(aerie)
        .args(["--threads", "1", "target-worker", "--tp-size", "2", "--tp-rank", "1", "--tp-group", &group, "--model-path", other.to_str().unwrap()])
        .output()
        .unwrap();
    let rank1_err = String::from_utf8_lossy(&rank1.stderr);
    assert!(!rank1.status.success());
    assert!(rank1_err.contains("refused") && rank1_err.contains("model"), "{rank1_err}");
    let rank0 = rank0.wait_with_output().unwrap();
    let rank0_err = String::from_utf8_lossy(&rank0.stderr);
    assert!(!rank0.status.success());
    assert!(rank0_err.contains("rank 1 refused") && rank0_err.contains("model"), "rank 0 names the refusal: {rank0_err}");
    assert!(!group_segments().iter().any(|n| n.contains(&group)), "{:?}", group_segments());

    // Flags that cannot form a group are refused before anything loads.
    for (args, want) in [
        (&["--tp-size", "2", "--tp-rank", "2", "--tp-group", "g"][..], "not a rank"),
        (&["--tp-size", "2", "--device", "cuda"][..], "CPU only"),
        (&["--tp-size", "2", "--tp-rank", "1"][..], "--tp-group"),
    ] {
        let out = Command::new(aerie).arg("target-worker").args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want), "{args:?}: {err}");
    }
}
