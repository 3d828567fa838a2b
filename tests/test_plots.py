"""Loss plots: reading a metrics.jsonl that another process is writing (half-written lines, resumed
runs), the live follower (text and notebook displays), and the saved PNG."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
import time

import pytest

from mambaft.plots import Metrics, MetricsReader, NotebookSink, TextSink, follow_metrics, plot_metrics
from mambaft.train.metrics import read_metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def rec(step, **kw) -> str:
    return json.dumps({"step": step, **kw}) + "\n"


def test_reader_waits_for_the_end_of_a_half_written_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    reader = MetricsReader(path)
    assert reader.poll() == []                                  # no file yet: nothing, no error
    line = rec(30, loss=2.25, lr=1e-4, tokens_per_s=950.0)
    path.write_text(rec(10, loss=3.5) + rec(20, val_loss=3.1, heldout_ppl=40.0) + line[:17])
    assert [r["step"] for r in reader.poll()] == [10, 20]
    assert reader.poll() == []                                  # still half a line
    with open(path, "a") as f:
        f.write(line[17:] + "not json\n" + '{"loss": 1.0}\n' + rec(40, loss=2.0)[:-1])
    assert reader.poll() == [{"step": 30, "loss": 2.25, "lr": 1e-4, "tokens_per_s": 950.0}]
    assert reader.bad_lines == [(4, "not JSON (Expecting value)"), (5, "not an object with an integer 'step'")]
    assert reader.poll(final=True) == [{"step": 40, "loss": 2.0}]   # writer ended without a newline
    assert reader.metrics.series("loss") == ([10, 30, 40], [3.5, 2.25, 2.0])


def test_a_restarted_file_is_read_again(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(rec(1, loss=5.0) + rec(2, loss=4.0))
    reader = MetricsReader(path)
    reader.poll()
    path.write_text(rec(1, loss=9.0))                          # shorter: a new run replaced it
    reader.poll()
    assert reader.metrics.series("loss") == ([1], [9.0])


def test_a_resumed_run_replaces_the_steps_it_replays():
    m = Metrics([{"step": s, "loss": 10.0 - s} for s in (10, 20, 30, 40)]     # crashed after 40
                + [{"step": 30, "val_loss": 7.5}]
                + [{"step": s, "loss": 100.0 + s} for s in (30, 40, 50)])    # resumed from step 20
    assert m.series("loss") == ([10, 20, 30, 40, 50], [0.0, -10.0, 130.0, 140.0, 150.0])
    assert m.series("val_loss") == ([30], [7.5])
    assert m.last("loss") == (50, 150.0)
    assert m.summary() == "step 50 | loss 150.0000 | val_loss 7.5000 @ 30"


def test_plot_draws_exactly_the_logged_numbers(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [rec(s, loss=4.0 - 0.01 * s, lr=1e-4 * min(1, s / 50), tokens_per_s=900.0 + s) for s in range(1, 101)]
    lines += [rec(50, val_loss=3.6, heldout_ppl=38.0), rec(100, val_loss=3.2, heldout_ppl=30.0)]
    path.write_text("".join(lines))
    fig = plot_metrics(path, tmp_path / "plots" / "loss.png")
    ax_loss, ax_lr, ax_tps, ax_ppl = fig.axes
    raw, ema, val = ax_loss.lines
    assert list(raw.get_xdata()) == list(range(1, 101))
    # plotted float64 values of the records (4.0 - 0.01 x 100 etc.): approx's default rel 1e-6
    assert raw.get_ydata()[-1] == pytest.approx(3.0)
    assert ema.get_ydata()[0] == pytest.approx(3.99)           # bias-corrected: starts at the first value
    assert list(val.get_xdata()) == [50, 100] and list(val.get_ydata()) == [3.6, 3.2]
    assert ax_lr.lines[0].get_ydata()[49] == pytest.approx(1e-4)
    assert list(ax_tps.lines[0].get_ydata()[:2]) == [901.0, 902.0]
    assert list(ax_ppl.lines[0].get_ydata()) == [38.0, 30.0]
    png = (tmp_path / "plots" / "loss.png").read_bytes()
    assert png[:8] == PNG_MAGIC
    from matplotlib.image import imread
    assert imread(tmp_path / "plots" / "loss.png").shape[:2] == (700, 1100)   # 11 x 7 in at 100 dpi



def behaviour_run(path):
    """A hand-written run: 4 training steps, evaluations at 0, 2 and 4 (and one at 2 replayed by a resume)."""
    train = [rec(s, loss=l) for s, l in ((1, 5.0), (2, 4.5), (3, 4.25), (4, 4.0))]
    ev = lambda s, v, stop, pst, words, dist, bare, empty, passed: rec(  # noqa: E731
        s, val_loss=v, val_stop_rate=stop, probe_stop_rate=pst, val_mean_words=words, val_distinct=dist,
        val_bare_rate=bare, val_empty_rate=empty, probe_pass_rate=passed)
    lines = [ev(0, 7.5, 0.0, 0.0, 40.0, 0.5, 0.25, 0.0, 0.0)] + train[:2] + [ev(2, 9.9, 0, 0, 0, 0, 0, 0, 0)]
    lines += [ev(2, 6.0, 0.75, 0.5, 3.0, 0.125, 0.625, 0.25, 0.0625)] + train[2:]   # the resume's step 2 wins
    lines += [ev(4, 5.5, 1.0, 1.0, 2.5, 0.0625, 0.875, 0.5, 0.125)]
    path.write_text("".join(lines))
    return path


def test_behaviour_plot_draws_each_reply_series_beside_the_loss(tmp_path):
    from mambaft.plots import BEHAVIOUR_PANELS, plot_behaviour
    path = behaviour_run(tmp_path / "metrics.jsonl")
    fig = plot_behaviour(path, tmp_path / "behaviour.png")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["loss", "replies that stop", "words per reply", "distinct replies", "bare and empty replies",
                      "probes passed"] == [p[0] for p in BEHAVIOUR_PANELS]
    drawn = {ax.get_title(): [(ln.get_label(), list(ln.get_xdata()), list(ln.get_ydata())) for ln in ax.lines]
             for ax in fig.axes}
    # the values written above, exactly (binary fractions: no rounding anywhere)
    assert drawn["loss"] == [("train loss", [1, 2, 3, 4], [5.0, 4.5, 4.25, 4.0]),
                             ("val loss", [0, 2, 4], [7.5, 6.0, 5.5])]
    assert drawn["replies that stop"] == [("val questions", [0, 2, 4], [0.0, 0.75, 1.0]),
                                          ("probes", [0, 2, 4], [0.0, 0.5, 1.0])]
    assert drawn["words per reply"] == [("val questions", [0, 2, 4], [40.0, 3.0, 2.5])]
    assert drawn["distinct replies"] == [("val questions", [0, 2, 4], [0.5, 0.125, 0.0625])]
    assert drawn["bare and empty replies"] == [("bare (< 3 words)", [0, 2, 4], [0.25, 0.625, 0.875]),
                                               ("empty", [0, 2, 4], [0.0, 0.25, 0.5])]
    assert drawn["probes passed"] == [("probes", [0, 2, 4], [0.0, 0.0625, 0.125])]
    from IPython.core.formatters import DisplayFormatter
    assert DisplayFormatter().format(fig)[0]["image/png"][:8] == PNG_MAGIC        # inline, like the others
    assert (tmp_path / "behaviour.png").read_bytes()[:8] == PNG_MAGIC


def test_behaviour_reading_quotes_the_runs_numbers(tmp_path):
    from mambaft.course import behaviour_reading
    text = behaviour_reading(behaviour_run(tmp_path / "metrics.jsonl"))
    assert text.startswith("From step 0 to step 4: val loss 7.50 -> 5.50, stop rate 0.00 -> 1.00 "
                           "(between 0.75 and 1.00 after step 0), words per reply 40.0 -> 2.5, "
                           "distinct replies 0.50 -> 0.06, bare replies 0.25 -> 0.88, probes passed 0.00 -> 0.12;")
    assert "it learned the format of a reply more than the answers" in text     # distinct fell, bare rose
    (tmp_path / "flat.jsonl").write_text(rec(0, val_loss=5.0, val_distinct=0.5) + rec(9, val_loss=5.5, val_distinct=0.75))
    assert behaviour_reading(tmp_path / "flat.jsonl").endswith("the validation loss did not fall, so read the "
                                                               "other panels as noise around the base.")


def test_the_course_figures_show_as_images_where_a_cell_returns_them(tmp_path):
    """A cell whose last line returns a figure must show a PNG, in a kernel that never imported pyplot
    (the receptive-field cell of notebook 00 printed `<Figure size 800x320 with 1 Axes>`)."""
    from IPython.core.formatters import DisplayFormatter

    from mambaft.course import plot_receptive_field
    rf = {"rel_change": [0.5, 0.1, 1e-15], "receptive_field": 2}
    for fig in (plot_metrics(Metrics([{"step": 1, "loss": 2.0}])), plot_receptive_field(rf, tmp_path / "rf.png")):
        data, _ = DisplayFormatter().format(fig)       # what IPython puts in the cell's output
        assert data["image/png"][:8] == PNG_MAGIC, sorted(data)
    assert (tmp_path / "rf.png").read_bytes()[:8] == PNG_MAGIC

WRITER = textwrap.dedent("""
    import json, sys, time
    path, n = sys.argv[1], int(sys.argv[2])
    with open(path, "a") as f:
        for s in range(1, n + 1):
            line = json.dumps({"step": s, "loss": 5.0 / s, "lr": 1e-4, "tokens_per_s": 1000.0 + s}) + "\\n"
            if s % 10 == 0:
                line += json.dumps({"step": s, "val_loss": 6.0 / s}) + "\\n"
            half = len(line) // 2
            f.write(line[:half]); f.flush(); time.sleep(0.01)   # a reader may see half a line here
            f.write(line[half:]); f.flush(); time.sleep(0.01)
