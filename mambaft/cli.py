"""The `mambaft` command (also `python -m mambaft`): one subcommand per stage of the course.

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
import os
import sys
from typing import Callable

from mambaft.errors import UserError

DEBUG_FLAG = "--debug"
EXIT_ERROR = 2          # as argparse uses for a usage error
EXIT_INTERRUPTED = 130  # 128 + SIGINT

# subcommand -> (module whose main(argv) runs it, one-line help). Modules load only when used.
COMMANDS = {
    "info": ("mambaft.checkpoint", "describe a checkpoint, or convert it (--to, --format)"),
    "export": ("mambaft.hf.export", "export a model for transformers and the Hub (--to DIR --format hf)"),
    "generate": ("mambaft.generate", "generate text from a prompt"),
    "prepare": ("mambaft.data.prepare", "build the instruction dataset of a strategy"),
    "finetune": ("mambaft.train.finetune", "fine-tune a base model (also under accelerate launch)"),
    "evaluate": ("mambaft.evaluate.cli", "measure one model: perplexity, probes, BLEU, benchmarks"),
    "compare": ("mambaft.evaluate.compare", "compare several models side by side, with a report"),
    "diagnose": ("mambaft.evaluate.diagnosis", "diagnose a base model: reach, end token, symptoms"),
    "chat": ("mambaft.chat.terminal", "chat with a model in the terminal"),
    "plot": ("mambaft.plots", "plot or follow a run's metrics.jsonl"),
    "pretrain": ("mambaft.pretrain", "pretrain the small demo base model on offline text"),
    "course": ("mambaft.course_runner", "run the five notebooks headless with papermill"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: mambaft COMMAND [ARGS...]   (mambaft COMMAND --help for its options)", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "benchmarks: python -m mambaft.bench --help"]
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


def main(argv=None) -> int:
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
    module = importlib.import_module(COMMANDS[name][0])
    sys.argv = [f"mambaft {name}", *rest]
    return run_command(name, module.main, rest)


if __name__ == "__main__":
    sys.exit(main())
