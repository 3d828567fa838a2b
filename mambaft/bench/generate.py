"""`python -m mambaft.bench generate`: greedy generation, mambaft against the original computation.

Two kinds of measurement (fp32, eval mode, random prompt ids):

    generate    --prompt tokens, then --new tokens, at each of --batches: tokens/s = batch x new /
                wall time (prefill included). mambaft: `mambaft.generate.generate` (one parallel
                prefill, then O(1) `step` per token). original: bench/original.py `generate`, the whole
                cropped sequence through the model per token. Because that costs minutes at batch 8,
                the original generates only its first --original-new tokens (default 2): those are its
                FASTEST tokens (its cost per token grows with the context, 512 -> 640 here), so the
                ratio is a lower bound. `--original-new 128` measures all of them.
    per_token   seconds per new token at each context length of --contexts, batch 1: mambaft after a
                prefill of that many tokens (--probe steps), the original as one forward of that
                (cropped) context. Flat for mambaft, linear up to max_seq_len for the original.

    python -m mambaft.bench generate
    python -m mambaft.bench generate --impl mambaft --batches 1 --contexts 16,512,1000,4000
"""
from __future__ import annotations

import torch

from mambaft import runtime

from .harness import live_bytes, peak_alloc_bytes, timed
from .train import PEAK_METHOD, _dims


def add_args(p) -> None:
    p.add_argument("--d-model", type=int, default=1024)
    p.add_argument("--n-layers", type=int, default=6)
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--dense", type=int, default=None, help="dense head width (default 2 x d_model)")
    p.add_argument("--max-seq-len", type=int, default=1024)
    p.add_argument("--prompt", type=int, default=512, help="prompt tokens")
    p.add_argument("--new", type=int, default=128, help="new tokens (mambaft)")
    p.add_argument("--original-new", type=int, default=2,
                   help="new tokens the original generates (its first, fastest ones: see above)")
    p.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    p.add_argument("--contexts", default="16,1000,4000",
                   help="context lengths for the time per token (past max_seq_len: the crop)")
    p.add_argument("--probe", type=int, default=16, help="mambaft steps per per_token measurement")
    p.add_argument("--original-probe", type=int, default=1, help="original forwards per per_token")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats (median)")
    p.add_argument("--warmup", type=int, default=1)


def variants(args) -> list:
    from .harness import Variant
    return ([Variant("mambaft")] if args.impl in ("mambaft", "both") else []) + \
        ([Variant("original")] if args.impl in ("original", "both") else [])


def cases(args) -> list:
    out = [{"phase": "generate", "batch": int(b), "prompt": args.prompt, "new": args.new,
            "original_new": min(args.original_new, args.new)} for b in args.batches.split(",") if b]
    out += [{"phase": "per_token", "batch": 1, "context": int(c), "probe": args.probe,
             "original_probe": args.original_probe} for c in args.contexts.split(",") if c]
    return out


class GenerateRunner:
    def __init__(self, spec: dict):
        a = spec["args"]
        runtime.set_threads(a["threads"])
        runtime.seed_everything(a["seed"])
        self.device = dev = runtime.pick_device(a["device"])
        self.impl, self.cases, self.seed = spec["impl"], spec["cases"], a["seed"]
        d = _dims(a)
        self.vocab, self.max_len = d["vocab"], a["max_seq_len"]
        if self.impl == "mambaft":
            from mambaft.model import MambaSWELU, MambaSWELUConfig
            cfg = MambaSWELUConfig(vocab_size=d["vocab"], d_model=d["d_model"], n_layers=d["n_layers"],
                                   max_seq_len=self.max_len, dense_hidden_dim=d["dense"])
            self.model = MambaSWELU(cfg)
        else:
            from .original import OriginalMambaSWELU
            self.model = OriginalMambaSWELU(d["vocab"], d["d_model"], d["n_layers"], self.max_len, d["dense"])
        self.model.to(dev).eval()
        self.info = {"precision": "fp32", "device": str(dev), "threads": torch.get_num_threads()}

    def _prompt(self, batch: int, length: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed + length)
        return torch.randint(0, self.vocab, (batch, length), generator=g).to(self.device)

    def _work(self, c: dict, mem_probe: bool = False):
        """The callable one timed run executes, and the new tokens it produces."""
        m = self.model
        if c["phase"] == "generate":
            ids = self._prompt(c["batch"], c["prompt"])
            if self.impl == "mambaft":
                from mambaft.generate import generate
                new = 2 if mem_probe else c["new"]             # memory peaks in the prefill
                return (lambda: generate(m, ids, max_new_tokens=new, temperature=0.0)), c["batch"] * new
            new = c["original_new"]
            if mem_probe:                                      # its largest forward: the last one
                last = ids.new_zeros(c["batch"], min(c["prompt"] + new - 1, self.max_len))
                return (lambda: m.generate(last, 1)), c["batch"]
            return (lambda: m.generate(ids, new)), c["batch"] * new
        ids = self._prompt(1, c["context"])
        if self.impl == "mambaft":
            logits, state = m.prefill(ids.tolist())            # untimed: only the steps are timed
            nxt = logits.argmax(-1)

            def steps():
                nonlocal nxt
                with torch.no_grad():
                    for _ in range(c["probe"]):
                        nxt = m.step(nxt, state).argmax(-1)
            return steps, c["probe"]
        return (lambda: m.generate(ids, c["original_probe"])), c["original_probe"]

    def run(self, case_index: int) -> dict:
        fn, tokens = self._work(self.cases[case_index])
        seconds, _ = timed(fn, self.device)
        return {"seconds": seconds, "tokens": tokens}

    def mem(self, case_index: int) -> int:
        fn, _ = self._work(self.cases[case_index], mem_probe=True)
        return peak_alloc_bytes(fn, self.device, live_bytes(self.model))


def summarize(m, args, peaks: dict) -> dict:
    c = m.case
    tokens = m.runs[-1]["tokens"]
    obj = {"bench": "generate", "impl": m.variant.impl, "phase": c["phase"],
           "tokens_per_s": tokens / m.median_s, "ms_per_token": 1e3 * m.median_s / (tokens / c["batch"]),
           "peak_mem_mb": m.peak_mem_mb, "peak_rss_mb": m.peak_rss_mb,
           "peak_mem_method": PEAK_METHOD[m.info.get("device", "cpu").split(":")[0]],
           **_dims(vars(args)), "max_seq_len": args.max_seq_len, "batch": c["batch"]}
    if c["phase"] == "generate":
        obj.update(prompt=c["prompt"], new=tokens // c["batch"], new_requested=c["new"])
    else:
        obj.update(context=c["context"], new=tokens)
    obj.update(repeats=len(m.runs), warmup=args.warmup, median_s=m.median_s,
               run_s=[round(s, 4) for s in m.seconds], precision="fp32", device=m.info.get("device"),
               threads=m.info.get("threads"), malloc=m.info.get("malloc"),
               omp_wait_policy=m.info.get("omp_wait_policy"))
    return obj
