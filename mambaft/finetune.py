"""`accelerate launch -m mambaft.finetune ...`: the plan's spelling of the fine-tuning entry point.

Same as `mambaft finetune` and `accelerate launch -m mambaft.train.finetune` (see that module).
"""
from mambaft.train.finetune import main

if __name__ == "__main__":
    main()
