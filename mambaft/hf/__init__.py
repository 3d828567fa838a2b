"""mambaft models in the transformers ecosystem: `mambaft export MODEL --to DIR --format hf`.

    export.py          writes and reads the folder (config, weights, tokenizer, code, card)
    chat_template.py   the Jinja chat template and tokenizer.json that give mambaft's exact ids
    card.py            the model card (README.md with the Hub's YAML header)
    files/             the standalone modeling/configuration code copied into every folder
"""
