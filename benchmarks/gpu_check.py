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
    scan          the chunked scan on the device against the step-by-step definition; the mamba_ssm
                  kernel against the chunked scan (if mamba_ssm imports)
    finetune      the real run's path at the 124M size in bf16 (a random 124M base, or --base): 6 steps
                  through `torchrun --nproc_per_node RANKS` (NCCL; a process group even for one rank),
                  rank-0 saving (checkpoints at 3 and 6, an RNG file per rank), killed after step 4
                  (a real SIGKILL) and resumed from 3: the resumed losses against the uninterrupted ones;
                  with --ranks N >= 2 also DDP (no_sync accumulation, the bf16 all-reduce, barriers)
                  against one process at the same global batch
    generate      generation tokens/s at batch 1 and 8 (`python -m mambaft.bench generate`, decode
                  phase with its bandwidth fraction)

    python benchmarks/gpu_check.py --ranks 6 --only finetune   # the six-GPU path, on six GPUs

--dry-run: device cpu, tiny model sizes, the finetune section on 2 gloo ranks (and 1 process) in fp32,
where DDP equality and resume equality are asserted by tests/test_gpu_check.py; compile is skipped
(minutes on CPU). The fixture and data are read from the checkout.
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
from typing import Optional

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
    # the chunked scan the model runs, on the device, against the definition (one step at a time, CPU)
    y_ref, h_ref = scan.selective_scan_ref(x, delta, A, Bm, Cm, D)
    args = [t.to(dev) for t in (x, delta, A, Bm, Cm, D)]
    y_dev, h_dev = scan.selective_scan(*args, use_kernel=False)
    out = {"mamba_ssm": scan.HAS_MAMBA_SSM, "shape": [B, L, E, N],
           "chunked_vs_definition_max_abs_diff_y": float((y_dev.float().cpu() - y_ref).abs().max()),
           "chunked_vs_definition_max_abs_diff_state": float((h_dev.float().cpu() - h_ref).abs().max())}
    if not scan.HAS_MAMBA_SSM:
        out["note"] = "mamba_ssm is not installed: the chunked PyTorch scan runs on CUDA"
        return out
    t0 = time.perf_counter()
    y_k, h_k = scan.selective_scan(*args, use_kernel=True)
    torch.cuda.synchronize()
    return {**out, "kernel_s": time.perf_counter() - t0,
            "max_abs_diff_y": float((y_k.float().cpu() - y_cpu).abs().max()),
            "max_abs_diff_last_state": float((h_k.float().cpu() - h_cpu).abs().max())}


def _base(tmp: Path, dry: bool, base: Optional[str]) -> Path:
    """The base the fine-tune section trains: --base, else a random model of the 124M size (a dry run:
    d_model 32, 2 layers, the same GPT-2 vocabulary), saved as a mambaft folder."""
    if base:
        return Path(base)
    import torch

    from mambaft.checkpoint import save_checkpoint
    from mambaft.model.mambaswelu import MambaSWELU, MambaSWELUConfig
    torch.manual_seed(0)
    cfg = MambaSWELUConfig(d_model=32, n_layers=2, dense_hidden_dim=64, max_seq_len=256) if dry else MambaSWELUConfig()
    return save_checkpoint(MambaSWELU(cfg), tmp / "base")