""")


@pytest.mark.slow   # a writer subprocess
def test_follow_a_file_written_by_another_process(tmp_path):
    path, png = tmp_path / "metrics.jsonl", tmp_path / "loss.png"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), "40"])
    out = io.StringIO()
    m = follow_metrics(path, until=proc, out_png=png, interval=0.05, sink=TextSink(out))
    assert proc.returncode == 0
    assert m.series("loss") == (list(range(1, 41)), [5.0 / s for s in range(1, 41)])
    assert m.series("val_loss") == ([10, 20, 30, 40], [0.6, 0.3, 0.2, 0.15])
    lines = out.getvalue().splitlines()
    assert len(lines) >= 3                                       # updated while the writer ran
    shown = [int(l.split("|")[0].split()[-1]) for l in lines]
    assert shown == sorted(shown) and shown[-1] == 40
    assert lines[-1].startswith("final: step 40 | loss 0.1250") and "exited with code 0" in lines[-1]
    assert png.read_bytes()[:8] == PNG_MAGIC


@pytest.mark.slow   # a notebook kernel
def test_notebook_display_updates_in_place_and_ends_with_the_final_figure(tmp_path):
    class Handle:
        def __init__(self, obj):
            self.history = [obj]

        def update(self, obj):
            self.history.append(obj)

    handles = []

    def display(obj, display_id=False):
        assert display_id is True
        handles.append(Handle(obj))
        return handles[-1]

    path = tmp_path / "metrics.jsonl"
    written = []

    def one_more_step() -> bool:
        """`until`, called once per poll: a training that logs one step between two polls."""
        if len(written) < 5:
            written.append(len(written) + 1)
            with open(path, "a") as f:
                f.write(rec(written[-1], loss=1.0 / written[-1]))
        return len(written) == 5

    sink = NotebookSink(display=display, image=lambda data: ("png", data), plot_every_s=0.0)
    m = follow_metrics(path, until=one_more_step, interval=0.0, sink=sink)
    text, image = handles
    assert len(handles) == 2                                     # two displays, updated in place
    assert text.history[-1] == "final: step 5 | loss 0.2000 (done)"
    assert all(h[0] == "png" and h[1][:8] == PNG_MAGIC for h in image.history)
    assert len(image.history) == 1 + 4 + 1 and m.series("loss")[0] == [1, 2, 3, 4, 5]


def test_follow_stops_at_timeout_and_names_unreadable_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(rec(1, loss=2.0) + "{oops\n")
    out = io.StringIO()
    t0 = time.monotonic()
    m = follow_metrics(path, until=None, interval=0.05, timeout=0.2, sink=TextSink(out))
    assert time.monotonic() - t0 < 2.0 and m.series("loss") == ([1], [2.0])
    assert "stopped following after 0.2 s" in out.getvalue() and "line 2 (not JSON" in out.getvalue()
    with pytest.raises(TypeError, match="until="):
        follow_metrics(path, until=42, sink=TextSink(io.StringIO()))


def test_read_metrics_names_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_metrics(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="mode="):
        follow_metrics(tmp_path / "nope.jsonl", mode="gui")


def test_headless_auto_mode_prints_text(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    path.write_text(rec(7, loss=1.5, lr=3e-4, tokens_per_s=812.4))
    follow_metrics(path, until=lambda: True, interval=0.01)
    assert capsys.readouterr().out == "final: step 7 | loss 1.5000 | lr 3.00e-04 | 812 tok/s (done)\n"
