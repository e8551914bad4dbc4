#!/usr/bin/env python3
"""Writes tests/fixtures/st_python.safetensors with the reference `safetensors` package (torch
backend, for BF16), so the C reader is tested against files it did not write itself.
The values are exactly representable in their dtypes; tests/test_safetensors.c checks them.

usage: python3 tools/make_st_fixture.py [output path]
"""
import os
import sys

import torch
from safetensors.torch import save_file


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "tests", "fixtures", "st_python.safetensors")
    tensors = {
        "f32": torch.tensor([[0.0, 1.5, -2.0], [3.25, 1e-3, -1e30]], dtype=torch.float32),
        # 2**-24 is the smallest f16 subnormal; 65504 the largest finite f16
        "f16": torch.tensor([1.0, -0.5, 65504.0, 2.0**-24, float("-inf")], dtype=torch.float16),
        # 2**-133 is the smallest bf16 subnormal
        "bf16": torch.tensor([[1.0, -2.0], [0.15625, 2.0**-133]], dtype=torch.bfloat16),
        "i64": torch.tensor([-1, 0, 2**40], dtype=torch.int64),
        "i64_small": torch.tensor([7, -3], dtype=torch.int64),
    }
    save_file(tensors, out, metadata={"format": "pt", "source": "tools/make_st_fixture.py"})
    print(f"wrote {out} ({os.path.getsize(out)} bytes)")


if __name__ == "__main__":
    main()
