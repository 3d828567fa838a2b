"""mambaft: turn the pretrained MambaSWELU base model into a chat model (a notebook course + library).

Importing the package has no side effects; heavy modules load on first use.
"""
__version__ = "0.1.0"