def _launch(dev: str, ranks: int, base: Path, data: Path, out: Path, sets: dict, fault: str = "") -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node RANKS -m mambaft.finetune` (NCCL on GPUs, gloo in a dry run): a
    process group even for one rank, as the six-GPU run has; one rank needs no DDP (accelerate wraps
    only for 2+), so no_sync and the all-reduce are exercised by --ranks 2 and more."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node",
           str(ranks), "-m", "mambaft.finetune", "--strategy", "smoke", "--base", str(base), "--data", str(data),
           "--out", str(out), "--no-progress", "--no-probes", "--heldout", "none", "--no-eval-at-start",
           *(["--cpu", "--threads", "1"] if dev == "cpu" else [])]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={json.dumps(v)}"]
    env = {**_env(), **({"MAMBAFT_FAULT": fault} if fault else {})}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)


def _losses(out: Path) -> dict:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r and "event" not in r}


def _max_rel(a: dict, b: dict) -> Optional[float]:
    common = sorted(set(a) & set(b))
    return max(abs(a[s] - b[s]) / max(abs(a[s]), 1e-12) for s in common) if common else None


def check_finetune(dev: str, dry: bool, tmp: Path, ranks: int = 1, base: Optional[str] = None) -> dict:
    """The real run's path at the 124M size (tiny in a dry run), through the launcher of the real run:
      reference   RANKS processes, 6 steps of batch 2 x accumulation 2 per rank, checkpoints at 3 and 6
      resumed     the same, killed after step 4 (a real SIGKILL of every rank), then resumed from 3:
                  its losses against the reference (resume equality)
      one         one process with accumulation 2 x RANKS (the same global batch), when RANKS > 1:
                  against the reference (DDP equality; in a dry run RANKS is 2 on gloo)
    and what rank 0 alone saved (one committed folder per checkpoint, an RNG file per rank)."""
    steps, save, stop = 6, 3, 4
    data = tmp / "data"
    sources = ["--source", f"alpaca={HUB_FIXTURES / 'alpaca_data.json'}",
               "--source", f"dolly={HUB_FIXTURES / 'databricks-dolly-15k.jsonl'}",
               "--source", f"sharegpt={HUB_FIXTURES / 'sharegpt.json'}"]
    if not data.is_dir():
        p = subprocess.run([sys.executable, "-m", "mambaft", "prepare", "--strategy", "smoke", *sources,
                            "--set", "data_mode=offline", "--set",
                            'offline_sources={"alpaca": 1.0, "dolly": 1.0, "sharegpt": 1.0}', "--out", str(data),
                            "--quiet"], env=_env(), capture_output=True, text=True, cwd=ROOT)
        if p.returncode != 0:
            raise RuntimeError(f"prepare failed: {p.stderr[-2000:]}")
    b = _base(tmp, dry, base)
    common = {"max_steps": steps, "save_every": save, "eval_every": save, "keep_last": 2, "batch_size": 2,
              "lr": 1e-3, "warmup_steps": 1, "eval_batches": 2, "eval_replies": 0,
              "precision": "fp32" if dry else "bf16"}
    res: dict = {"ranks": ranks, "base": str(b), "steps": steps, "killed_after_step": stop}
    t0 = time.perf_counter()
    ref_out = tmp / f"ref{ranks}"
    ref = _launch(dev, ranks, b, data, ref_out, {**common, "grad_accum": 2})
    if ref.returncode != 0:
        raise RuntimeError(f"reference fine-tune failed: {ref.stderr[-2000:]}")
    res["reference_s"] = time.perf_counter() - t0
    reference = _losses(ref_out)
    start = json.loads((ref_out / "metrics.jsonl").read_text().splitlines()[0])
    res.update(world_size=start.get("world_size"), grad_comm=start.get("grad_comm"),
               steps_logged=sorted(reference), first_loss=reference.get(1), last_loss=reference.get(steps))
    ck = sorted(p.name for p in (ref_out / "checkpoints").iterdir())
    res["checkpoints"] = ck
    res["rng_files"] = sorted(p.name for p in (ref_out / "checkpoints" / ck[-1]).glob("rng_rank*.pt")) if ck else []
    out = tmp / f"killed{ranks}"
    first = _launch(dev, ranks, b, data, out, {**common, "grad_accum": 2}, fault=f"after_step={stop}")
    second = _launch(dev, ranks, b, data, out, {**common, "grad_accum": 2})
    if second.returncode != 0:
        raise RuntimeError(f"resumed fine-tune failed: {second.stderr[-2000:]}")
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    resumed = _losses(out)
    res.update(first_returncode=first.returncode, resumed_from=[r["step"] for r in rows if r.get("event") == "resume"],
               resumed_steps=sorted(resumed), resume_max_rel_diff=_max_rel(reference, resumed),
               final_steps=json.loads((out / "result.json").read_text()).get("steps"))
    if ranks > 1:
        one_out = tmp / "one"
        one = _launch(dev, 1, b, data, one_out, {**common, "grad_accum": 2 * ranks})
        if one.returncode != 0:
            raise RuntimeError(f"one-process fine-tune failed: {one.stderr[-2000:]}")
        res["ddp_vs_one_process_max_rel_diff"] = _max_rel(reference, _losses(one_out))
    tok = [json.loads(x).get("tokens_per_s") for x in (ref_out / "metrics.jsonl").read_text().splitlines()]
    res["tokens_per_s_median"] = sorted(t for t in tok if t)[len([t for t in tok if t]) // 2] if any(tok) else None
    return res


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
    p.add_argument("--ranks", type=int, default=None,
                   help="processes of the fine-tune section (default: 1 on a GPU, 2 gloo ranks in a dry run)")
    p.add_argument("--base", default=None, help="the base the fine-tune section trains (default: random 124M)")
    a = p.parse_args(argv)
    import torch
    dev = "cpu" if a.dry_run else "cuda"
    if not a.dry_run and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device (use --dry-run to check the script on CPU)")
    ranks = a.ranks or (2 if a.dry_run else 1)
    if not a.dry_run and ranks > torch.cuda.device_count():
        raise SystemExit(f"gpu_check: --ranks {ranks} but {torch.cuda.device_count()} GPU(s) visible")
    report = {"dry_run": a.dry_run, "device": dev, "torch": torch.__version__, "ranks": ranks,
              "gpu": torch.cuda.get_device_name(0) if dev == "cuda" else None, "sections": {}}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as td:
        tmp = Path(td)
        for name in a.only.split(","):
            fn = {"logits": lambda: check_logits(dev, a.dry_run, a.fixture), "scan": lambda: check_scan(dev, a.dry_run),
                  "train": lambda: check_train(dev, a.dry_run, tmp), "memory": lambda: check_memory(dev, a.dry_run, tmp),
                  "finetune": lambda: check_finetune(dev, a.dry_run, tmp, ranks, a.base),
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
