"""MambaSWELU configuration for transformers (standalone: needs only transformers; written by `mambaft export`).

Field names are mambaft's (`mambaft.model.MambaSWELUConfig`), so one dict describes the model in both.
transformers' usual names (hidden_size, num_hidden_layers, max_position_embeddings) are aliases.
"""
try:
    from transformers import PreTrainedConfig as _BaseConfig      # transformers >= 5
except ImportError:  # pragma: no cover - transformers 4.x
    from transformers import PretrainedConfig as _BaseConfig


class MambaSWELUConfig(_BaseConfig):
    model_type = "mambaswelu"
    attribute_map = {"hidden_size": "d_model", "num_hidden_layers": "n_layers",
                     "max_position_embeddings": "max_seq_len"}

    def __init__(self, vocab_size=50257, d_model=1024, n_layers=6, d_state=16, d_conv=4, expand=2,
                 max_seq_len=1024, dense_hidden_dim=2048, dropout=0.1, tie_embeddings=True,
                 swelu_lam_formula=None, architecture="original", ssm_state=16, **kwargs):
        if architecture not in ("original", "selective"):
            raise ValueError(f"architecture={architecture!r}: expected 'original' or 'selective'")
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.n_layers = n_layers
        self.d_state = d_state                   # sizes the unused x_proj of the as-trained mixer
        self.d_conv = d_conv
        self.expand = expand
        self.max_seq_len = max_seq_len
        self.dense_hidden_dim = dense_hidden_dim
        self.dropout = dropout
        self.tie_embeddings = tie_embeddings
        self.swelu_lam_formula = swelu_lam_formula
        self.architecture = architecture         # "original" (as trained) or "selective" (context repair)
        self.ssm_state = ssm_state               # state size of the selective path
        kwargs.setdefault("tie_word_embeddings", tie_embeddings)
        kwargs.setdefault("use_cache", True)
        super().__init__(**kwargs)

    @property
    def d_inner(self):
        return self.expand * self.d_model

    @property
    def receptive_field(self):
        """Tokens one output of the as-trained architecture can see: 1 + n_layers * (d_conv - 1)."""
        return 1 + self.n_layers * (self.d_conv - 1)
