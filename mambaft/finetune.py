"""`accelerate launch -m mambaft.finetune ...`: the plan's spelling of `mambaft finetune` (mambaft.cli.finetune)."""
import sys

from mambaft.cli import run_command
from mambaft.cli.finetune import main

if __name__ == "__main__":
    sys.exit(run_command("finetune", main, sys.argv[1:]))
