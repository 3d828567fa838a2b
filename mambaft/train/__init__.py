"""Fine-tuning: the step (step.py), optimizer and schedule (optim.py), the loop (finetune.py)."""
