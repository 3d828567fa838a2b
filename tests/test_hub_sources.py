"""Hub sources as the hub serves them today: the explicit configs of the ccdv summarization sets, and
the French phase's epoch warning with the registry's French text offered as a supplement."""
from __future__ import annotations

import sys
import types

import pytest

from mambaft.config import make_config
from mambaft.data import text
from mambaft.data.planner import FRENCH_SUPPLEMENT, plan_budget


@pytest.mark.parametrize("name,dataset", [("arxiv", "ccdv/arxiv-summarization"),
                                          ("pubmed", "ccdv/pubmed-summarization")])
def test_the_summarization_sets_are_loaded_with_their_document_config(monkeypatch, name, dataset):
    """Both sets have configs "section" and "document"; without one `load_dataset` fails."""
    calls = []

    def load_dataset(ds_id, config=None, split=None, streaming=False):
        calls.append((ds_id, config, split, streaming))
        if config is None:
            raise ValueError("Config name is missing. Please pick one among the available configs: "
                             "['section', 'document']")
        return iter([{"article": "An article about cells. " * 20, "abstract": "Cells.", "id": "a1"}])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    docs = list(text._read_hub(text.TEXT_SOURCES[name].hub_id, name))
    assert calls == [(dataset, "document", "train", True)]
    assert docs and docs[0][1].startswith("An article about cells.")


def test_the_french_phase_that_would_memorise_its_data_is_offered_the_registry_french_text():
    cfg = make_config("specialized", domain="french", num_gpus=1, batch_size=4, grad_accum=1, phase2_steps=1000)
    stats = {"phases": {
        "phase1": {"sources": {"alpaca": {"unique_train": 50_000, "train_rows": 50_000, "train_tokens": 1e7}}},
        "phase2": {"sources": {"oasst": {"unique_train": 400, "train_rows": 400, "train_tokens": 1e5}}}}}
    plan = plan_budget(cfg, stats)
    # 1000 steps x 4 rows = 4,000 rows of 400 French threads = 10 epochs
    (warn,) = [w for w in plan["warnings"] if w.startswith("phase2: oasst: 10.0 epochs")]
    assert warn.endswith(FRENCH_SUPPLEMENT) and '"french_text": 0.5' in warn
    code = make_config("specialized", domain="code", num_gpus=1, batch_size=4, grad_accum=1, phase2_steps=1000)
    assert not any(FRENCH_SUPPLEMENT in w for w in plan_budget(code, stats)["warnings"])   # French only
