"""The `mambaft` command (also `python -m mambaft`): one subcommand per stage of the course.

    mambaft --help
    mambaft info tests/fixtures/mambaswelu_tiny/checkpoint.pt
"""
from __future__ import annotations

import importlib
import sys

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


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"mambaft: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    sys.argv = [f"mambaft {name}", *rest]
    result = module.main(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
