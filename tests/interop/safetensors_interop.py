#!/usr/bin/env python3
"""ffnkit <-> Python safetensors interop (a ctest test).

Usage: safetensors_interop.py TOOL WORKDIR. TOOL is tests/interop/safetensors_tool.cpp's binary.
Exits 77 (ctest SKIP_RETURN_CODE) with the reason printed when numpy or safetensors is missing.
"""
import os
import subprocess
import sys

try:
    import numpy as np
    import safetensors
    from safetensors import safe_open
    from safetensors.numpy import save_file
except ImportError as e:
    print(f"SKIP: Python's safetensors/numpy are not importable ({e}); "
          "`python3 -m pip install safetensors numpy` enables this test")
    sys.exit(77)


def ramp(n, scale, shift):
    return (np.arange(n, dtype=np.float32) + np.float32(shift)) * np.float32(scale)


def official_mlp_file(path):
    """Two MLPs laid out as the official StructuredFFN modules' state_dicts (CLAIRE-Labo/
    StructuredFFN), each with an input and the expected output computed here in float64 with the
    modules' own ops: a LowRank SwiGLU MLP with biases and self-guided extras (guide_linear, count,
    ratio), and a BlockDense GELU MLP at rank = d without biases."""
    rng = np.random.default_rng(5)
    d, f, tokens = 16, 32, 3

    def weight(*shape):
        return (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)

    def gelu(y):  # bias_gelu_fused_ (tanh form)
        return 0.5 * y * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (y + 0.044715 * y ** 3)))

    def swiglu(y):  # torch.chunk(y, 2, -1): the gate first
        gate, up = np.split(y, 2, axis=-1)
        return gate / (1.0 + np.exp(-gate)) * up

    def low_rank(x, t, p):  # low_rank_custom
        return (x @ t[p + "lr1"].astype(np.float64).T) @ t[p + "lr2"].astype(np.float64).T

    def block_dense(x, t, p):  # block_dense_bmm
        blk = t[p + "blkdiag"].astype(np.float64)
        k, q, pp = blk.shape
        out1 = np.einsum("kqp,bkp->bkq", blk, x.reshape(len(x), k, pp)).reshape(len(x), k * q)
        return out1 @ t[p + "lr"].astype(np.float64).T

    t = {}
    m = "lowrank_swiglu.mlp."
    rank = 4
    for name, n_in, n_out in (("fc1.", d, 2 * f), ("fc2.", f, d)):
        t[m + name + "lr1"] = weight(rank, n_in)
        t[m + name + "lr2"] = weight(n_out, rank)
        t[m + name + "bias"] = weight(n_out)
        t[m + name + "guide_linear"] = weight(n_out, n_in)
        t[m + name + "count"] = np.array(7, dtype=np.int64)
        t[m + name + "ratio"] = np.array(0.5, dtype=np.float32)
    x = rng.standard_normal((tokens, d)).astype(np.float32)
    h = swiglu(low_rank(x.astype(np.float64), t, m + "fc1.") + t[m + "fc1.bias"])
    t["lowrank_swiglu.x"] = x
    t["lowrank_swiglu.y"] = low_rank(h, t, m + "fc2.") + t[m + "fc2.bias"]

    m = "blockdense_gelu.mlp."
    blocks, rank = 4, d
    for name, n_in, n_out in (("fc1.", d, f), ("fc2.", f, d)):
        t[m + name + "blkdiag"] = weight(blocks, rank // blocks, n_in // blocks)
        t[m + name + "lr"] = weight(n_out, rank)
    x = rng.standard_normal((tokens, d)).astype(np.float32)
    h = gelu(block_dense(x.astype(np.float64), t, m + "fc1."))
    t["blockdense_gelu.x"] = x
    t["blockdense_gelu.y"] = block_dense(h, t, m + "fc2.")
    save_file(t, path)


def main():
    tool, workdir = sys.argv[1], sys.argv[2]
    os.makedirs(workdir, exist_ok=True)
    failures = []

    def expect(ok, what):
        if not ok:
            failures.append(what)

    # ffnkit writes, Python reads.
    ours = os.path.join(workdir, "from_ffnkit.safetensors")
    subprocess.run([tool, "write", ours], check=True)
    with safe_open(ours, framework="np") as f:
        expect(f.metadata() == {"producer": "ffnkit"}, f"metadata {f.metadata()}")
        expect(set(f.keys()) == {"ffnkit.f32", "ffnkit.f16", "ffnkit.bf16", "ffnkit.f64",
                                 "ffnkit.i32"}, f"keys {sorted(f.keys())}")
        a = f.get_tensor("ffnkit.f32")
        expect(a.dtype == np.float32 and a.shape == (3, 5), f"f32 {a.dtype} {a.shape}")
        expect(np.array_equal(a, ramp(15, 0.375, -7).reshape(3, 5)), "f32 values")
        h = f.get_tensor("ffnkit.f16")
        # numpy's float32 -> float16 cast is the independent oracle of ffnkit's rounding.
        hard = [float.fromhex("0x1.002p0"), float.fromhex("0x1.006p0"), 2049.0, 65520.0,
                float.fromhex("0x1p-26"), float.fromhex("0x1.8p-25")]
        with np.errstate(over="ignore"):
            h_expect = np.concatenate([ramp(4, 0.3, 0), np.array(hard, np.float32)]).astype(
                np.float16)
        expect(h.dtype == np.float16 and np.array_equal(h, h_expect), f"f16 values {h}")
        d = f.get_tensor("ffnkit.f64")
        expect(np.array_equal(d, np.array([1.0 / 3.0, -1e-300])), f"f64 values {d}")
        i = f.get_tensor("ffnkit.i32")
        expect(i.dtype == np.int32 and list(i) == [-1, 0, 123456789], f"i32 values {i}")
    # numpy has no bfloat16: check its bytes through safetensors.deserialize, rounding in numpy.
    with open(ours, "rb") as fh:
        raw = dict(safetensors.deserialize(fh.read()))
    b = raw["ffnkit.bf16"]
    expect(b["dtype"].upper() == "BF16" and list(b["shape"]) == [2, 3], f"bf16 header {b}")
    bits = ramp(6, 0.3, 0).view(np.uint32).astype(np.uint64)
    expect_bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    got_bits = np.frombuffer(bytes(b["data"]), dtype="<u2")
    expect(np.array_equal(got_bits, expect_bits), f"bf16 bits {got_bits} vs {expect_bits}")

    # Python writes, ffnkit reads.
    theirs = os.path.join(workdir, "from_python.safetensors")
    save_file({
        "py.f32": ramp(6, 0.5, -2).reshape(2, 3),
        "py.f16": ramp(5, 0.3, 0).astype(np.float16),
        "py.f64": np.array([[0.1, 0.2], [0.3, 1e300]]),
        "py.i64": np.array([0, -5, 1 << 40], dtype=np.int64),
    }, theirs, metadata={"producer": "python"})
    r = subprocess.run([tool, "check", theirs], capture_output=True, text=True)
    print(r.stdout, end="")
    expect(r.returncode == 0, f"ffnkit rejected Python's file: {r.stdout} {r.stderr}")

    # An official-layout MLP checkpoint, written by numpy, loaded by ffnkit's whole-FFN loader.
    mlp = os.path.join(workdir, "official_mlp.safetensors")
    official_mlp_file(mlp)
    r = subprocess.run([tool, "ffn", mlp], capture_output=True, text=True)
    print(r.stdout, end="")
    expect(r.returncode == 0, f"ffnkit's FFN differs from numpy's: {r.stdout} {r.stderr}")

    if failures:
        for m in failures:
            print("MISMATCH:", m)
        return 1
    print(f"safetensors {safetensors.__version__}, numpy {np.__version__}: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
