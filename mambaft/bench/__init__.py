"""Benchmarks: mambaft against a plain re-implementation of the original MambaSWELU computation.

    python -m mambaft.bench train|generate|prepare --help     (see mambaft/bench/__main__.py)

Modules: original.py (the original computation), harness.py (worker processes, alternation,
medians, memory accounting), flops.py (FLOP counts, measured GEMM peak), train.py / generate.py /
prepare.py (one benchmark each). Nothing runs on import.
"""
