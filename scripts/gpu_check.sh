#!/usr/bin/env bash
# The GPU acceptance of the CUDA backend in one command, for a host with an
# NVIDIA GPU (sm_80 or newer), python3 with torch and transformers (the
# reference implementation), and no Rust toolchain or network: build
# gpu-pack/ with scripts/gpu_pack.sh first and bring it along. Writes a
# Markdown report to $OUT/gpu_report.md (OUT defaults to target/gpu-check)
# and exits non-zero if any check failed. Stage timeouts: 60 + 150 + 280 s
# for checks 2-4, 60 + 240 s for 4b-4c and 420 s for 5; a lent device runs
# one command for at most 10 minutes, so run it there as three calls:
# SKIP_8B=1 SKIP_EXTRA=1 (checks 1-4), ONLY_EXTRA=1 (checks 1, 4b and 4c),
# ONLY_8B=1 (checks 1 and 5).
#
# Checks, in order:
#   1. the GPU, driver, CUDA and NVRTC in use;
#   2. the kernels compile with this host's NVRTC (kernels-tests nvrtc_cubin::);
#   3. the engine's CUDA-path tests on the GPU (engine-tests cuda_interp:: with
#      AERIE_TEST_DEVICE=cuda:0): logits against the CPU f32 forward on random
#      Llama and Qwen2 models, a 16-node tree bit for bit equal to each path
#      decoded alone, accepted-path compaction, the KV pool's bounds;
#   4. against PyTorch + transformers (scripts/gpu_check.py): a random-weight
#      model of SmolLM2-135M's shape written with save_pretrained, greedy ids
#      of `aerie generate --device cuda` teacher-forced through the reference
#      on 10 prompts x 64 tokens; NGRAM and EAGLE (random head) speculation
#      equal to plain decoding; decode tok/s;
#   4b. `aerie bench features`: the per-step feature hand-off from this
#      process to a draft reader process through inline bytes, the
#      shared-memory ring and the CUDA IPC device ring (cuIpcOpenMemHandle
#      between two real processes on this GPU, every block checksummed);
#   4c. scripts/bench_overlap.sh: --speculative-overlap on and off at
#      concurrency 1, 8 and 32 (self-drafting on the model of stage 4);
#   5. `aerie bench forward` on the Llama-3.1-8B shape with random bf16
#      weights: decode tok/s at batch 1, the fraction of HBM bandwidth, the
#      verify cost curve time(k)/time(1) for k = 1..64; and again through
#      cuBLAS (`--gemm-mode library`), for what batch invariance costs
#      (SKIP_LIBRARY=1 leaves that out).
set -uo pipefail
cd "$(dirname "$0")/.."
PACK=${PACK:-gpu-pack}
OUT=${OUT:-target/gpu-check}
mkdir -p "$OUT"
# Absolute, since the test stages run from inside engine/ and kernels/.
OUT=$(cd "$OUT" && pwd)
PACK=$(cd "$PACK" 2>/dev/null && pwd || echo "$PACK")
R="$OUT/gpu_report.md"
LOG="$OUT/gpu_check.log"
: > "$LOG"
PY=${PYTHON:-python3}
failed=0
start=$(date +%s)
note() { echo "$*" | tee -a "$R"; }
stage() { echo; echo "== $* ($(( $(date +%s) - start )) s)"; } # to the log only
fail() { failed=1; note "- **FAIL**: $*"; }

for f in aerie engine-tests kernels-tests smollm2-tokenizer/tokenizer.json; do
  [ -e "$PACK/$f" ] || { echo "missing $PACK/$f: run scripts/gpu_pack.sh on a build machine first" >&2; exit 2; }
done
chmod +x "$PACK/aerie" "$PACK/engine-tests" "$PACK/kernels-tests"

# NVRTC: the toolkit's, else the one in the Python environment's nvidia wheels.
if [ -z "${AERIE_NVRTC_LIB:-}" ]; then
  for c in /usr/local/cuda/lib64/libnvrtc.so /usr/local/cuda/lib64/libnvrtc.so.13 /usr/local/cuda/lib64/libnvrtc.so.12; do
    [ -e "$c" ] && { AERIE_NVRTC_LIB=$c; break; }
  done
fi
if [ -z "${AERIE_NVRTC_LIB:-}" ]; then
  AERIE_NVRTC_LIB=$($PY -c 'import glob, nvidia; print(next(iter(sorted(p for d in nvidia.__path__ for p in glob.glob(d + "/**/libnvrtc.so*", recursive=True) if "builtins" not in p)), ""))' 2>/dev/null)
fi
export AERIE_NVRTC_LIB
export LD_LIBRARY_PATH="$(dirname "${AERIE_NVRTC_LIB:-/x}"):${LD_LIBRARY_PATH:-}"
export AERIE_CUDA_CACHE="$OUT/cubin-cache"
export RUST_BACKTRACE=1

{
  echo "# GPU check, $(date -u +%Y-%m-%d)"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || echo "nvidia-smi failed"
  nvidia-smi 2>/dev/null | grep -o 'CUDA Version: [0-9.]*' || true
  echo "NVRTC: ${AERIE_NVRTC_LIB:-not found}"
  $PY -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "| transformers", transformers.__version__)' 2>&1
  cat "$PACK/MANIFEST" 2>/dev/null
  echo '```'
  echo
} > "$R"
cat "$R"

