"""mambaft models in the transformers ecosystem: `mambaft export MODEL --to DIR --format hf`.

    export.py          writes and reads the folder (config, weights, tokenizer, code, card)
    ship.py            the model code the folder carries: mambaft/model/'s own files, imports flattened
    chat_template.py   the Jinja chat template and tokenizer.json that give mambaft's exact ids
    card.py            the model card (README.md with the Hub's YAML header)
    files/             the transformers config and the adapter around mambaft's model (copied as is)
"""
