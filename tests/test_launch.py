"""launch.py: one flag parser for every script, named random streams, the data order, the lr schedule."""
import math
from dataclasses import fields

import pytest
import torch

import eval as ev
import igpo
import launch
import sft


@pytest.mark.parametrize("mod", [igpo, sft, ev])
def test_every_config_field_has_help_text(mod):
    helps = launch.field_help(mod.Config)
    missing = [f.name for f in fields(mod.Config) if not helps.get(f.name)]
    assert not missing, f"{mod.__name__}.Config fields without a help comment: {missing}"


def test_help_shows_the_preset_default_and_the_papers(capsys):
    with pytest.raises(SystemExit):
        launch.parse_config(igpo.Config, igpo.PRESETS, ["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "[default 0.0003; paper 5e-07]" in out  # --lr: the task preset's and the paper's
    assert "[default 'token'; paper 'sequence_all']" in out


@pytest.mark.parametrize("mod", [igpo, sft])
def test_bad_values_are_usage_errors(mod, capsys):
    for argv in (["--seed", "x"], ["--grad_ckpt", "maybe"], ["--preset", "nope"]):
        with pytest.raises(SystemExit) as e:
            launch.parse_config(mod.Config, mod.PRESETS, argv)
        assert e.value.code == 2
        assert "usage:" in capsys.readouterr().err


def test_bools_tuples_and_presets():
    cfg = launch.parse_config(igpo.Config, igpo.PRESETS, ["--rescue", "off", "--eta", "0,0", "--post_eos", "ON"])
    assert cfg.rescue == "off" and cfg.eta == (0.0, 0.0) and cfg.post_eos is True
    assert cfg.data == "task"  # the no-flag preset
    paper = launch.parse_config(igpo.Config, igpo.PRESETS, ["--preset", "paper"])
    assert paper == igpo.Config()
    assert sft.parse_config(["--resume", "on"]).resume is True  # was silently False with sft's own parser


def test_seed_streams_are_distinct_and_deterministic():
    a = launch.seed(0, "rollout", 3, 5)
    assert a == launch.seed(0, "rollout", 3, 5) and 0 <= a < 2**63
    others = {launch.seed(0, s, 3, 5) for s in launch.STREAMS if s != "rollout"}
    assert a not in others and len(others) == len(launch.STREAMS) - 1
    assert launch.seed(1, "rollout", 3, 5) != a and launch.seed(0, "rollout", 5, 3) != a
    assert launch.seed(0, "eval", "gsm8k-test-1", 0) != launch.seed(0, "eval", "gsm8k-test-10", 0)
    with pytest.raises(AssertionError):
        launch.seed(0, "rollouts", 1)


def test_data_order_is_a_permutation_per_epoch_and_world_size_free():
    n = 7
    order = launch.data_order(n, 0, range(3 * n))
    for e in range(3):
        assert sorted(order[e * n:(e + 1) * n]) == list(range(n))
    assert order[:n] != order[n:2 * n]  # a new permutation each epoch (fails with probability 1/7!)
    parts = launch.data_order(n, 0, range(0, 10)) + launch.data_order(n, 0, range(10, 21))
    assert parts == order


def test_lr_schedules_by_hand():
    # igpo: warmup 5 to 1e-4, then linear to 0 at step 40
    assert launch.lr_at(0, 40, 1e-4, 5) == pytest.approx(2e-5)
    assert launch.lr_at(4, 40, 1e-4, 5) == pytest.approx(1e-4)
    assert launch.lr_at(22, 40, 1e-4, 5) == pytest.approx(1e-4 * (40 - 22) / 35)
    # sft: cosine from 2e-3 to 0.05 * 2e-3
    assert launch.lr_at(50, 1000, 2e-3, 50, 0.05, "cosine") == pytest.approx(2e-3)
    mid = 50 + 950 / 2
    assert launch.lr_at(mid, 1000, 2e-3, 50, 0.05, "cosine") == pytest.approx(2e-3 * (0.05 + 0.95 * 0.5))
    assert launch.lr_at(1000, 1000, 2e-3, 50, 0.05, "cosine") == pytest.approx(2e-3 * 0.05)
    assert math.isfinite(launch.lr_at(0, 10, 1.0, 0))


def test_until_stop():
    import sample
    assert sample.until_stop(torch.tensor([5, 6, 1, 7, 1]), {1}).tolist() == [5, 6]
    assert sample.until_stop([5, 6, 9, 2], {1, 2}) == [5, 6, 9]
    assert sample.until_stop([5, 6], {1}) == [5, 6]
