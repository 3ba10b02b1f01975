//! aerie-client against a real local cluster (`aerie serve`, SmolLM2,
//! temperature 0): both modes, both endpoints, the multi-turn example, a
//! forced mismatch, a cut-off speculative call, streaming, typed errors.

use crate::common;
use common::{serial, serve};

use aerie_client::{demo, gen, Api, Client, ClientConfig, ClientError, Mode, Program, PromptFormat, ProgramResult, Source};
use std::time::{Duration, Instant};

fn client(addr: &str, api: Api) -> Client {
    let mut cfg = ClientConfig::new(&format!("http://{addr}/v1"), "smollm2");
    cfg.api = api;
    cfg.continuous_usage = true;
    Client::new(cfg)
}

const SPEC: Mode = Mode::Speculative { num_api_spec_tokens: 64 };

/// Every field is present, non-empty, one line, and reached its stop.
fn assert_valid(r: &ProgramResult, names: &[&str]) {
    let got: Vec<&str> = r.fields.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(got, names, "{:?}", r.to_json());
    for f in &r.fields {
        assert!(!f.value.is_empty() && !f.value.contains('\n'), "field {} = {:?}", f.name, f.value);
        assert!(f.complete, "field {} ran out of tokens: {:?}", f.name, f.value);
    }
}

#[test]
fn programs_run_against_a_real_cluster() {
    let _g = serial();
    let cluster = serve(&[]);
    for api in [Api::Chat, Api::Completions(PromptFormat::chatml())] {
        let c = client(&cluster.addr, api.clone());
        // The character example: speculation needs fewer calls.
        let normal = c.run(&demo::character(), Mode::Normal).unwrap();
        let spec = c.run(&demo::character(), SPEC).unwrap();
        eprintln!("{api:?}\n normal {}\n spec   {}", normal.to_json(), spec.to_json());
        assert_valid(&normal, &["name", "birthday", "job"]);
        assert_valid(&spec, &["name", "birthday", "job"]);
        assert_eq!(normal.calls, 3);
        assert!(normal.fields.iter().all(|f| f.source == Source::Normal));
        assert!(spec.calls < normal.calls, "speculative {} calls, normal {}", spec.calls, normal.calls);
        // Aerie reports usage on every chunk, so even the stream the client
        // cut short is counted exactly.
        assert!(spec.usage_exact && spec.prompt_tokens > 0 && spec.completion_tokens > 0, "{:?}", spec.to_json());
        assert!(spec.prompt_tokens < normal.prompt_tokens, "one prompt instead of three");
        let year = |r: &ProgramResult| r.get("birthday").is_some_and(|b| b.chars().filter(|c| c.is_ascii_digit()).count() >= 4);
        assert!(year(&spec) && year(&normal), "birthdays: {:?} {:?}", spec.get("birthday"), normal.get("birthday"));
        // Speculation filled the fields it matched, in program order.
        assert_eq!(spec.fields[0].source, Source::Speculative);

        // Two turns: the second program continues the first's conversation.
        let first = c.run(&demo::first_question(), SPEC).unwrap();
        assert!(first.get("capital").unwrap().contains("Paris"), "{:?}", first.to_json());
        let second = demo::second_question(&first.history());
        let two_normal = c.run(&second, Mode::Normal).unwrap();
        let two_spec = c.run(&second, SPEC).unwrap();
        eprintln!(" turn 2 normal {}\n turn 2 spec   {}", two_normal.to_json(), two_spec.to_json());
        assert_valid(&two_normal, &["landmark_1", "landmark_2"]);
        assert_valid(&two_spec, &["landmark_1", "landmark_2"]);
        assert!(two_spec.calls < two_normal.calls);
    }

    let c = client(&cluster.addr, Api::Chat);
    // A forced mismatch: the model writes "Birthday:" where the program
    // says "Favourite colour:". Name is kept, the rest falls back.
    let forced = Program::builder()
        .user(demo::CHARACTER_PROMPT)
        .assistant([
            "Name:".into(),
            gen("name").stop("\n").max_tokens(24).temperature(0.0).into(),
            "\nFavourite colour:".into(),
            gen("colour").stop("\n").max_tokens(24).temperature(0.0).into(),
            "\nJob:".into(),
            gen("job").stop("\n").max_tokens(24).temperature(0.0).into(),
        ])
        .build()
        .unwrap();
    let r = c.run(&forced, SPEC).unwrap();
    eprintln!(" forced mismatch {}", r.to_json());
    assert_valid(&r, &["name", "colour", "job"]);
    assert_eq!(r.fields[0].source, Source::Speculative);
    assert_eq!(r.fallback_fields(), ["colour", "job"]);
    assert_eq!(r.calls, 3, "one speculative call, then one per unmatched field");
    assert!(r.assistant_text.contains("\nFavourite colour:"), "{:?}", r.assistant_text);

    // A budget too small for the turn: the cut-off field is continued.
    let r = c.run(&demo::character(), Mode::Speculative { num_api_spec_tokens: 3 }).unwrap();
    eprintln!(" 3-token budget {}", r.to_json());
    assert_valid(&r, &["name", "birthday", "job"]);
    assert!(!r.fallback_fields().is_empty() && r.calls > 1);

    // Streaming: each field once, in order, the first well before the last.
    let started = Instant::now();
    let mut seen: Vec<(String, Duration)> = Vec::new();
    let r = c.run_streaming(&demo::character(), SPEC, &mut |f| seen.push((f.name.clone(), started.elapsed()))).unwrap();
    assert_eq!(seen.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(), ["name", "birthday", "job"]);
    assert!(seen[2].1 - seen[0].1 > Duration::from_millis(20), "fields arrived together: {seen:?}");
    assert_eq!(r.fields.len(), 3);

    // API errors come back typed.
    let mut cfg = ClientConfig::new(&format!("http://{}/v1", cluster.addr), "no-such-model");
    cfg.timeout = Duration::from_secs(30);
    match Client::new(cfg).run(&demo::character(), SPEC) {
        Err(ClientError::Api { status: 404, code, .. }) => assert_eq!(code.as_deref(), Some("model_not_found")),
        other => panic!("expected a 404 API error, got {other:?}"),
    }
}

#[test]
fn transport_failures_are_typed_errors() {
    // Nothing listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let e = client(&format!("127.0.0.1:{port}"), Api::Chat).run(&demo::character(), Mode::Normal).unwrap_err();
    assert!(matches!(e, ClientError::Transport(_)), "{e:?}");
    // A fake server (named as such: a silent peer is a fault a real server
    // will not produce on demand) that accepts and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let holder = std::thread::spawn(move || {
        let (_conn, _) = silent.accept().unwrap();
        std::thread::sleep(Duration::from_secs(5));
    });
    let mut cfg = ClientConfig::new(&format!("http://{addr}/v1"), "smollm2");
    cfg.timeout = Duration::from_secs(1);
    let t = Instant::now();
    let e = Client::new(cfg).run(&demo::character(), Mode::Normal).unwrap_err();
    assert!(matches!(e, ClientError::Timeout(_)), "{e:?}");
    assert!(t.elapsed() < Duration::from_secs(4));
    assert_eq!(e.error_type(), "timeout");
    holder.join().unwrap();
}
