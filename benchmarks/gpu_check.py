"""Everything in mambaft that needs CUDA, checked in one run (< 8 min on one GPU), written as JSON.

    make gpu-check                                   # = python benchmarks/gpu_check.py
    python benchmarks/gpu_check.py --out outputs/gpu_check.json
    python benchmarks/gpu_check.py --dry-run         # the same sections on CPU at tiny sizes (tests)

Sections (each records its seconds, and an "error" instead of stopping the run when it fails; the JSON
file is rewritten after every section, so a run cut short keeps what it measured):
    logits        the original-code fixture (tests' mambaswelu_tiny) on CUDA against CPU: max |diff|
                  of the fp32 logits, and the loss
    train         the bf16 train step at the real 124M config, batch 4 x 1024, without and with
                  torch.compile (`python -m mambaft.bench train`): tokens/s, MFU (measured GEMM peak
                  and the card's nominal bf16 peak), peak memory
    memory        peak memory of the same step at 2 x 1024 (4 x 1024 comes from `train`)
    scan          the mamba_ssm kernel against the CPU scan on the same inputs (if mamba_ssm imports)
    finetune      a 50-step single-GPU fine-tune of the demo base through `accelerate launch`, killed
                  after step 30 (MAMBAFT_FAULT) and resumed from its step-25 checkpoint
    generate      generation tokens/s at batch 1 and 8 (`python -m mambaft.bench generate`, decode
                  phase with its bandwidth fraction)
--dry-run: device cpu, tiny model sizes, a 6-step fine-tune killed after step 4 and resumed from 3;
compile is skipped (minutes on CPU). The fixture, data and demo base are read from the checkout.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FIXTURE = ROOT / "tests" / "fixtures" / "mambaswelu_tiny"   # the original code's checkpoint and its outputs
HUB_FIXTURES = ROOT / "tests" / "fixtures" / "hub"


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("MAMBAFT_FAULT", None)
    return env


def _bench(args: list, out: Path) -> list:
    """`python -m mambaft.bench ARGS --out FILE` in a child process -> its JSON objects."""
    if out.exists():
        out.unlink()
    p = subprocess.run([sys.executable, "-m", "mambaft.bench", *args, "--out", str(out)], env=_env(),
                       capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        raise RuntimeError(f"mambaft.bench {' '.join(args)} exited {p.returncode}: {p.stderr[-2000:]}")
    return [json.loads(x) for x in out.read_text().splitlines() if x.strip()]


def check_logits(dev: str, dry: bool, fixture=None) -> dict:
    import torch

    from mambaft.checkpoint import load_checkpoint
    where = Path(fixture or FIXTURE)
    if not (where / "checkpoint.pt").is_file():
        raise FileNotFoundError(f"{where}: no checkpoint.pt (the mambaswelu_tiny fixture, tests/fixtures/README.md)")
    ref = torch.load(where / "reference.pt", weights_only=True)
    model, _ = load_checkpoint(where / "checkpoint.pt")
    ids = ref["input_ids"]
    with torch.no_grad():
        cpu = model(ids, labels=ids)
        model.to(dev)
        dv = model(ids.to(dev), labels=ids.to(dev))
    return {"fixture": str(where), "max_abs_diff_logits": float((dv["logits"].cpu() - cpu["logits"]).abs().max()),
            "max_abs_diff_vs_original_code": float((dv["logits"].cpu() - ref["logits"]).abs().max()),
            "loss_device": float(dv["loss"]), "loss_cpu": float(cpu["loss"]), "loss_original": float(ref["loss"])}


def check_train(dev: str, dry: bool, tmp: Path) -> dict:
    size = ["--d-model", "32", "--n-layers", "2", "--vocab", "257", "--threads", "1"] if dry else []
    shape = ["--batch", "1", "--seq", "32", "--steps", "1", "--warmup", "0"] if dry else \
        ["--batch", "4", "--seq", "1024", "--steps", "10", "--warmup", "3"]
    objs = _bench(["train", "--impl", "mambaft", "--device", dev, "--precision", "bf16",
                   "--compile", "off" if dry else "off,on", *size, *shape], tmp / "train.jsonl")
    keep = ("compile", "precision", "batch", "seq", "tokens_per_s", "median_step_s", "mfu", "mfu_nominal_bf16",
            "gpu", "achieved_gflops", "peak_gflops_bf16", "peak_mem_mb", "step_s")
    return {"runs": [{k: o.get(k) for k in keep} for o in objs],
            "compile_skipped": "dry run (compiling takes minutes on CPU)" if dry else None}


def check_memory(dev: str, dry: bool, tmp: Path) -> dict:
    size = ["--d-model", "32", "--n-layers", "2", "--vocab", "257", "--threads", "1"] if dry else []
    shape = ["--batch", "1", "--seq", "16"] if dry else ["--batch", "2", "--seq", "1024"]
    (o,) = _bench(["train", "--impl", "mambaft", "--device", dev, "--precision", "bf16", *size, *shape,
                   "--steps", "1", "--warmup", "1"], tmp / "memory.jsonl")
    return {"batch": o["batch"], "seq": o["seq"], "peak_mem_mb": o["peak_mem_mb"], "tokens_per_s": o["tokens_per_s"]}


def check_scan(dev: str, dry: bool) -> dict:
    import torch

    from mambaft.model.kernels import scan
    B, L, E, N = (1, 16, 8, 4) if dry else (2, 1024, 2048, 16)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, L, E, generator=g)
    delta = torch.nn.functional.softplus(torch.randn(B, L, E, generator=g) - 3)
    A = -torch.rand(E, N, generator=g) * 4
    Bm, Cm = torch.randn(B, L, N, generator=g), torch.randn(B, L, N, generator=g)
    D = torch.ones(E)
    y_cpu, h_cpu = scan.selective_scan(x, delta, A, Bm, Cm, D, use_kernel=False)
    if not scan.HAS_MAMBA_SSM:
        return {"mamba_ssm": False, "note": "mamba_ssm is not installed: the CPU scan (`_ChunkedScan`) "
                                            "also runs on CUDA", "cpu_scan_checked": True}
    args = [t.to(dev) for t in (x, delta, A, Bm, Cm, D)]
    t0 = time.perf_counter()
    y_k, h_k = scan.selective_scan(*args, use_kernel=True)
    torch.cuda.synchronize()
    return {"mamba_ssm": True, "shape": [B, L, E, N], "kernel_s": time.perf_counter() - t0,
            "max_abs_diff_y": float((y_k.float().cpu() - y_cpu).abs().max()),
            "max_abs_diff_last_state": float((h_k.float().cpu() - h_cpu).abs().max())}


def check_finetune(dev: str, dry: bool, tmp: Path) -> dict:
    """`accelerate launch` (1 process) of the demo base on a set prepared from the checkout's hub-format
    fixtures; killed after step `stop` (a real SIGKILL), then the same command resumes."""
    steps, save, stop = (6, 3, 4) if dry else (50, 25, 30)
    data = tmp / "data"
    sources = ["--source", f"alpaca={HUB_FIXTURES / 'alpaca_data.json'}",
               "--source", f"dolly={HUB_FIXTURES / 'databricks-dolly-15k.jsonl'}",
               "--source", f"sharegpt={HUB_FIXTURES / 'sharegpt.json'}"]
    p = subprocess.run([sys.executable, "-m", "mambaft", "prepare", "--strategy", "smoke", *sources,
                        "--set", "data_mode=offline", "--set",
                        'offline_sources={"alpaca": 1.0, "dolly": 1.0, "sharegpt": 1.0}', "--out", str(data),
                        "--quiet"], env=_env(), capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        raise RuntimeError(f"prepare failed: {p.stderr[-2000:]}")
    out = tmp / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", *(["--cpu"] if dev == "cpu" else []),
           "-m", "mambaft.finetune", "--strategy", "smoke", "--base", str(ROOT / "data" / "demo_base"),
           "--data", str(data), "--out", str(out), "--no-progress", "--no-probes", "--heldout", "none",
           "--no-eval-at-start", "--set", f"max_steps={steps}", "--set", f"save_every={save}",
           "--set", f"eval_every={save}", "--set", "precision=auto"]
    t0 = time.perf_counter()
    first = subprocess.run(cmd, env={**_env(), "MAMBAFT_FAULT": f"after_step={stop}"}, capture_output=True,
                           text=True, cwd=ROOT)
    t1 = time.perf_counter()
    second = subprocess.run(cmd, env=_env(), capture_output=True, text=True, cwd=ROOT)
    t2 = time.perf_counter()
    if second.returncode != 0:
        raise RuntimeError(f"resumed fine-tune failed: {second.stderr[-2000:]}")
    result = json.loads((out / "result.json").read_text())
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    losses = {r["step"]: r["loss"] for r in rows if "loss" in r and "event" not in r}
    resumes = [r["step"] for r in rows if r.get("event") == "resume"]
    return {"steps": steps, "killed_after_step": stop, "first_returncode": first.returncode,
            "first_s": t1 - t0, "resumed_s": t2 - t1, "resumed_from": resumes,
            "final_steps": result.get("steps"), "steps_logged": sorted(losses),
            "first_loss": losses.get(1), "last_loss": losses.get(steps),
            "resumed_in_stdout": "resuming from" in second.stdout}


def check_generate(dev: str, dry: bool, tmp: Path) -> dict:
    size = ["--d-model", "32", "--n-layers", "2", "--vocab", "257", "--threads", "1", "--max-seq-len", "64",
            "--prompt", "8", "--new", "4", "--probe", "2", "--repeats", "1", "--warmup", "0"] if dry else \
        ["--prompt", "512", "--new", "128", "--probe", "32", "--repeats", "3", "--warmup", "1"]
    objs = _bench(["generate", "--impl", "mambaft", "--device", dev, "--batches", "1,8", "--contexts", "",
                   "--no-memory", *size], tmp / "generate.jsonl")
    keep = ("phase", "batch", "tokens_per_s", "ms_per_token", "ms_per_step", "bandwidth_fraction",
            "copy_bandwidth_gb_s", "weight_mb_per_step")
    return {"runs": [{k: o.get(k) for k in keep if k in o} for o in objs]}


SECTIONS = ("logits", "train", "memory", "scan", "finetune", "generate")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "outputs" / "gpu_check.json"))
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: checks the script itself")
    p.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    p.add_argument("--fixture", default=None, help="the mambaswelu_tiny fixture folder (default: searched)")
    a = p.parse_args(argv)
    import torch
    dev = "cpu" if a.dry_run else "cuda"
    if not a.dry_run and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device (use --dry-run to check the script on CPU)")
    report = {"dry_run": a.dry_run, "device": dev, "torch": torch.__version__,
              "gpu": torch.cuda.get_device_name(0) if dev == "cuda" else None, "sections": {}}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as td:
        tmp = Path(td)
        for name in a.only.split(","):
            fn = {"logits": lambda: check_logits(dev, a.dry_run, a.fixture), "scan": lambda: check_scan(dev, a.dry_run),
                  "train": lambda: check_train(dev, a.dry_run, tmp), "memory": lambda: check_memory(dev, a.dry_run, tmp),
                  "finetune": lambda: check_finetune(dev, a.dry_run, tmp),
                  "generate": lambda: check_generate(dev, a.dry_run, tmp)}.get(name)
            if fn is None:
                raise SystemExit(f"--only {name}: unknown section (known: {', '.join(SECTIONS)})")
            print(f"[gpu_check] {name} ...", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            try:
                res = fn()
            except Exception as e:  # noqa: BLE001 - one failing section must not hide the others
                res = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
            res["seconds"] = round(time.perf_counter() - t0, 2)
            report["sections"][name] = res
            report["total_s"] = round(time.perf_counter() - t_all, 2)
            out.write_text(json.dumps(report, indent=1))
            print(f"[gpu_check] {name}: {res['seconds']} s" + (f" ERROR {res['error']}" if "error" in res else ""),
                  file=sys.stderr, flush=True)
    print(json.dumps({k: v for k, v in report.items() if k != "sections"}))
    return 1 if any("error" in s for s in report["sections"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
