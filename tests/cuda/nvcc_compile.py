#!/usr/bin/env python3
"""Compiles every CUDA kernel under kernels/cuda/ to sm_80 and sm_90 cubins
with nvcc 13.0 and records ptxas's register and spill figures.

nvcc comes from the PyPI wheels nvidia-cuda-nvcc, nvidia-nvvm,
nvidia-cuda-crt, nvidia-cuda-runtime and nvidia-cuda-cccl, all pinned to the
13.0 release (scripts/setup.sh installs them in .venv): no GPU and no CUDA
toolkit are needed. Writes target/ptxas.md (one row per kernel and
architecture) and prints "N passed, N failed". A kernel that spills
registers at either architecture fails: every kernel here is small enough
that a spill means a mistake.
"""
import glob, os, re, subprocess, sys, tempfile

import nvidia

ARCHS = ["sm_80", "sm_90"]


def nvcc_path():
    for base in nvidia.__path__:
        cand = os.path.join(base, "cu13", "bin", "nvcc")
        if os.path.exists(cand):
            return cand
    sys.exit("no nvcc in the nvidia-cuda-nvcc wheel (scripts/setup.sh installs it)")


def main():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    nvcc = nvcc_path()
    env = dict(os.environ, PATH=os.path.dirname(nvcc) + os.pathsep + os.environ["PATH"])
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True, env=env).stdout.strip().splitlines()[-2]
    files = sorted(glob.glob(os.path.join(root, "kernels", "cuda", "*.cu")))
    rows, passed, failed = [], 0, 0
    with tempfile.TemporaryDirectory() as tmp:
        for f in files:
            for arch in ARCHS:
                out = os.path.join(tmp, f"{os.path.basename(f)}.{arch}.cubin")
                cmd = [nvcc, "-cubin", f"-arch={arch}", "-O3", "-Xptxas", "-v", "-I", os.path.dirname(f), "-o", out, f]
                p = subprocess.run(cmd, capture_output=True, text=True, env=env)
                log = p.stdout + p.stderr
                if p.returncode != 0:
                    print(f"FAIL {os.path.basename(f)} {arch}:\n{log}")
                    failed += 1
                    continue
                # ptxas prints, per entry: "Compiling entry function 'NAME' for 'sm_XX'",
                # then stack/spill and register lines.
                ok = True
                for m in re.finditer(r"Compiling entry function '(\w+)' for '(\w+)'(.*?)(?=Compiling entry function|\Z)", log, re.S):
                    name, body = m.group(1), m.group(3)
                    regs = re.search(r"Used (\d+) registers", body)
                    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", body)
                    stack = re.search(r"(\d+) bytes stack frame", body)
                    smem = re.search(r"(\d+) bytes smem", body)
                    r = int(regs.group(1)) if regs else -1
                    ss, sl = (int(spill.group(1)), int(spill.group(2))) if spill else (0, 0)
                    rows.append((os.path.basename(f), name, arch, r, int(stack.group(1)) if stack else 0, ss, sl,
                                 int(smem.group(1)) if smem else 0))
                    if ss or sl:
                        print(f"FAIL {name} {arch}: spills {ss} B stores, {sl} B loads")
                        ok = False
                    else:
                        print(f"ok   {os.path.basename(f)} {name} {arch}: {r} registers, no spills")
                if ok and any(r[2] == arch and r[0] == os.path.basename(f) for r in rows):
                    passed += 1
                else:
                    failed += 1
                    if ok:
                        print(f"FAIL {os.path.basename(f)} {arch}: no entry in ptxas's report:\n{log}")
    os.makedirs(os.path.join(root, "target"), exist_ok=True)
    with open(os.path.join(root, "target", "ptxas.md"), "w") as md:
        md.write(f"ptxas report ({version}, -O3)\n\n")
        md.write("| file | kernel | arch | registers | stack B | spill stores B | spill loads B | static smem B |\n")
        md.write("|---|---|---|---|---|---|---|---|\n")
        for r in rows:
            md.write("| " + " | ".join(str(c) for c in r) + " |\n")
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
