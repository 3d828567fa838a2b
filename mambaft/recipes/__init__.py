"""Recipes: programs that train on top of the library (as torchtune's recipes sit above its library).
Nothing in the library imports them.

    pretrain.py         the small demo base model (`mambaft pretrain`), with pretrain_report.py: its
                        symptom check and model card
    context_repair.py   the context-repair experiment: pretrain (or load) a small original model, continue
                        it as original and as selective, measure the context each uses (`mambaft context demo`)
"""
