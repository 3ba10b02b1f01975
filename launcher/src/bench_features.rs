//! `aerie bench features`: the hand-off of one step's hidden features from a
//! target worker to its draft worker, per transport (inline bytes, the
//! shared-memory ring, the CUDA IPC device ring), by rows per step.
//!
//! The target's side runs here; the draft's is a child process of this
//! binary (the `--reader` form) that opens the ring as a draft worker does.
//! Each step: the sender encodes a block of `rows × width` floats, the
//! payload (protobuf, as in the session's messages) crosses a pipe, the
//! reader decodes and checks it, and its consumed offset comes back. The
//! pipe's own round trip with an empty payload is measured too and reported
//! beside, so what a transport adds is the difference. Medians of `--reps`.
//!
//! On a GPU both sides run on `--device cuda[:N]`; with
//! `AERIE_CUDA_INTERPRET=1` the device ring is a shared-memory file.

use aerie_proto::transport::{CudaIpcSender, DeviceRingOffer, FeatureReceiver, FeatureSender, InlineSender, ShmRingSender, DEFAULT_RING_BYTES};
use aerie_proto::v1::FeaturePayload;
use anyhow::{bail, Context, Result};
use clap::Args;
use prost::Message;
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::Arc;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct FeaturesBenchArgs {
    /// Floats per feature row (EAGLE: the hidden size; EAGLE-3: three
    /// aux layers, 3 × 4,096 for Llama-3.1-8B).
    #[arg(long, default_value_t = 12288)]
    pub width: usize,
    /// Rows per step (accepted tokens plus the bonus token of one verify).
    #[arg(long, value_delimiter = ',', default_value = "1,4,8,64")]
    pub rows: Vec<usize>,
    /// Transports to measure: inline, shm, cuda-ipc (needs --device cuda).
    /// Default: inline and shm, and cuda-ipc on a device.
    #[arg(long, value_delimiter = ',')]
    pub transports: Vec<String>,
    /// Timed steps per setting (after warm-up).
    #[arg(long, default_value_t = 200)]
    pub reps: usize,
    /// Where both sides run: cpu, or cuda[:N] for the device ring.
    #[arg(long, default_value = "cpu")]
    pub device: aerie_engine::cuda::select::DeviceSpec,
    /// Internal: this process is the reader of a ring the parent offers.
    #[arg(long, hide = true)]
    pub reader: bool,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Result<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        bail!("odd hex length");
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).context("bad hex")).collect()
}

fn device(spec: aerie_engine::cuda::select::DeviceSpec) -> Result<Option<Arc<dyn aerie_kernels::cuda::device::Device>>> {
    Ok(aerie_engine::cuda::select::open_device(spec)?)
}

