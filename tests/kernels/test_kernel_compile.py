"""The kernels compile for Hopper (sm_90) on any machine.

The interpreter runs kernels as NumPy and never compiles them, so a kernel that is right
in the interpreter could still be rejected by the GPU compiler. Triton compiles ahead of
time for a target without a GPU (its wheel bundles ptxas), so CI checks that here, for
each kernel, dtype and constexpr branch, with the first GPU autotune config.

The compile runs in a subprocess without TRITON_INTERPRET: in this process the kernels
were decorated as interpreted functions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

CASES = [
    ("_combine_kernel", "bf16", 2, True),
    ("_combine_kernel", "bf16", 2, False),
    ("_combine_kernel", "fp16", 16, False),
    ("_combine_kernel", "fp32", 2, False),
    ("_rowscaled_kernel", "bf16", 2, True),
    ("_rowscaled_kernel", "bf16", 2, False),
    ("_rowscaled_kernel", "fp16", 16, False),
    ("_rowscaled_kernel", "fp32", 2, False),
]

COMPILE_SCRIPT = r"""
import importlib, json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

module = importlib.import_module("dawin_fast.kernels.interp_matmul")
POINTERS = {"c_ptr": "*fp32", "block_group_ptr": "*i32", "row_group_ptr": "*i32",
            "block_row_ptr": "*i64", "offsets_ptr": "*i64"}
results = {}
for kernel_name, dtype, num_models, single_group in json.loads(sys.argv[1]):
    kernel = getattr(module, kernel_name)
    config = kernel.configs[0]
    constexprs = dict(M=num_models, SINGLE_GROUP=single_group, HAS_BIAS=True,
                      IEEE=dtype == "fp32", **config.kwargs)
    constexprs.setdefault("BLOCK_M", 128)
    signature = {
        name: "constexpr" if name in constexprs
        else POINTERS.get(name, "*" + dtype) if name.endswith("_ptr") else "i32"
        for name in kernel.fn.arg_names
    }
    key = f"{kernel_name}-{dtype}-{num_models}-{single_group}"
    try:
        compiled = triton.compile(
            ASTSource(kernel.fn, signature, constexprs=constexprs),
            target=GPUTarget("cuda", 90, 32),
            options=dict(num_warps=config.num_warps, num_stages=config.num_stages),
        )
        ok = bool(compiled.asm["cubin"]) and ".target sm_90" in compiled.asm["ptx"]
        results[key] = "ok" if ok else "no sm_90 cubin"
    except Exception as exc:  # report every case, not just the first failure
        results[key] = f"{type(exc).__name__}: {exc}"[:2000]
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def compile_results():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-c", COMPILE_SCRIPT, json.dumps(CASES)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kernel_name, dtype, num_models, single_group", CASES)
def test_kernel_compiles_for_sm90(compile_results, kernel_name, dtype, num_models,
                                  single_group):
    key = f"{kernel_name}-{dtype}-{num_models}-{single_group}"
    assert compile_results[key] == "ok", compile_results[key]
