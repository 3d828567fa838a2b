"""Issue 28's red team, measured: bad model files through every entry point that reads a model,
bad output folders, changed inputs on a resume, damaged checkpoints, full disks. Each case runs as a
user would (`mambaft CMD ...`, in this process so it takes seconds, with a 30 s alarm for hangs) and
is classified:

    clear error      rc 2, exactly one line on stderr, "mambaft CMD: error: ..." (or a UserError in Python)
    fell back        a resume past damage: the newest intact checkpoint used, the damage kept and said
    named            `info` on a NaN model: rc 0, the description names the non-finite tensors
    silently wrong   rc 0 on a bad input
    crash            any other exception (a traceback for the user)
    hang             the 30 s alarm fired
    lost             a file that existed before the case changed or vanished

The table and its counts are printed (and the README's "Run safety" section quotes them):

    python -m pytest -q -s tests/test_red_team.py
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import sys
from collections import Counter
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mambaft.checkpoint import save_checkpoint
from mambaft.cli import main
from mambaft.errors import DiskFullError
from tests.conftest import make_small_gpt2_model
from tests.test_train_loop import QA, learnable_model, write_prepared

ENTRY = {   # every command that reads a model file, with the arguments that make it run quickly
    "info": lambda m: ["info", m],
    "generate": lambda m: ["generate", "--model", m, "--new", "2"],
    "logprobs": lambda m: ["logprobs", "--model", m, "Hello"],
    "ask": lambda m: ["ask", "--model", m, "Hi", "--max-new-tokens", "2"],
    "export": lambda m: ["export", m, "--to", m.rstrip("/") + "-exported"],
    "info --to": lambda m: ["info", m, "--to", m.rstrip("/") + "-converted"],
    "diagnose": lambda m: ["diagnose", "--model", m, "--max-new", "2", "--trials", "1"],
    "chat": lambda m: ["chat", "--model", m, "--max-new-tokens", "2"],
}


OUTCOMES = ("clear error", "fell back", "named", "silently wrong", "crash", "hang")


class Hang(Exception):
    pass


def _alarm(*_):
    raise Hang()


def run(argv: list, stdin: str = "Hi\n") -> tuple[str, str]:
    """(outcome, detail) of `mambaft ARGV` in this process."""
    err, out = io.StringIO(), io.StringIO()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(30)
    real_stdin = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        with redirect_stderr(err), redirect_stdout(out):
            rc = main(list(argv))
    except Hang:
        return "hang", ""
    except SystemExit as e:       # argparse: a usage error is also a clear error
        rc = e.code
    except BaseException as e:   # noqa: BLE001 - a traceback is what we count
        return "crash", f"{type(e).__name__}: {e}"[:160]
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        sys.stdin = real_stdin
    lines = [l for l in err.getvalue().splitlines() if l.strip() and not l.startswith(("usage:", "  "))]
    if rc == 0:
        return "silently wrong", out.getvalue()[-160:]
    if rc == 2 and len(lines) == 1 and lines[0].startswith(("mambaft ", argv[0])) and "error:" in lines[0]:
        return "clear error", lines[0][:160]
    return "crash", f"rc {rc}: {err.getvalue()[-160:]}"


def digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_fifo()}


# --- bad model files --------------------------------------------------------------------------------
def _bad_models(root: Path, good: Path) -> dict:
    """name -> path of a damaged copy of `good`."""
    def copy(name):
        d = root / name
        shutil.copytree(good, d)
        return d

    def retensor(name, fn, keep_manifest=False):
        d = copy(name)
        sd = load_file(str(d / "model.safetensors"))
        fn(sd)
        save_file(sd, str(d / "model.safetensors"), metadata={"format": "mambaft-model"})
        if not keep_manifest:
            (d / "manifest.json").unlink()
        return d

    out = {}
    out["NaN weight"] = retensor("nan", lambda sd: sd["dense1.weight"].view(-1).__setitem__(0, float("nan")))
    out["inf weight"] = retensor("inf", lambda sd: sd["dense1.weight"].view(-1).__setitem__(0, float("inf")))
    for dt in ("int64", "bool", "complex64"):
        out[f"{dt} weights"] = retensor(dt, lambda sd, dt=dt: sd.__setitem__(
            "dense1.weight", torch.ones_like(sd["dense1.weight"], dtype=getattr(torch, dt))))
    d = copy("flip")
    b = bytearray((d / "model.safetensors").read_bytes())
    b[-3] ^= 1
    (d / "model.safetensors").write_bytes(bytes(b))
    out["flipped weight byte"] = d
    d = copy("trunc")
    (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:5000])
    (d / "manifest.json").unlink()
    out["truncated weights"] = d
    for name, key, value in (("huge", "d_model", 10 ** 6), ("neg", "n_layers", -1), ("seq", "max_seq_len", 10 ** 9)):
        d = copy(name)
        meta = json.loads((d / "config.json").read_text())
        meta["model"][key] = value
        (d / "config.json").write_text(json.dumps(meta))
        (d / "manifest.json").unlink()
        out[f"config {key}={value}"] = d
    for name, fname, text in (("cfgjson", "config.json", "{oops"), ("tpl", "chat_template.json", "[1]"),
                              ("tpl2", "chat_template.json", '{"user_prefix": 5}'), ("tokj", "tokenizer.json", "{}")):
        d = copy(name)
        (d / fname).write_text(text)
        (d / "manifest.json").unlink()
        out[f"bad {fname} ({text[:10]})"] = d
    d = copy("vocab")
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    tok.add_tokens(["<x1>", "<x2>"])
    tok.save(str(d / "tokenizer.json"))
    (d / "manifest.json").unlink()
    out["tokenizer ids past vocab"] = d
    fifo = root / "fifo.pt"
    os.mkfifo(fifo)
    out["named pipe"] = fifo
    (root / "junk.pt").write_bytes(b"not a checkpoint at all")
    out["junk .pt"] = root / "junk.pt"
    out["missing path"] = root / "nope.pt"
    (root / "empty").mkdir()
    out["empty folder"] = root / "empty"
    return out


@pytest.mark.slow   # ~150 in-process cases on tiny models
def test_red_team(tmp_path, capsys):
    rows, counts = [], Counter()

    def record(area: str, case: str, outcome: str, detail: str = "", lost: bool = False):
        counts[outcome] += 1
        counts["lost"] += int(lost)
        rows.append(f"{area:<14} {case:<44} {outcome:<15}{'  LOST' if lost else ''}  {detail[:90]}")

    good = save_checkpoint(make_small_gpt2_model(), tmp_path / "good")
    bad = _bad_models(tmp_path / "bad", good)
    for case, path in bad.items():
        for entry, argv in ENTRY.items():
            if entry == "info" and case in ("NaN weight", "inf weight"):
                continue     # describing a damaged model is info's job: it names the tensors (asserted below)
            before = digest(path) if Path(path).is_dir() else None
            outcome, detail = run(argv(str(path)))
            lost = before is not None and digest(path) != before
            record("bad model", f"{case} -> {entry}", outcome, detail, lost)
    for case in ("NaN weight", "inf weight"):   # info describes a damaged model: rc 0, naming the tensors
        with pytest.warns(RuntimeWarning):
            outcome, detail = run(["info", str(bad[case])])
        record("bad model", f"{case} -> info (describes it)", "named" if "dense1.weight" in detail else outcome, detail)

    # --- bad counts and names for the evaluation commands (a good model: only the argument is wrong) ----
    for case, extra in (("--limit 0", ["--limit", "0"]), ("--bench-limit -1", ["--bench-limit", "-1"]),
                        ("--max-new 0", ["--max-new", "0"]), ("--bench a typo", ["--bench", "arc_eesy"])):
        for cmd in (["evaluate", "--model", str(good)], ["compare", str(good), "--out", str(tmp_path / "cmp")]):
            outcome, detail = run(cmd + extra)
            record("bad argument", f"{cmd[0]} {case}", outcome, detail)

    # --- output folders -------------------------------------------------------------------------------
    def foreign(name: str) -> Path:
        d = tmp_path / name
        d.mkdir()
        (d / "thesis.tex").write_text("years")
        return d

    data = write_prepared(tmp_path / "data")
    for case, argv, d in (
            ("export --to a folder with files", lambda d: ["export", str(good), "--to", str(d)], foreign("o1")),
            ("info --to a folder with files", lambda d: ["info", str(good), "--to", str(d)], foreign("o2")),
            ("finetune --out a folder with files", lambda d: ["finetune", "--strategy", "smoke", "--base", str(good),
                                                              "--data", str(data), "--out", str(d)], foreign("o3")),
            ("finetune --out = the base", lambda d: ["finetune", "--strategy", "smoke", "--base", str(d),
                                                     "--data", str(data), "--out", str(d)],
             save_checkpoint(make_small_gpt2_model(), tmp_path / "b2")),
            ("finetune --out inside the base", lambda d: ["finetune", "--strategy", "smoke", "--base", str(d),
                                                          "--data", str(data), "--out", str(d / "run")],
             save_checkpoint(make_small_gpt2_model(), tmp_path / "b3")),
            ("export --to = its own model", lambda d: ["export", str(d), "--to", str(d), "--force"],
             save_checkpoint(make_small_gpt2_model(), tmp_path / "b4")),
            ("prepare --out = its source's folder", lambda d: [
                "prepare", "--quiet", "--out", str(d), "--source", f"dolly={d / 'dolly.jsonl'}",
                "--set", "data_mode=offline", "--set", 'offline_sources={"dolly": 1.0}', "--force"], None)):
        if d is None:
            d = tmp_path / "src"
            d.mkdir()
            shutil.copy(Path(__file__).parent / "fixtures" / "hub" / "databricks-dolly-15k.jsonl", d / "dolly.jsonl")
        before = digest(d)
        outcome, detail = run(argv(d))
        record("output folder", case, outcome, detail, digest(d) != before)

    # --- resumes with changed inputs, damaged checkpoints: through finetune ---------------------------
    from mambaft.train import finetune
    from tests.test_train_loop import QUIET
    from tests.test_run_safety import tiny
    base = save_checkpoint(learnable_model(seed=4), tmp_path / "base")

    def fresh(name: str) -> Path:
        out = tmp_path / name
        finetune(tiny(4), base, data, out, **QUIET)
        return out

    def attempt(case: str, out: Path, want: str, **kw):
        try:
            with redirect_stdout(io.StringIO()) as said:
                res = finetune(kw.pop("cfg", tiny(6)), kw.pop("base", base), kw.pop("data", data), out, **QUIET, **kw)
        except Exception as e:   # noqa: BLE001
            from mambaft.errors import UserError
            outcome = "clear error" if isinstance(e, UserError) else "crash"
            record("resume", case, outcome if want == "error" else "crash", str(e)[:90])
            return
        lines = [l for l in said.getvalue().splitlines() if "kept as" in l]
        ok = want == "fallback" and res.get("resumed_from") == 2 and lines
        record("resume", case, "fell back" if ok else "silently wrong", lines[0][:90] if lines else "")

    attempt("another --base", fresh("r1"), "error", base=save_checkpoint(learnable_model(seed=9), tmp_path / "b9"))
    attempt("re-prepared --data", fresh("r2"), "error", data=write_prepared(tmp_path / "d2", pairs=QA[::-1]))
    attempt("another seed", fresh("r3"), "error", cfg=tiny(6, seed=5))
    attempt("another lr", fresh("r4"), "error", cfg=tiny(6, lr=1e-2))
    out = fresh("r5")
    (out / "checkpoints" / "step_0000004" / "manifest.json").unlink()
    attempt("newest checkpoint without manifest", out, "fallback")
    out = fresh("r6")
    (out / "checkpoints" / "step_0000004" / "manifest.json").write_text("{]")
    attempt("malformed manifest", out, "fallback")
    out = fresh("r7")
    f = out / "checkpoints" / "step_0000004" / "model" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-8] + b"\0" * 8)
    attempt("flipped bytes in the newest checkpoint", out, "fallback")
    for bad_line in (b"null", b"\xff\xfe", b"{cut"):
        out = fresh(f"r8{bad_line[:2].hex()}")
        (out / "metrics.jsonl").write_bytes((out / "metrics.jsonl").read_bytes() + bad_line + b"\n")
        try:
            with redirect_stdout(io.StringIO()):
                res = finetune(tiny(6), base, data, out, **QUIET)
            kept = (out / "metrics.jsonl.bad-lines").is_file()
            record("resume", f"metrics.jsonl line {bad_line!r}",
                   "fell back" if res["steps"] == 6 and kept else "silently wrong", "reported, kept aside, resumed")
        except Exception as e:   # noqa: BLE001
            record("resume", f"metrics.jsonl line {bad_line!r}", "crash", str(e)[:90])

    # --- full disks: each writer raising ENOSPC as it really does -----------------------------------------
    import errno
    import mambaft.train.run_state as rs
    for writer, exc in (("torch.save (trainer_state.pt)", RuntimeError("PytorchStreamWriter failed writing file "
                                                                        "data/0: file write failed")),
                        ("torch.save (rng_rank0.pt)", RuntimeError("file write failed")),
                        ("config.json write", OSError(errno.ENOSPC, "No space left on device"))):
        out = tmp_path / f"disk-{len(rows)}"
        real_save, real_write = torch.save, Path.write_text
        target = "rng_rank0" if "rng" in writer else "trainer_state" if "trainer" in writer else "config.json"

        def save(obj, f, *a, **kw):
            if target in str(f) and "step_0000004" in str(f):
                raise exc
            return real_save(obj, f, *a, **kw)

        def write_text(self, *a, **kw):
            if target == "config.json" and self.name == "config.json" and ".tmp-step_0000004" in str(self):
                raise exc
            return real_write(self, *a, **kw)
        torch.save, Path.write_text = save, write_text
        try:
            with redirect_stdout(io.StringIO()):
                finetune(tiny(4), base, data, out, **QUIET)
            outcome = "silently wrong"
        except DiskFullError as e:
            left = [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
            outcome = "clear error" if not left and "MB free" in str(e) else "crash"
        except Exception:   # noqa: BLE001
            outcome = "crash"
        finally:
            torch.save, Path.write_text = real_save, real_write
        intact = [r.step for r in rs.list_checkpoints(out)] == [2]
        record("full disk", writer, outcome, "", not intact)

    table = "\n".join(["red team (issue 28):", *rows,
                       ", ".join(f"{k} {counts[k]}" for k in OUTCOMES + ("lost",)),
                       f"cases {sum(counts[k] for k in OUTCOMES)}"])
    with capsys.disabled():
        print("\n" + table)
    (Path(os.environ.get("RED_TEAM_OUT", tmp_path)) / "red_team.txt").write_text(table + "\n")
    assert counts["lost"] == 0 and counts["hang"] == 0, table
    assert counts["silently wrong"] == 0 and counts["crash"] == 0, table
