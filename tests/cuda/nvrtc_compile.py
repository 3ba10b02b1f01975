#!/usr/bin/env python3
"""Compiles every CUDA C kernel under kernels/cuda/ to PTX with NVRTC.

NVRTC comes from the PyPI wheel nvidia-cuda-nvrtc-cu12, loaded with ctypes,
so this check needs no GPU and no CUDA toolkit. Exit status 0 means every
kernel compiled for each target architecture and its PTX holds the entry point
that the launcher looks up.
"""
import ctypes, glob, os, re, sys

import nvidia.cuda_nvrtc

ARCHS = ["compute_80", "compute_90"]


def load_nvrtc():
    libdir = os.path.join(list(nvidia.cuda_nvrtc.__path__)[0], "lib")
    libs = sorted(glob.glob(os.path.join(libdir, "libnvrtc.so*")))
    libs = [l for l in libs if "builtins" not in l]
    if not libs:
        sys.exit(f"no libnvrtc in {libdir}")
    return ctypes.CDLL(libs[0])


def compile_ptx(nvrtc, src, name, arch, headers=None):
    """headers: {include name: text}, handed to NVRTC in memory as the
    runtime does (kernels include "common.cuh")."""
    headers = headers or {}
    texts = (ctypes.c_char_p * max(1, len(headers)))(*[t.encode() for t in headers.values()])
    names = (ctypes.c_char_p * max(1, len(headers)))(*[n.encode() for n in headers])
    prog = ctypes.c_void_p()
    rc = nvrtc.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), name.encode(), len(headers), texts, names)
    assert rc == 0, f"nvrtcCreateProgram: {rc}"
    opts = [f"--gpu-architecture={arch}".encode(), b"--std=c++14"]
    arr = (ctypes.c_char_p * len(opts))(*opts)
    rc = nvrtc.nvrtcCompileProgram(prog, len(opts), arr)
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(prog, log)
    if rc != 0:
        raise RuntimeError(f"{name} ({arch}) failed to compile:\n{log.value.decode()}")
    nvrtc.nvrtcGetPTXSize(prog, ctypes.byref(size))
    ptx = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetPTX(prog, ptx)
    nvrtc.nvrtcDestroyProgram(ctypes.byref(prog))
    return ptx.value.decode()


def main():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    nvrtc = load_nvrtc()
    files = sorted(glob.glob(os.path.join(root, "kernels", "cuda", "*.cu")))
    assert files, "no kernels found"
    headers = {os.path.basename(h): open(h).read() for h in glob.glob(os.path.join(root, "kernels", "cuda", "*.cuh"))}
    passed = failed = 0
    for f in files:
        src = open(f).read()
        entries = re.findall(r'extern "C" __global__ void (\w+)', src)
        for arch in ARCHS:
            try:
                ptx = compile_ptx(nvrtc, src, os.path.basename(f), arch, headers)
                missing = [e for e in entries if f".entry {e}" not in ptx]
                assert entries and not missing, f"PTX lacks entries {missing}"
                print(f"ok   {os.path.basename(f)} {arch}: {len(ptx)} bytes of PTX, entries {entries}")
                passed += 1
            except Exception as e:  # report every kernel, then fail
                print(f"FAIL {os.path.basename(f)} {arch}: {e}")
                failed += 1
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
