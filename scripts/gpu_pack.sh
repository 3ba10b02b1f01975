#!/usr/bin/env bash
# Builds, on a machine with the Rust toolchain, what scripts/gpu_check.sh runs
# on a GPU host that has neither a toolchain nor a network: gpu-pack/ (ignored
# by git) with the stripped `aerie` binary, the engine's and the kernels'
# integration-test executables, SmolLM2's tokenizer files and a manifest.
# It must stay under 64 MiB (what a GPU host's upload allows): the script
# fails if it does not.
#
#   bash scripts/gpu_pack.sh && <copy the tree with gpu-pack/ to the GPU host>
#   bash scripts/gpu_check.sh          # there
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf gpu-pack && mkdir -p gpu-pack
cargo test --release --workspace --no-run --message-format=json 2>/dev/null > target/gpu-pack-build.json
python3 - <<'PY'
import json, os, shutil, subprocess
want = {("bin", "aerie", "launcher"): "aerie", ("test", "integration", "engine"): "engine-tests", ("test", "integration", "kernels"): "kernels-tests"}
found = {}
for line in open("target/gpu-pack-build.json"):
    m = json.loads(line)
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    if "bin" in m["target"]["kind"] and m["profile"]["test"]:
        continue  # the binary's own unit-test harness, not the binary
    crate_dir = os.path.basename(os.path.dirname(m["manifest_path"]))
    for kind in m["target"]["kind"]:
        name = want.get((kind, m["target"]["name"], crate_dir))
        if name:
            found[name] = m["executable"]
missing = set(want.values()) - set(found)
assert not missing, f"not built: {missing}"
for name, exe in found.items():
    subprocess.run(["strip", "-o", f"gpu-pack/{name}", exe], check=True)
    print(f"gpu-pack/{name} <- {exe}")
PY
./gpu-pack/aerie export-hf --model smollm2 --out gpu-pack/smollm2-tokenizer --tokenizer-only >/dev/null
{
  echo "commit: $(git rev-parse HEAD)$(git diff --quiet && git diff --cached --quiet || echo ' (with uncommitted changes)')"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m), $(rustc --version)"
  (cd gpu-pack && sha256sum aerie engine-tests kernels-tests)
} > gpu-pack/MANIFEST
bytes=$(du -sb gpu-pack | cut -f1)
echo "gpu-pack: $((bytes / 1048576)) MiB"
[ "$bytes" -lt $((60 * 1048576)) ] || { echo "gpu-pack is over 60 MiB; a GPU host takes 64 MiB with the tree" >&2; exit 1; }
