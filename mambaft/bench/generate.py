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

    decode      mambaft only: seconds per decode step after a --prompt prefill, at each of --batches,
                against the memory-bandwidth limit measured in the same worker: copy bandwidth
                (`flops.copy_bandwidth`, bytes read + written per second) and the bytes of weights
                one step reads (`decode_weight_bytes`); bandwidth_fraction = limit / measured step.

--weights fp32,bf16 adds a mambaft side with bf16 Linear/Embedding weights (mambaft.model.
decode_weights); that side also reports the greedy difference against fp32 on the same model
(`greedy_difference`: --agreement-prompts prompts x --agreement-new tokens). With --base PATH both
sides load that checkpoint (e.g. data/demo_base), so the difference is that of real weights.

    python -m mambaft.bench generate
    python -m mambaft.bench generate --impl mambaft --batches 1 --contexts 16,512,1000,4000
    python -m mambaft.bench generate --impl mambaft --weights fp32,bf16 --contexts '' --new 32
"""
from __future__ import annotations

import torch


from .harness import live_bytes, peak_alloc_bytes, timed, worker_device
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
    p.add_argument("--weights", default="fp32", help="mambaft weight dtypes: fp32, bf16 or fp32,bf16")
    p.add_argument("--base", default=None, help="load this checkpoint instead of random weights")
    p.add_argument("--agreement-prompts", type=int, default=8, help="prompts for the greedy difference")
    p.add_argument("--agreement-new", type=int, default=32, help="new tokens per prompt for it")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats (median)")
    p.add_argument("--warmup", type=int, default=1)


def variants(args) -> list:
    from .harness import Variant
    mf = [Variant("mambaft") if w.strip() == "fp32" else Variant("mambaft", {"weights": w.strip()})
          for w in args.weights.split(",") if w.strip()]
    return (mf if args.impl in ("mambaft", "both") else []) + \
        ([Variant("original")] if args.impl in ("original", "both") else [])


def cases(args) -> list:
    out = [{"phase": "generate", "batch": int(b), "prompt": args.prompt, "new": args.new,
            "original_new": min(args.original_new, args.new)} for b in args.batches.split(",") if b]
    out += [{"phase": "per_token", "batch": 1, "context": int(c), "probe": args.probe,
             "original_probe": args.original_probe} for c in args.contexts.split(",") if c]
    out += [{"phase": "decode", "batch": int(b), "context": args.prompt, "probe": args.probe,
             "original_probe": args.original_probe} for b in args.batches.split(",") if b]
    return out


class GenerateRunner:
    def __init__(self, spec: dict):
        a = spec["args"]
        self.device = dev = worker_device(a)
        self.impl, self.cases, self.seed = spec["impl"], spec["cases"], a["seed"]
        d = _dims(a)
        self.vocab, self.max_len = d["vocab"], a["max_seq_len"]
        self.weights = spec["opts"].get("weights", "fp32")
        if self.impl == "mambaft" and a.get("base"):
            from mambaft.checkpoint import load_checkpoint
            self.model = load_checkpoint(a["base"])[0].float()
            self.vocab, self.max_len = self.model.config.vocab_size, self.model.config.max_seq_len
        elif self.impl == "mambaft":
            from mambaft.model import MambaSWELU, MambaSWELUConfig
            cfg = MambaSWELUConfig(vocab_size=d["vocab"], d_model=d["d_model"], n_layers=d["n_layers"],
                                   max_seq_len=self.max_len, dense_hidden_dim=d["dense"])
            self.model = MambaSWELU(cfg)
        else:
            from .original import OriginalMambaSWELU
            if a.get("base"):                  # the same checkpoint (its keys are the original's)
                from mambaft.checkpoint import load_checkpoint
                src = load_checkpoint(a["base"])[0].float()
                c = src.config
                self.vocab, self.max_len = c.vocab_size, c.max_seq_len
                self.model = OriginalMambaSWELU(c.vocab_size, c.d_model, c.n_layers, c.max_seq_len,
                                                c.dense_hidden_dim, 0.0)
                self.model.load_state_dict(src.state_dict())
            else:
                self.model = OriginalMambaSWELU(d["vocab"], d["d_model"], d["n_layers"], self.max_len,
                                                d["dense"])
        self.model.to(dev).eval()
        self.info = {"precision": "fp32", "device": str(dev), "threads": torch.get_num_threads()}
        if self.impl == "mambaft":
            from mambaft.model.decode_weights import (decode_weight_bytes, greedy_difference,
                                                      with_bf16_weights)
            from .flops import copy_bandwidth
            if self.weights == "bf16":
                fp32 = self.model
                self.model = with_bf16_weights(fp32)
                g = torch.Generator().manual_seed(self.seed)
                prompts = torch.randint(0, self.vocab, (a["agreement_prompts"], 16), generator=g).tolist()
                self.info["greedy_vs_fp32"] = greedy_difference(fp32, self.model, prompts, a["agreement_new"])
                del fp32
            self.info.update(precision=self.weights, weight_bytes_per_step=decode_weight_bytes(self.model),
                             copy_bandwidth_gb_s=copy_bandwidth(dev) / 1e9)

    def _prompt(self, batch: int, length: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed + length)
        return torch.randint(0, self.vocab, (batch, length), generator=g).to(self.device)

    def _work(self, c: dict, mem_probe: bool = False):
        """The callable one timed run executes, and the new tokens it produces."""
        fn, tokens = self._work_fp(c, mem_probe)
        if self.weights == "fp32":
            return fn, tokens
        from mambaft.model.decode_weights import decode_autocast

        def under_autocast():
            with decode_autocast(self.model):
                return fn()
        return under_autocast, tokens

    def _work_fp(self, c: dict, mem_probe: bool):
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
        ids = self._prompt(c["batch"], c["context"])
        if self.impl == "mambaft":
            from mambaft.model.decode_weights import decode_autocast
            with decode_autocast(m):
                logits, state = m.prefill(ids.tolist())        # untimed: only the steps are timed
            nxt = logits.argmax(-1)

            def steps():
                nonlocal nxt
                with torch.no_grad():
                    for _ in range(c["probe"]):
                        nxt = m.step(nxt, state).argmax(-1)
            return steps, c["batch"] * c["probe"]
        return (lambda: m.generate(ids, c["original_probe"])), c["batch"] * c["original_probe"]

    def run(self, case_index: int) -> dict:
        fn, tokens = self._work(self.cases[case_index])
        seconds, _ = timed(fn, self.device)
        out = {"seconds": seconds, "tokens": tokens}
        if self.impl == "mambaft" and self.cases[case_index]["phase"] == "decode":
            from .flops import copy_bandwidth   # again beside each timed run: the best is the limit
            out["copy_bandwidth_gb_s"] = copy_bandwidth(self.device) / 1e9
        return out

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
        obj.update(context=c["context"], new=tokens // c["batch"])
    if args.base:
        obj["base"] = args.base            # dims above are the flags'; the weights are the checkpoint's
    if c["phase"] == "decode" and "weight_bytes_per_step" in m.info:
        # one step reads every live weight once, whatever the batch: limit = bytes / bandwidth
        bw = max([m.info["copy_bandwidth_gb_s"]] + [r.get("copy_bandwidth_gb_s", 0) for r in m.runs]) * 1e9
        step_s = m.median_s / c["probe"]
        limit_s = m.info["weight_bytes_per_step"] / bw
        obj.update(ms_per_step=1e3 * step_s, weight_mb_per_step=m.info["weight_bytes_per_step"] / 1e6,
                   copy_bandwidth_gb_s=bw / 1e9, bandwidth_limit_ms_per_step=1e3 * limit_s,
                   bandwidth_fraction=limit_s / step_s)
    if "greedy_vs_fp32" in m.info:
        obj["greedy_vs_fp32"] = m.info["greedy_vs_fp32"]
    obj.update(repeats=len(m.runs), warmup=args.warmup, median_s=m.median_s,
               run_s=[round(s, 4) for s in m.seconds], precision=m.info.get("precision", "fp32"),
               device=m.info.get("device"),
               threads=m.info.get("threads"), malloc=m.info.get("malloc"),
               omp_wait_policy=m.info.get("omp_wait_policy"))
    return obj
