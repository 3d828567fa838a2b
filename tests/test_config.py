"""Strategy presets and make_config: one source of truth, unknown keys and wrong types refused."""
import pytest

from mambaft.config import PRESETS, STRATEGIES, ConfigError, config_from_dict, make_config, parse_overrides


def test_plan_hyperparameters():
    q = make_config("quick")
    assert (q.lr, q.weight_decay, q.warmup_steps, q.max_steps, q.batch_size, q.grad_accum, q.save_every) == \
        (1e-5, 0.01, 500, 10_000, 4, 8, 1000)
    assert q.global_batch == 4 * 8 * 6 == 192
    c = make_config("conversational")
    assert (c.lr, c.weight_decay, c.warmup_steps, c.max_steps, c.batch_size, c.grad_accum, c.max_seq_len) == \
        (5e-6, 0.05, 1000, 25_000, 2, 16, 1024)
    assert c.tokens_per_step == 2 * 16 * 6 * 1024
    assert c.keep_last == 5
    s = make_config("specialized", domain="code")
    assert s.lr == c.lr and 15_000 <= s.phase2_steps <= 30_000 and "codealpaca" in s.phase2_sources


def test_every_preset_validates():
    assert set(PRESETS) == set(STRATEGIES)
    for name in STRATEGIES:
        assert make_config(name).strategy == name


def test_overrides_and_refusals():
    assert make_config("smoke", lr=1).lr == 1.0
    with pytest.raises(ConfigError, match="unknown config key.*lrate"):
        make_config("smoke", lrate=1e-4)
    with pytest.raises(ConfigError, match="max_steps='ten': expected an integer"):
        make_config("smoke", max_steps="ten")
    with pytest.raises(ConfigError, match="precision='fp8'"):
        make_config("smoke", precision="fp8")
    with pytest.raises(ConfigError, match="batch_size=0: must be > 0"):
        make_config("smoke", batch_size=0)
    with pytest.raises(ConfigError, match="strategy='huge'"):
        make_config("huge")
    with pytest.raises(ConfigError, match="trim_context=true needs architecture='original'"):
        make_config("smoke", architecture="selective", trim_context=True)
    assert make_config("smoke", trim_context=True).trim_context


def test_round_trip_and_cli_overrides():
    c = make_config("quick", lr=5e-5)
    assert config_from_dict(c.to_dict()) == c
    assert parse_overrides(["lr=1e-4", "data_mode=offline", "test_at=[1,2]"]) == \
        {"lr": 1e-4, "data_mode": "offline", "test_at": [1, 2]}


def test_configs_saved_with_the_old_key_names_still_load():
    """Before issue 13 the run config called the selective state size `d_state` (the model config's
    d_state is the dead x_proj's width) and carried an unused `test_at`: saved runs still load."""
    old = make_config("smoke", architecture="selective", ssm_state=8).to_dict()
    old["d_state"] = old.pop("ssm_state")
    old["test_at"] = [5000, 10_000]
    assert config_from_dict(old) == make_config("smoke", architecture="selective", ssm_state=8)
    with pytest.raises(ConfigError, match="d_state is now ssm_state"):
        make_config("smoke", d_state=8)
    with pytest.raises(ConfigError, match="d_state=8 and ssm_state=4"):
        config_from_dict({**old, "d_state": 8, "ssm_state": 4})
