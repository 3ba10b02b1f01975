//! The CUDA IPC feature transport between real processes on the interpreted
//! device (`AERIE_CUDA_INTERPRET=1`), where an exported allocation is a
//! shared-memory file: a draft worker opens a device ring another process
//! exported and checks every slice, and a target and a draft worker on one
//! "GPU" speculate through it, losslessly, and survive the draft's kill -9.

use crate::cluster::{client, greedy, metric, prompt_ids, rt, scrape, signal, Worker};
use crate::common::{self, engine, serial};
use aerie_kernels::cuda::device::{Device, InterpDevice};
use aerie_kernels::cuda::interp_ipc::{IPC_DIR, IPC_FILE_PREFIX};
use aerie_proto::transport::{CudaIpcSender, FeatureSender};
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::StreamExt;

const INTERPRET: [(&str, &str); 1] = [("AERIE_CUDA_INTERPRET", "1")];

/// A worker on the interpreted device.
fn start_interpreted(args: &[&str]) -> Worker {
    let mut all = args.to_vec();
    all.extend_from_slice(&["--device", "cuda"]);
    let proc = common::start_exe_env(env!("CARGO_BIN_EXE_aerie").as_ref(), &all, &INTERPRET, "READY ", &common::ready_field("grpc="));
    Worker::from_proc(proc)
}

/// The shipped head as a (3, 1, 4) chain, on the interpreted device.
fn draft_on_device() -> Worker {
    start_interpreted(&["draft-worker", "--speculative-num-steps", "3", "--speculative-eagle-topk", "1", "--speculative-num-draft-tokens", "4"])
}

/// Names in /dev/shm of device memory that process `pid` exported.
fn exported_by(pid: u32) -> Vec<String> {
    let prefix = format!("{IPC_FILE_PREFIX}{pid}-");
    std::fs::read_dir(IPC_DIR).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with(&prefix)).collect()
}

/// A draft worker maps a device ring that this test process exported, reads
/// genuine slices and refuses corrupt, out-of-range and misdirected ones per
/// sequence; a handle it cannot open (garbled, or of another GPU) leaves the
/// session open without a device ring, and the worker stays up.
#[test]
fn a_draft_worker_checks_every_slice_of_a_device_ring_from_another_process() {
    use aerie_proto::v1::draft_service_client::DraftServiceClient;
    use aerie_proto::v1::feature_payload::Data;
    use aerie_proto::v1::session_request::Msg;
    use aerie_proto::v1::session_response::Msg as Out;
    use aerie_proto::v1::{FeaturePayload, HealthRequest, ProposeRequest, SequenceBegin, SessionOpen, SessionRequest, ShmSlice};
    let _g = serial();
    let draft = draft_on_device();
    let dev: Arc<dyn Device> = Arc::new(InterpDevice::new(1 << 30));
    let h = engine().model.config.hidden_size;
    let fp = engine().model.fingerprint.clone();
    // One session per ring offer; answers until the first proposal (or the
    // ready alone when nothing is proposed).
    let session = |open: SessionOpen, rest: Vec<Msg>| {
        let draft_addr = draft.grpc.clone();
        rt().block_on(async move {
            let mut c = DraftServiceClient::connect(draft_addr).await.unwrap();
            let proposes = rest.iter().any(|m| matches!(m, Msg::Propose(_)));
            let reqs: Vec<SessionRequest> = std::iter::once(Msg::Open(open)).chain(rest).map(|m| SessionRequest { msg: Some(m) }).collect();
            let mut out = c.session(tokio_stream::iter(reqs)).await.unwrap().into_inner();
            let (mut ready, mut errors, mut proposal) = (None, Vec::new(), None);
            while proposal.is_none() && (proposes || ready.is_none()) {
                match tokio::time::timeout(Duration::from_secs(120), out.next()).await.expect("no answer").unwrap().unwrap().msg.unwrap() {
                    Out::Ready(r) => ready = Some(r),
                    Out::Error(e) => errors.push((e.seq_id, e.error_type)),
                    Out::Proposal(p) => proposal = Some(p),
                }
            }
            (ready.expect("no ready"), errors, proposal)
        })
    };
    let open_for = |ring: &CudaIpcSender| {
        let o = ring.device_ring().unwrap();
        SessionOpen { target_fingerprint: fp.clone(), device_ring_handle: o.handle, device_ring_capacity: o.capacity, device_uuid: o.uuid, ..Default::default() }
    };
    let begin = |seq_id: u64, features: FeaturePayload| Msg::Begin(SequenceBegin { seq_id, tokens: vec![1, 2, 3], features: Some(features), constraint: None });

    let ring = CudaIpcSender::create(dev.clone(), 1 << 20).unwrap();
    let rows: Vec<f32> = (0..2 * h).map(|i| (i as f32 * 0.37).sin()).collect();
    let (good, via) = ring.encode(h, &rows);
    assert_eq!(via, "cuda-ipc");
    let Some(Data::Device(s)) = good.data.clone() else { panic!("{good:?}") };
    let with = |s: ShmSlice| FeaturePayload { rows: 2, width: h as u32, data: Some(Data::Device(s)) };
    let (ready, errors, proposal) = session(
        open_for(&ring),
        vec![
            begin(1, with(ShmSlice { crc32: s.crc32 ^ 1, ..s })),
            begin(2, with(ShmSlice { offset: (1 << 20) - 8, ..s })),
            begin(3, FeaturePayload { data: Some(Data::Shm(s)), ..good.clone() }),
            begin(4, good.clone()),
            Msg::Propose(ProposeRequest { seq_id: 4, max_depth: 3 }),
        ],
    );
    assert!(ready.device_ring_mapped && !ready.ring_mapped, "{ready:?}");
    let kinds: Vec<(u64, &str)> = errors.iter().map(|(s, k)| (*s, k.as_str())).collect();
    assert_eq!(kinds, vec![(1, "features_checksum"), (2, "features_out_of_bounds"), (3, "no_ring")]);
    let p = proposal.expect("no proposal for the genuine sequence");
    assert_eq!((p.seq_id, p.tokens[0]), (4, 3), "a tree rooted at the sequence's last token");
    assert_eq!(p.ring_consumed, s.offset + s.len, "the draft reports what it read");
    assert!(exported_by(std::process::id()).is_empty(), "the name goes once the draft mapped the ring");

    // A garbled handle, and a ring on another GPU: no device ring, the session opens.
    let ring2 = CudaIpcSender::create(dev.clone(), 4096).unwrap();
    let mut garbled = open_for(&ring2);
    garbled.device_ring_handle[9] ^= 0x21;
    let (ready, errors, _) = session(garbled, vec![]);
    assert!(!ready.device_ring_mapped && errors.is_empty(), "{ready:?} {errors:?}");
    let other = SessionOpen { device_uuid: "GPU-11111111-2222-3333-4444-555555555555".into(), ..open_for(&ring2) };
    let (ready, _, _) = session(other, vec![]);
    assert!(!ready.device_ring_mapped, "a ring on another GPU is not opened");
    rt().block_on(async {
        let mut c = DraftServiceClient::connect(draft.grpc.clone()).await.unwrap();
        c.health(HealthRequest {}).await.expect("the draft worker went down");
    });
}