if [ "${ONLY_8B:-0}" != 1 ] && [ "${ONLY_EXTRA:-0}" != 1 ]; then
stage "kernels through this host's NVRTC"
if (cd kernels && timeout 60 "$PACK/kernels-tests" nvrtc_cubin:: >> "$LOG" 2>&1); then
  note "- ok: every kernel compiles to sm_80 and sm_90 cubins with this host's NVRTC"
else
  fail "kernels-tests nvrtc_cubin:: (see gpu_check.log)"
fi

stage "engine CUDA-path tests on the GPU"
if (cd engine && AERIE_TEST_DEVICE=cuda:0 timeout 150 "$PACK/engine-tests" cuda_interp:: >> "$LOG" 2>&1); then
  note "- ok: engine cuda_interp:: on cuda:0 ($(grep -o '[0-9]* passed' "$LOG" | tail -1)): logits vs CPU f32, 16-node tree == paths decoded alone (bit for bit), keep_rows, KV pool, sampled trees walked on the device as on the host, f16 weights"
else
  fail "engine-tests cuda_interp:: on cuda:0 (see gpu_check.log)"
fi

stage "against PyTorch + transformers"
if PYTHONUNBUFFERED=1 timeout 280 $PY scripts/gpu_check.py --aerie "$PACK/aerie" --tokenizer "$PACK/smollm2-tokenizer" --work "$OUT/work" --report "$R" >> "$LOG" 2>&1; then
  :
else
  fail "scripts/gpu_check.py (see gpu_check.log)"
fi

fi

if [ "${ONLY_8B:-0}" != 1 ] && [ "${SKIP_EXTRA:-0}" != 1 ]; then
stage "overlapped drafting on and off (batch 1, 8, 32)"
# Stage 4's random model, written here when this call skipped stage 4.
[ -d "$OUT/work/smollm2-shape-random" ] || (cd scripts && timeout 120 $PY -c 'import sys, gpu_check; gpu_check.write_model(sys.argv[1], sys.argv[2])' \
  "$OUT/work/smollm2-shape-random" "$PACK/smollm2-tokenizer") >> "$LOG" 2>&1
if [ -d "$OUT/work/smollm2-shape-random" ] && AERIE="$PACK/aerie" DEVICE=cuda MODEL="$OUT/work/smollm2-shape-random" OUT="$OUT/overlap" \
    timeout 240 bash scripts/bench_overlap.sh >> "$LOG" 2>&1; then
  { echo; echo "Overlapped drafting (\`--speculative-overlap\`) on and off, self-drafting on the random SmolLM2-shaped model (scripts/bench_overlap.sh):"; echo; sed -n '/^| server | load/,/^$/p' "$OUT/overlap/report.md"; } >> "$R"
else
  fail "scripts/bench_overlap.sh on the GPU (see gpu_check.log)"
fi

stage "feature hand-off: CUDA IPC against shared memory"
if timeout 60 "$PACK/aerie" bench features --device cuda --width 12288 --rows 1,4,8,64 > "$OUT/features.txt" 2>> "$LOG"; then
  { echo; echo "Feature hand-off per step, target to a draft process on the same GPU (\`aerie bench features\`, EAGLE-3 width for Llama-3.1-8B; the reader checks every block's checksum):"; echo; echo '```'; cat "$OUT/features.txt"; echo '```'; } >> "$R"
else
  fail "aerie bench features --device cuda (see gpu_check.log)"
fi

fi

if [ "${SKIP_8B:-0}" != 1 ]; then
  stage "Llama-3.1-8B shape, random bf16 weights"
  mkdir -p "$OUT/llama8b"
  cat > "$OUT/llama8b/config.json" <<'JSON'
{"architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
 "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 131072,
 "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": false,
 "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}
JSON
  peak=$(nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200 && echo 4800 || echo 3350)
  if timeout 420 "$PACK/aerie" bench forward --model "$OUT/llama8b" --random-weights --device cuda --prompt-len 128 --decode-steps 32 --reps 5 --peak-gbs "$peak" > "$OUT/llama8b/bench.txt" 2>> "$LOG"; then
    { echo; echo "Llama-3.1-8B shape (random bf16 weights), \`aerie bench forward\` (peak bandwidth taken as $peak GB/s):"; echo; echo '```'; cat "$OUT/llama8b/bench.txt"; echo '```'; } >> "$R"
  else
    fail "aerie bench forward on the Llama-3.1-8B shape (see gpu_check.log)"
  fi
  # What batch invariance costs: the same bench through cuBLAS (shorter).
  if [ "${SKIP_LIBRARY:-0}" != 1 ]; then
    stage "Llama-3.1-8B shape through cuBLAS (--gemm-mode library)"
    if timeout 300 "$PACK/aerie" bench forward --model "$OUT/llama8b" --random-weights --device cuda --gemm-mode library --prompt-len 128 --decode-steps 16 --reps 3 --verify-sizes 1,8,64 --peak-gbs "$peak" > "$OUT/llama8b/bench_library.txt" 2>> "$LOG"; then
      { echo; echo "The same through cuBLAS (\`--gemm-mode library\`), for the cost of the batch-invariant kernels above:"; echo; echo '```'; cat "$OUT/llama8b/bench_library.txt"; echo '```'; } >> "$R"
    else
      fail "aerie bench forward --gemm-mode library (see gpu_check.log)"
    fi
  fi
fi

echo >> "$R"
note "Total: $(( $(date +%s) - start )) s; $([ $failed = 0 ] && echo 'all checks passed' || echo 'SOME CHECKS FAILED')."
exit $failed
