#!/usr/bin/env python3
"""PyTorch-only GPU checks for scripts/gpu-check.sh (no .NET needed).

1. The MoE reference of tests/fixtures/gen_moe_fixtures.py (docs/moe.md: the 14 layer cases and the tiny SF-MoE and
   GMoE model cases) run on DEVICE in float32 and bfloat16 against the float64 CPU reference: max relative error of
   the outputs / logits, aux loss difference, share of routing indices and kept flags that agree, and (layer cases)
   the max relative error of the gradients.
2. A step-time baseline of the SF-MoE DeiT-S of bench/authors_step.py (the authors' dense-dispatch MoE, PyTorch,
   Adam) on DEVICE in fp32, tf32 and bf16 (autocast), to compare `sfmoe bench step` against later.

Usage: python3 scripts/gpu_reference.py [--device cuda] [--parts moe,bench] [--batch 96] [--repeats 10]
                                        [--json FILE] [--budget SECONDS]
--device cpu runs everything on the CPU (a dry run of the script; bf16 then uses the CPU's bf16 kernels).
Needs numpy and torch (Debian's python3-torch or a pip PyTorch); nothing is downloaded.
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures"))
sys.path.insert(0, os.path.join(ROOT, "bench"))

F64 = torch.float64
START = time.monotonic()


def log(msg):
    print(msg, flush=True)


def on_device(device):
    """A context that makes tensor factories without a device land on DEVICE (the reference's torch.zeros etc.)."""
    if device.type != "cpu" and hasattr(torch, "device") and hasattr(torch.device(device), "__enter__"):
        return torch.device(device)
    if device.type != "cpu":
        raise RuntimeError(f"PyTorch {torch.__version__} cannot make factory calls default to {device} (needs >= 2.0)")

    class Nothing:
        def __enter__(self):
            return None

        def __exit__(self, *a):
            return False
    return Nothing()


def rel(a, b):
    """max |a - b| / max(max |b|, 1e-12), in float64 on the CPU."""
    a = a.detach().to("cpu", F64)
    b = b.detach().to("cpu", F64)
    return float((a - b).abs().max() / max(float(b.abs().max()), 1e-12)) if b.numel() else 0.0


def agree(a, b):
    a = a.detach().cpu()
    b = b.detach().cpu()
    return float((a == b).double().mean()) if b.numel() else 1.0


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------------------------------
# 1. MoE reference: float64 CPU vs DEVICE float32 / bfloat16
# ---------------------------------------------------------------------------------------------------------------------

def run_layer(moe, c, w, x, draws, dy, device, dtype):
    """moe_reference with autograd on DEVICE in DTYPE; loss = sum(y * dy) + aux as in the fixtures."""
    m, training = c["moe"], c["training"]
    with on_device(device):
        p = {k: torch.from_numpy(np.asarray(v)).to(device, dtype).requires_grad_(True) for k, v in w.items()}
        xt = torch.from_numpy(x).to(device, dtype).requires_grad_(True)
        d = {k: torch.from_numpy(np.asarray(v)).to(device, dtype) for k, v in draws.items()}
        res = moe.moe_reference(m, training, p, xt, d)
        loss = (res["y"] * torch.from_numpy(dy).to(device, dtype)).sum() + res["aux"]
        names = ["x"] + sorted(p)
        tensors = [xt] + [p[n] for n in sorted(p)]
        gs = torch.autograd.grad(loss, tensors, allow_unused=True)
    grads = {n: (g if g is not None else torch.zeros_like(t)) for n, g, t in zip(names, gs, tensors)}
    return res, grads


def moe_checks(device, budget_end):
    import gen_moe_fixtures as moe   # the reference; importing it runs nothing
    out = {"layers": [], "models": []}
    for c in moe.LAYER_CASES:
        if time.monotonic() > budget_end:
            out["stopped"] = "time budget reached"
            break
        w, x, draws, dy = moe.make_layer_case(c)
        ref, gref = run_layer(moe, c, w, x, draws, dy, torch.device("cpu"), F64)
        row = {"case": c["name"]}
        for tag, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            try:
                t0 = time.monotonic()
                res, g = run_layer(moe, c, w, x, draws, dy, device, dtype)
                sync(device)
                row[tag] = {
                    "y_rel": rel(res["y"], ref["y"]),
                    "aux_abs": abs(float(res["aux"]) - float(ref["aux"])),
                    "index_agree": agree(res["index"], ref["index"]),
                    "kept_agree": agree(res["kept"], ref["kept"]),
                    "grad_rel": max(rel(g[n], gref[n]) for n in gref),
                    "ms": round((time.monotonic() - t0) * 1000, 1),
                }
            except Exception as e:  # report, do not stop: bf16 kernels differ between builds
                row[tag] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
        out["layers"].append(row)
        f, b = row["fp32"], row["bf16"]
        log(f"  layer {c['name']:<32} fp32: " + fmt(f) + " | bf16: " + fmt(b))
    for case in moe.MODEL_CASES:
        if time.monotonic() > budget_end:
            out["stopped"] = "time budget reached"
            break
        rng = np.random.RandomState(case["seed"])
        weights = moe.make_model_weights(case, rng)
        cfg = case["cfg"]
        h, wd = cfg["input_size"]
        x = rng.standard_normal((moe.vit.BATCH, cfg["in_chans"], h, wd)).astype(np.float32)
        with torch.no_grad():
            lref, aref, rref = moe.model_forward(case, moe.to64(weights), torch.from_numpy(x).to(F64), moe.moe_reference)
        row = {"case": case["name"]}
        for tag, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            try:
                with torch.no_grad(), on_device(device):
                    wd_ = {k: torch.from_numpy(np.asarray(v)).to(device, dtype) for k, v in weights.items()}
                    logits, aux, recs = moe.model_forward(case, wd_, torch.from_numpy(x).to(device, dtype), moe.moe_reference)
                sync(device)
                row[tag] = {
                    "logits_rel": rel(logits, lref),
                    "aux_abs": abs(float(aux) - float(aref)),
                    "index_agree": min(agree(recs[i]["index"], rref[i]["index"]) for i in rref),
                    "kept_agree": min(agree(recs[i]["kept"], rref[i]["kept"]) for i in rref),
                }
            except Exception as e:
                row[tag] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
        out["models"].append(row)
        log(f"  model {case['name']:<32} fp32: " + fmt(row["fp32"]) + " | bf16: " + fmt(row["bf16"]))
    return out


def fmt(r):
    if "error" in r:
        return "ERROR " + r["error"]
    keys = [k for k in ("y_rel", "logits_rel", "grad_rel", "aux_abs") if k in r]
    s = " ".join(f"{k} {r[k]:.2e}" for k in keys)
    return s + f" routing {r['index_agree']:.3f} kept {r['kept_agree']:.3f}"


# ---------------------------------------------------------------------------------------------------------------------
# 2. Step-time baseline: the authors' SF-MoE DeiT-S in PyTorch
# ---------------------------------------------------------------------------------------------------------------------

def bench(device, batch, warmup, repeats, budget_end):
    import authors_step
    out = []
    for prec in ("fp32", "tf32", "bf16"):
        if time.monotonic() > budget_end:
            out.append({"precision": prec, "skipped": "time budget reached"})
            continue
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = prec == "tf32"
            torch.backends.cudnn.allow_tf32 = prec == "tf32"
        torch.manual_seed(0)
        model = opt = x = y = None
        try:
            model = authors_step.SfMoeDeitS().to(device).train()
            opt = torch.optim.Adam(model.parameters(), lr=1e-5)
            x = torch.randn(batch, 3, 224, 224, device=device)
            y = torch.randint(0, 1000, (batch,), device=device)

            def step():
                if prec == "bf16":
                    with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                        logits, aux = model(x)
                        loss = F.cross_entropy(logits.float(), y) + aux
                else:
                    logits, aux = model(x)
                    loss = F.cross_entropy(logits, y) + aux
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                return loss

            for _ in range(warmup):
                step()
            sync(device)
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                loss = step()
                sync(device)
                times.append((time.perf_counter() - t) * 1000)
                if time.monotonic() > budget_end:
                    break
            ms = statistics.median(times)
            r = {"precision": prec, "batch": batch, "step_ms": round(ms, 2), "images_per_s": round(batch / ms * 1000, 1),
                 "steps_timed": len(times), "loss": round(float(loss), 4)}
            if device.type == "cuda":
                r["peak_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2)
                torch.cuda.reset_peak_memory_stats(device)
            log(f"  authors' SF-MoE DeiT-S step, {prec}: {ms:.1f} ms median of {len(times)}, batch {batch}, "
                f"{r['images_per_s']} images/s")
        except Exception as e:
            r = {"precision": prec, "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
            log(f"  authors' SF-MoE DeiT-S step, {prec}: ERROR {r['error']}")
        out.append(r)
        model = opt = x = y = None  # free the model before the next precision
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--parts", default="moe,bench")
    ap.add_argument("--batch", type=int, default=None, help="bench batch (default 96 on cuda, 2 on cpu)")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--budget", type=float, default=240.0, help="seconds; later cases are skipped past it")
    a = ap.parse_args()
    device = torch.device(a.device)
    cpu = device.type == "cpu"
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"gpu_reference: error: --device {a.device} but torch.cuda.is_available() is False "
              f"(PyTorch {torch.__version__}, built with CUDA {torch.version.cuda})", file=sys.stderr)
        return 2
    budget_end = START + a.budget
    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "threads": torch.get_num_threads()}
    log(f"gpu_reference: PyTorch {info['torch']} (CUDA {info['cuda']}), device {info['device']} ({info['device_name']})")
    report = {"info": info}
    parts = set(a.parts.split(","))
    if "moe" in parts:
        log("MoE reference (tests/fixtures/gen_moe_fixtures.py) on the device vs float64 on the CPU:")
        report["moe"] = moe_checks(device, budget_end - (60 if "bench" in parts else 0))
    if "bench" in parts:
        batch = a.batch or (2 if cpu else 96)
        log(f"Step-time baseline (bench/authors_step.py's model), batch {batch}:")
        report["bench"] = bench(device, batch, a.warmup if a.warmup is not None else (1 if cpu else 3),
                                a.repeats if a.repeats is not None else (1 if cpu else 10), budget_end)
    report["seconds"] = round(time.monotonic() - START, 1)
    if a.json:
        tmp = a.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(report, f, indent=1)
        os.replace(tmp, a.json)
    errors = [r for r in report.get("moe", {}).get("layers", []) + report.get("moe", {}).get("models", [])
              if "error" in r.get("fp32", {})]
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
