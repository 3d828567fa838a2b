"""Evaluation: the plan's success probes, perplexity, degeneration, BLEU/chrF, multiple-choice
benchmarks, the diagnosis of a base model, and the side-by-side comparison of several models.

Submodules load only when used (nothing heavy happens on import):
    mambaft.evaluate.probes       PROBES, run_probes        (the plan's success probes, EN + FR)
    mambaft.evaluate.metrics      perplexity, degeneration, reply quality (distinct, bare), BLEU/chrF
    mambaft.evaluate.bounds       the bounds a fine-tuned model must meet, and the verdict
    mambaft.evaluate.benchmarks   HellaSwag / ARC-Easy / PIQA by log-likelihood
    mambaft.evaluate.diagnosis    receptive field, dead parameters, end token, symptoms
    mambaft.evaluate.suite        evaluate_model (`mambaft evaluate`)
    mambaft.evaluate.compare      compare_models, `mambaft compare`
    mambaft.evaluate.reference    SmolLM2-135M-Instruct reference row
"""