/// A target and a draft worker on one (interpreted) GPU: `auto` settles on
/// CUDA IPC, greedy output with speculation equals the same worker's plain
/// output, and a kill -9 of the draft mid-stream still finishes every
/// request identically; no exported memory is left named in /dev/shm.
#[test]
fn target_and_draft_on_one_device_speculate_through_cuda_ipc_and_survive_a_draft_kill() {
    let _g = serial();
    const N: u32 = 14;
    let mut draft = draft_on_device();
    let target = start_interpreted(&["target-worker", "--max-running-requests", "2"]);
    rt().block_on(async {
        let c = client(&target).await;
        let mut want = Vec::new();
        for i in 0..2 {
            let (toks, _) = crate::cluster::collect(c.clone(), greedy(i, N, None)).await.unwrap();
            want.push(toks);
        }
        // Speculation through the device ring, both requests at once.
        let mut streams = Vec::new();
        for i in 0..2 {
            streams.push(c.clone().generate(greedy(i, N, Some(&draft))).await.unwrap().into_inner());
        }
        let mut got = vec![Vec::new(); 2];
        for (i, s) in streams.iter_mut().enumerate() {
            while got[i].len() < 5 {
                got[i].extend(s.next().await.unwrap().unwrap().token_ids);
            }
        }
        let m = scrape(&target).await;
        assert_eq!(metric(&m, "aerie_target_draft_session_transport{transport=\"cuda-ipc\"}"), 1.0, "{m}");
        assert!(metric(&m, "aerie_target_feature_bytes_total{transport=\"cuda-ipc\"}") > 0.0, "{m}");
        assert!(exported_by(target.proc.child.id()).is_empty(), "the ring's name goes once the draft mapped it");
        signal(draft.proc.child.id(), "KILL");
        draft.proc.child.wait().unwrap();
        for (i, mut s) in streams.into_iter().enumerate() {
            let fin = loop {
                let m = s.next().await.expect("stream ended early").expect("request failed");
                got[i].extend(m.token_ids);
                if let Some(f) = m.finished {
                    break f;
                }
            };
            assert_eq!(got[i], want[i], "request {i}: {:?}", prompt_ids(i).len());
            assert!(fin.draft_fallback, "request {i} did not notice the dead draft");
        }
    });
    let pid = target.proc.child.id();
    drop(target);
    assert!(exported_by(pid).is_empty());
}