/// The reader: opens the offered ring, then for each framed payload decodes
/// it and answers with its consumed offset (u64::MAX on a decode error).
fn read_side(a: &FeaturesBenchArgs) -> Result<()> {
    let stdin = std::io::stdin();
    let mut input = BufReader::new(stdin.lock());
    let mut offer = String::new();
    input.read_line(&mut offer)?;
    let parts: Vec<&str> = offer.split_whitespace().collect();
    let mut receiver = match parts.as_slice() {
        ["inline"] => FeatureReceiver::inline_only(),
        ["shm", path, cap] => FeatureReceiver::open(std::path::Path::new(path), cap.parse()?)?,
        ["cuda-ipc", handle, cap, uuid] => {
            let dev = device(a.device)?.context("cuda-ipc needs --device cuda")?;
            FeatureReceiver::open_device(dev, &DeviceRingOffer { handle: unhex(handle)?, capacity: cap.parse()?, uuid: uuid.to_string() })?
        }
        _ => bail!("bad offer line `{}`", offer.trim()),
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    let mut len = [0u8; 4];
    while input.read_exact(&mut len).is_ok() {
        let mut buf = vec![0u8; u32::from_le_bytes(len) as usize];
        input.read_exact(&mut buf)?;
        let p = FeaturePayload::decode(buf.as_slice())?;
        let ack = match receiver.decode(&p) {
            Ok(_) => receiver.consumed(),
            Err(_) => u64::MAX,
        };
        out.write_all(&ack.to_le_bytes())?;
        out.flush()?;
    }
    Ok(())
}

/// One transport's sender and the offer line its reader needs.
fn sender(kind: &str, dev: &Option<Arc<dyn aerie_kernels::cuda::device::Device>>) -> Result<(Arc<dyn FeatureSender>, String)> {
    Ok(match kind {
        "inline" => (Arc::new(InlineSender), "inline".into()),
        "shm" => {
            let r = ShmRingSender::create(std::path::Path::new("/dev/shm"), DEFAULT_RING_BYTES)?;
            let (path, cap) = r.ring().context("an shm ring without a path")?;
            (r, format!("shm {path} {cap}"))
        }
        "cuda-ipc" => {
            let dev = dev.clone().context("cuda-ipc needs --device cuda")?;
            let r = CudaIpcSender::create(dev, DEFAULT_RING_BYTES)?;
            let o = r.device_ring().context("a device ring without an offer")?;
            (r, format!("cuda-ipc {} {} {}", hex(&o.handle), o.capacity, o.uuid))
        }
        other => bail!("unknown transport `{other}` (inline, shm, cuda-ipc)"),
    })
}

/// Median seconds of one step: encode, frame, the reader's decode, its ack.
fn steps(s: &dyn FeatureSender, child: &mut std::process::Child, width: usize, rows: usize, reps: usize) -> Result<f64> {
    let data: Vec<f32> = (0..rows * width).map(|i| (i % 251) as f32 * 0.25).collect();
    let (stdin, stdout) = (child.stdin.as_mut().context("reader stdin")?, child.stdout.as_mut().context("reader stdout")?);
    let mut times = Vec::with_capacity(reps);
    for i in 0..reps + 5 {
        let t = Instant::now();
        let (p, _) = if rows == 0 { (FeaturePayload::default(), "inline") } else { s.encode(width, &data) };
        let bytes = p.encode_to_vec();
        stdin.write_all(&(bytes.len() as u32).to_le_bytes())?;
        stdin.write_all(&bytes)?;
        stdin.flush()?;
        let mut ack = [0u8; 8];
        stdout.read_exact(&mut ack)?;
        let ack = u64::from_le_bytes(ack);
        if ack == u64::MAX {
            bail!("the reader refused a block");
        }
        s.consumed(ack);
        if i >= 5 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(times[times.len() / 2])
}

pub fn run(a: FeaturesBenchArgs) -> Result<()> {
    if a.reader {
        return read_side(&a);
    }
    if a.reps == 0 || a.width == 0 {
        bail!("--reps and --width must be positive");
    }
    let dev = device(a.device)?;
    let exe = std::env::current_exe().context("locating the aerie binary")?;
    let dev_flag = match a.device {
        aerie_engine::cuda::select::DeviceSpec::Cpu => "cpu".to_string(),
        aerie_engine::cuda::select::DeviceSpec::Cuda(n) => format!("cuda:{n}"),
    };
    let mut transports = a.transports.clone();
    if transports.is_empty() {
        transports = vec!["inline".into(), "shm".into()];
        if dev.is_some() {
            transports.push("cuda-ipc".into());
        }
    }
    println!(
        "feature hand-off per step, target here → draft reader process; width {} floats, median of {} steps ({} from 64 rows on) in µs; the pipe's own round trip with an empty payload in the last column",
        a.width,
        a.reps,
        a.reps.min(50)
    );
    if let Some(d) = &dev {
        println!("device: {} ({})", d.name(), d.uuid());
    }
    let header: Vec<String> = a.rows.iter().map(|r| format!("{r} rows ({} KiB)", r * a.width * 4 / 1024)).collect();
    println!("| transport | {} | pipe only |", header.join(" | "));
    println!("|---|{}---|", "---|".repeat(a.rows.len()));
    for kind in &transports {
        let (s, offer) = sender(kind, &dev)?;
        let mut child = std::process::Command::new(&exe)
            .args(["bench", "features", "--reader", "--device", &dev_flag])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("starting the reader")?;
        let result = (|| -> Result<Vec<f64>> {
            let stdin = child.stdin.as_mut().context("reader stdin")?;
            writeln!(stdin, "{offer}")?;
            stdin.flush()?;
            let mut line = String::new();
            BufReader::new(child.stdout.as_mut().context("reader stdout")?).read_line(&mut line)?;
            if line.trim() != "ready" {
                bail!("the {kind} reader did not open its ring (its stderr says why)");
            }
            s.peer_mapped();
            // The pipe alone first, then each size.
            let pipe = steps(s.as_ref(), &mut child, a.width, 0, a.reps)?;
            let mut t = Vec::new();
            for &r in &a.rows {
                t.push(steps(s.as_ref(), &mut child, a.width, r, if r >= 64 { a.reps.min(50) } else { a.reps })?);
            }
            t.push(pipe);
            Ok(t)
        })();
        drop(child.stdin.take());
        let _ = child.wait();
        let t = result?;
        let cells: Vec<String> = t.iter().map(|x| format!("{:.1}", x * 1e6)).collect();
        println!("| {kind} | {} |", cells.join(" | "));
    }
    Ok(())
}
