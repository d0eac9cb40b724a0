"""The kernels compile for a Hopper GPU (sm_90), without one.

The interpreter tests check what the kernels compute; they cannot see the compiled path
(type rules, layouts, shared memory), which only a GPU exercises. Triton's compiler runs
on any machine, so this compiles every kernel for sm_90 in bf16 and fp16, with the first
autotune configuration of each attention kernel, at head dims 64 and 128 and LayerNorm
widths 768 and 8192, with the alignment a launch on PyTorch tensors gets. It checks that the
attention matmuls became Hopper's wgmma, that their loops' loads were software-pipelined,
and that every kernel fits an H100's shared memory.

The compiles run in a child process: under TRITON_INTERPRET=1 (set by conftest.py)
triton.jit builds interpreted functions, which have nothing to compile.
"""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

POINTERS = {
    "Q",
    "K",
    "V",
    "O",
    "LSE",
    "DO",
    "DELTA",
    "DQ",
    "DK",
    "DV",  # attention
    "X",
    "Y",
    "W",
    "B",
    "Mean",
    "Rstd",
    "DY",
    "DX",
    "Partial",
}  # LayerNorm
FP32_POINTERS = {"LSE", "DELTA", "Mean", "Rstd", "Partial"}
FLOATS = {"sm_scale", "eps"}


def compile_for_hopper(fn, dtype: str, constants: dict, num_warps: int, num_stages: int):
    """triton.compile of a @triton.jit function for sm_90; every other argument is an int32."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature, attrs = {}, {}
    for i, p in enumerate(fn.params):
        if p.is_constexpr:
            signature[p.name] = "constexpr"
        elif p.name in POINTERS:
            signature[p.name] = "*fp32" if p.name in FP32_POINTERS else f"*{dtype}"
        else:
            signature[p.name] = "fp32" if p.name in FLOATS else "i32"
        # As a launch on PyTorch tensors specialises them: pointers 16-byte aligned, and the
        # strides of GPT-2's activations multiples of 16.
        if p.name in POINTERS or p.name.startswith("stride"):
            attrs[(i,)] = [["tt.divisibility", 16]]
    source = ASTSource(fn, signature, constexprs=constants, attrs=attrs)
    return triton.compile(
        source, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps, "num_stages": num_stages}
    )


def compile_all() -> list[dict]:
    import triton

    fa = importlib.import_module("minigpt_kernels.flash_attention")
    ln = importlib.import_module("minigpt_kernels.layer_norm")
    results = []

    def record(name, fn, dtype, constants, num_warps=4, num_stages=2):
        try:
            kernel = compile_for_hopper(fn, dtype, constants, num_warps, num_stages)
        except Exception as e:  # reported to the test, which fails with the message
            results.append({"kernel": name, "dtype": dtype, "error": f"{type(e).__name__}: {e}"[:2000]})
            return
        results.append(
            {
                "kernel": name,
                "dtype": dtype,
                "wgmma": "wgmma" in kernel.asm["ptx"],
                "pipelined": "async_copy_global_to_local" in kernel.asm["ttgir"],
                "shared": kernel.metadata.shared,
            }
        )

    for dtype in ("bf16", "fp16"):
        for head_dim in (64, 128):
            for name, fn, configs in (
                ("attn_fwd", fa._attn_fwd, fa._FWD_CONFIGS),
                ("attn_bwd_dkdv", fa._attn_bwd_dkdv, fa._DKDV_CONFIGS),
                ("attn_bwd_dq", fa._attn_bwd_dq, fa._DQ_CONFIGS),
            ):
                config = configs[0]
                constants = dict(config.kwargs, HEAD_DIM=head_dim, CAUSAL=True, DOT_PRECISION="tf32")
                record(f"{name} d={head_dim}", fn, dtype, constants, config.num_warps, config.num_stages)
            record(f"attn_bwd_delta d={head_dim}", fa._attn_bwd_delta, dtype, dict(HEAD_DIM=head_dim, BLOCK_M=128))
        for width in (768, 8192):
            block_n = triton.next_power_of_2(width)
            record(f"layer_norm_fwd n={width}", ln._layer_norm_fwd_kernel, dtype, dict(BLOCK_M=4, BLOCK_N=block_n), 8)
            record(f"layer_norm_bwd n={width}", ln._layer_norm_bwd_kernel, dtype, dict(BLOCK_M=4, BLOCK_N=block_n), 8)
    return results


@pytest.mark.slow
def test_kernels_compile_for_hopper(tmp_path):
    pytest.importorskip("triton")
    try:
        importlib.import_module("triton.backends.nvidia")
    except ImportError:
        pytest.skip("this triton build has no NVIDIA backend")
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, __file__], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(results) == 2 * (2 * 4 + 2 * 2)
    failed = [r for r in results if "error" in r]
    assert not failed, failed
    for r in results:
        assert r["shared"] <= 227 * 1024, r  # an H100's shared memory per block
        if r["kernel"].startswith(("attn_fwd", "attn_bwd_dkdv", "attn_bwd_dq")):
            assert r["wgmma"], r  # the tile matmuls run on Hopper's warp-group tensor cores
            assert r["pipelined"], r  # the inner loop's loads are asynchronous copies, stages ahead


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    print(json.dumps(compile_all()))
