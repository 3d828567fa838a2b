"""`accelerate launch -m mambaft.finetune ...`: the plan's spelling of the fine-tuning entry point.

Same as `mambaft finetune` and `accelerate launch -m mambaft.train.finetune` (see that module).
"""
import sys

from mambaft.train.finetune import main

if __name__ == "__main__":
    from mambaft.cli import run_command
    sys.exit(run_command("finetune", main, sys.argv[1:]))
