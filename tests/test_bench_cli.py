"""`python -m mambaft.bench` at tiny sizes: valid JSON objects with the required keys, numbers that
follow from the timings, per-process workers with their own allocator setting, and the memory and
FLOP accounting the reports rest on. No timed assertions."""
import json

import pytest
import torch

from mambaft.bench.__main__ import main
from mambaft.bench.flops import forward_flops, train_flops
from mambaft.bench.harness import MB, live_bytes, peak_alloc_bytes

REQUIRED = {"bench", "impl", "tokens_per_s", "peak_mem_mb"}


@pytest.fixture(autouse=True)
def _restore_threads():
    """The bench parent sets its thread count (to measure the GEMM peak like its workers)."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


TINY = ["--d-model", "32", "--n-layers", "2", "--vocab", "257", "--threads", "1"]


def _objects(capsys) -> list:
    out = capsys.readouterr().out
    objs = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert objs, "no JSON printed"
    for o in objs:
        assert REQUIRED <= set(o), f"missing keys in {o}"
        assert o["impl"] in ("mambaft", "original")
        assert o["tokens_per_s"] > 0 and o["peak_mem_mb"] > 0
    return objs


@pytest.mark.slow   # bench worker processes
def test_train_bench_runs_both_sides_in_their_own_processes(capsys, tmp_path):
    out_file = tmp_path / "train.jsonl"
    assert main(["train", *TINY, "--batch", "2", "--seq", "16", "--steps", "2", "--warmup", "1",
                 "--precision", "fp32", "--out", str(out_file)]) == 0
    objs = _objects(capsys)
    assert [json.loads(x) for x in out_file.read_text().splitlines()] == objs
    by = {o["impl"]: o for o in objs}
    assert set(by) == {"mambaft", "original"}
    mf, orig = by["mambaft"], by["original"]
    for o in objs:
        assert (o["bench"], o["batch"], o["seq"], o["d_model"], o["n_layers"], o["vocab"]) == \
            ("train", 2, 16, 32, 2, 257)
        assert o["steps"] == 2 == len(o["step_s"]) and o["precision"] == "fp32"
        # derived fields recomputed from the recorded timings, float64 Python arithmetic: approx's default
        assert o["tokens_per_s"] == pytest.approx(2 * 16 / o["median_step_s"])
        assert o["achieved_gflops"] == pytest.approx(o["model_gflop_per_step"] / o["median_step_s"])
        assert o["mfu"] == pytest.approx(o["achieved_gflops"] / o["peak_gflops_fp32"])
        assert o["peak_rss_mb"] > 50                       # a real process with torch loaded
    # each worker had its own allocator setting (mambaft's launchers set it, the original had none)
    assert (mf["malloc"], orig["malloc"]) == ("fast", "default")
    assert (mf["omp_wait_policy"], orig["omp_wait_policy"]) == ("PASSIVE", "default")
    assert mf["speedup_vs_original"] == pytest.approx(mf["tokens_per_s"] / orig["tokens_per_s"])
    assert mf["peak_mem_vs_original"] == pytest.approx(mf["peak_mem_mb"] / orig["peak_mem_mb"])
    # memory covers at least the weights and both AdamW moments; the original also its fp32 logits
    assert mf["peak_mem_mb"] * MB >= 3 * 4 * mf["trainable_params"]
    assert orig["peak_mem_mb"] * MB >= 3 * 4 * orig["trainable_params"] + 2 * 16 * 257 * 4
    assert mf["trainable_params"] < orig["trainable_params"]  # the dead projections are frozen


@pytest.mark.slow   # generates many tokens
def test_generate_bench_in_process_reports_both_phases(capsys):
    assert main(["generate", *TINY, "--max-seq-len", "48", "--prompt", "20", "--new", "6",
                 "--original-new", "3", "--batches", "1,2", "--contexts", "5,60", "--probe", "3",
                 "--repeats", "1", "--warmup", "0", "--in-process"]) == 0
    objs = _objects(capsys)
    assert len(objs) == 2 * (2 + 2 + 2)                  # generate, per_token, decode: 2 cases each
    dec = {(o["impl"], o["batch"]) for o in objs if o["phase"] == "decode"}
    assert dec == {("mambaft", 1), ("mambaft", 2), ("original", 1), ("original", 2)}
    gen = [o for o in objs if o["phase"] == "generate"]
    assert {(o["impl"], o["batch"], o["new"]) for o in gen} == \
        {("mambaft", 1, 6), ("mambaft", 2, 6), ("original", 1, 3), ("original", 2, 3)}
    for o in objs:
        per_row = o["new"]
        assert o["tokens_per_s"] == pytest.approx(o["batch"] * per_row / o["median_s"])  # float64 Python arithmetic: approx's default rel 1e-6 absorbs the last bit
        assert o["ms_per_token"] == pytest.approx(1e3 * o["median_s"] / per_row)
        assert o["peak_rss_mb"] is None                    # in-process: no per-process figure
    per = {(o["impl"], o["context"]) for o in objs if o["phase"] == "per_token"}
    assert per == {("mambaft", 5), ("mambaft", 60), ("original", 5), ("original", 60)}
    assert all("speedup_vs_original" in o for o in objs if o["impl"] == "mambaft")


@pytest.mark.slow   # a bench worker process
def test_prepare_bench_one_side_alone_in_its_process(capsys, monkeypatch):
    # the worker inherits the parent's ISA caps, so `ATEN_CPU_CAPABILITY=avx2 python -m mambaft.bench`
    # measures what an AVX2-only CPU runs (benchmarks/README.md's emulated rows)
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")
    assert main(["prepare", "--impl", "mambaft", "--conversations", "30", "--repeats", "2",
                 "--warmup", "0", "--threads", "1"]) == 0
    (o,) = _objects(capsys)
    assert o["impl"] == "mambaft" and o["conversations"] == 30
    assert o["conversations_per_s"] == pytest.approx(30 / o["median_s"])  # float64 Python arithmetic: approx's default rel 1e-6 absorbs the last bit
    assert 0 < o["trained_tokens"] < o["tokens"]            # prompts masked, answers trained
    assert o["peak_rss_mb"] > 50 and "speedup_vs_original" not in o
    assert o["cpu_capability"] == "DEFAULT" and o["bf16_native"] is False


def test_prepare_original_trains_on_every_token(capsys):
    assert main(["prepare", "--conversations", "20", "--repeats", "1", "--warmup", "0",
                 "--in-process", "--max-seq-len", "256"]) == 0
    by = {o["impl"]: o for o in _objects(capsys)}
    orig = by["original"]
    assert orig["trained_tokens"] == orig["row_tokens"] == 20 * 256   # padded, nothing masked
    assert 0 < orig["tokens"] < orig["row_tokens"]                     # tokens_per_s excludes padding
    assert by["mambaft"]["trained_tokens"] < by["mambaft"]["tokens"]


def test_peak_alloc_accounts_static_and_running_allocations():
    torch.set_num_threads(1)
    static = torch.zeros(1000)                              # 4,000 B alive before

    def work():
        a = torch.ones(1024, 1024)                          # +4 MiB
        b = torch.ones(2048, 1024)                          # +8 MiB: 12 MiB alive
        del a, b
        c = torch.ones(512, 1024)                           # +2 MiB after the frees
        return c.sum()

    peak = peak_alloc_bytes(work, torch.device("cpu"), live_bytes(static))
    assert 4000 + 12 * MB <= peak <= 4000 + 12 * MB + 4096  # scalars of a few bytes on top


def test_live_bytes_counts_tied_weights_once():
    emb = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    model = torch.nn.ModuleDict({"emb": emb, "head": head})
    assert live_bytes(model) == 10 * 4 * 4
    opt = torch.optim.AdamW(model.parameters())
    model["head"](torch.ones(1, 4)).sum().backward()
    opt.step()
    # weight + grad + exp_avg + exp_avg_sq (+ the 4-byte step counter)
    assert live_bytes(model, opt) == 4 * 10 * 4 * 4 + 4


def test_flop_count_matches_torch_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    from mambaft.model import MambaSWELU, MambaSWELUConfig
    torch.set_num_threads(1)
    cfg = MambaSWELUConfig(vocab_size=97, d_model=16, n_layers=2, max_seq_len=32, dense_hidden_dim=24,
                           dropout=0.0)
    model = MambaSWELU(cfg)
    model.freeze_dead()
    ids = torch.randint(0, 97, (2, 9))
    with FlopCounterMode(display=False) as counter:       # full logits: lm_head on every position
        model(ids, labels=ids, return_logits=True)["loss"].backward()
    assert counter.get_total_flops() == 3 * forward_flops(2 * 9, 16, 2, 97, 24)
    # the training count: lm_head on the L-1 positions with a target, plus the depthwise conv
    conv = 3 * 2 * (2 * 9) * 2 * (4 * 32)
    assert train_flops(2, 9, 16, 2, 97, 24) == \
        3 * forward_flops(2 * 9, 16, 2, 97, 24, logits_positions=2 * 8) + conv
    # the 124M model: about 586 MFLOP per trained token
    assert train_flops(1, 1025, 1024, 6, 50257, 2048) / 1024 == pytest.approx(586e6, rel=0.01)   # 586e6: the README's rounded figure


@pytest.mark.slow   # training steps on every side
def test_epoch_bench_trains_the_same_rows_on_every_side(capsys, tmp_path):
    """`epoch` on a prepared folder: six sides (every layout), the same trained tokens, padding and trained fractions
    that follow from the token counts, ratios from the recorded rates; clear errors for bad --data."""
    from tests.test_train_loop import write_prepared
    data = write_prepared(tmp_path / "data")
    assert main(["epoch", "--data", str(data), "--d-model", "16", "--n-layers", "1", "--threads", "1",
                 "--batch", "2", "--accum", "2", "--max-seq-len", "64", "--precision", "fp32",
                 "--layouts", "sorted,packed,sorted+trim,packed+trim", "--in-process"]) == 0
    objs = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.strip()]
    side = {(o["impl"], o["padding"]) if o["impl"] == "original" else (o["impl"], o["packing"], o["trim"]): o
            for o in objs}
    assert set(side) == {("mambaft", False, False), ("mambaft", True, False), ("mambaft", False, True),
                         ("mambaft", True, True), ("original", "batch"), ("original", "max")}
    trained = {o["trained_tokens"] for o in objs}
    assert len(trained) == 1 and trained.pop() > 0          # the same rows, the same labels
    for o in objs:
        assert o["bench"] == "epoch" and o["steps"] == o["steps_per_epoch"] == 2   # 8 rows / (2 x 2)
        assert o["epoch_s_measured"] and o["epoch_s"] == pytest.approx(o["wall_s"])
        assert o["trained_tokens_per_s"] == pytest.approx(o["trained_tokens"] / o["wall_s"])
        assert o["padding_fraction"] == pytest.approx(1 - o["real_tokens"] / o["computed_tokens"])
        assert o["trained_fraction"] == pytest.approx(o["trained_tokens"] / o["computed_tokens"])
    assert side[("original", "max")]["computed_tokens"] == 4 * 2 * 64           # 4 micro-batches x 2 x 64
    plain = side[("mambaft", False, False)]
    assert side[("original", "batch")]["computed_tokens"] == plain["computed_tokens"]
    packed = side[("mambaft", True, False)]
    assert packed["micro_batches"] < plain["micro_batches"]
    # one row per micro-batch, no padding: every computed token is a real one
    assert packed["padding_fraction"] == 0 and packed["computed_tokens"] == packed["real_tokens"]
    for key in [("mambaft", True, False), ("mambaft", False, True), ("mambaft", True, True)]:
        assert side[key]["speedup_vs_sorted"] == pytest.approx(
            side[key]["trained_tokens_per_s"] / plain["trained_tokens_per_s"])
    assert "speedup_vs_sorted" not in plain
    # trimmed: the prompts' tokens beyond the receptive field (1 + 1 block x 3 = 4 tokens) are gone
    for pk in (False, True):
        assert side[("mambaft", pk, True)]["real_tokens"] < side[("mambaft", pk, False)]["real_tokens"]
    assert side[("mambaft", True, True)]["padding_fraction"] == 0
    assert packed["speedup_vs_original_max"] == pytest.approx(
        packed["trained_tokens_per_s"] / side[("original", "max")]["trained_tokens_per_s"])
    with pytest.raises(SystemExit, match="not a prepared folder"):
        main(["epoch", "--data", str(tmp_path), "--in-process"])
    with pytest.raises(SystemExit, match="--data DIR is required"):
        main(["epoch", "--in-process"])
    with pytest.raises(SystemExit, match="--layouts packd: expected any of sorted,packed"):
        main(["epoch", "--data", str(data), "--layouts", "sorted,packd", "--in-process"])


@pytest.mark.slow   # training steps
def test_epoch_bench_preset_takes_the_strategys_batch_and_overrides_win(capsys, tmp_path):
    """--preset smoke: batch 4 and max_seq_len 256 from make_config("smoke"), --accum 1 overriding;
    --impl mambaft runs only the two mambaft sides (sorted and packed)."""
    from mambaft.config import make_config
    from tests.test_train_loop import write_prepared
    data = write_prepared(tmp_path / "data")
    smoke = make_config("smoke")
    assert main(["epoch", "--data", str(data), "--preset", "smoke", "--accum", "1", "--impl", "mambaft",
                 "--layouts", "sorted,packed",
                 "--d-model", "16", "--n-layers", "1", "--threads", "1", "--precision", "fp32",
                 "--steps", "1", "--in-process"]) == 0
    objs = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.strip()]
    assert sorted((o["impl"], o["packing"]) for o in objs) == [("mambaft", False), ("mambaft", True)]
    for o in objs:
        assert (o["preset"], o["batch"], o["accum"], o["max_seq_len"]) == \
            ("smoke", smoke.batch_size, 1, smoke.max_seq_len)
        assert o["steps"] == 1 and o["steps_per_epoch"] == 8 // smoke.batch_size
    packed = next(o for o in objs if o["packing"])
    assert packed["micro_batches"] == 1 and packed["padding_fraction"] == 0
