"""launch.py: one flag parser for every script, named random streams, the data order, the lr schedule."""
import math
from dataclasses import fields

import pytest
import torch

import data
import eval as ev
import igpo
import launch
import sft
from conftest import save_tiny_task_model


@pytest.mark.parametrize("mod", [igpo, sft, ev])
def test_every_config_field_has_help_text_and_every_number_a_domain(mod):
    """A new Config field needs a comment; a numeric or tuple field also needs its domain ([lo, hi] ...) at the
    comment's start, and a bool's comment says what on and off mean."""
    helps = launch.field_help(mod.Config)
    missing = [f.name for f in fields(mod.Config) if not helps.get(f.name)]
    assert not missing, f"{mod.__name__}.Config fields without a help comment: {missing}"
    no_range = [f.name for f in fields(mod.Config) if f.type in (int, float, tuple) and not launch.domain(helps[f.name])]
    assert not no_range, f"{mod.__name__}.Config numeric fields without a [lo, hi] domain: {no_range}"
    vague = [f.name for f in fields(mod.Config) if f.type is bool and not ("on:" in helps[f.name]
                                                                            and "off:" in helps[f.name])]
    assert not vague, f"{mod.__name__}.Config bools whose comment does not say what on: and off: mean: {vague}"
    for f in fields(mod.Config):  # every default (the paper's) lies in its own domain
        rule = launch.domain(helps[f.name])
        assert rule is None or rule[0](getattr(mod.Config(), f.name)), f.name


def test_help_shows_whole_comments_on_off_and_the_official_values(capsys):
    with pytest.raises(SystemExit):
        launch.parse_config(igpo.Config, igpo.PRESETS, ["--preset", "paper", "--help"], official=igpo.OFFICIAL)
    out = " ".join(capsys.readouterr().out.split())
    assert "[default 5e-07; paper 5e-07; official 5e-07]" in out  # --lr
    assert "[default 'sequence_all'; paper 'sequence_all'; official 'sequence_all']" in out
    assert "[default off; paper off; official on]" in out  # --reveal_last: P against O
    assert "| sequence_all (O's use_gspo: over all gen_length; dropped tokens get gradient)" in out  # a last line
    assert "0.2,0.6" in out  # --eta as a comma list
    for name in igpo.OFFICIAL:
        assert f"--{name} " in out


@pytest.mark.parametrize("argv,flag", [(["--lam", "-0.5"], "--lam"), (["--tau", "0"], "--tau"),
                                        (["--eta", "0.2,1.5"], "--eta"), (["--G", "1"], "--G"),
                                        (["--ratio", "seq"], "--ratio"), (["--rescue", "hint"], "--rescue"),
                                        (["--p_mask_prompt", "1"], "--p_mask_prompt")])
def test_values_outside_a_domain_are_usage_errors_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as e:
        launch.parse_config(igpo.Config, igpo.PRESETS, argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and f"error: {flag} " in err


def test_domain_grammar():
    check, label = launch.domain("(0, 1] keep the top fraction")
    assert label == "(0, 1]" and check(1.0) and check(0.5) and not check(0.0) and not check(1.01)
    check, _ = launch.domain("[1, inf) sizes lo,hi")
    assert check((1, 5)) and not check((0, 5)) and check(10**9) and check(None)
    check, _ = launch.domain('{""|prefix|dual} cache')
    assert check("") and check("dual") and not check("full")
    assert launch.domain("a path") is None


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


def test_linear_lr_matches_transformers_schedule_shifted_by_one_warmup_step():
    """O's lr is HF's get_linear_schedule_with_warmup, which the optimizer reads after it steps: O's update k uses
    lambda(k), so its first update has lr 0; ours uses lambda(k + 1) in warmup (declared in igpo.py), the same after."""
    from transformers import get_linear_schedule_with_warmup
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=5e-7)
    hf = get_linear_schedule_with_warmup(opt, num_warmup_steps=50, num_training_steps=9400).lr_lambdas[0]
    for k in [0, 1, 48, 49]:
        assert launch.lr_at(k, 9400, 5e-7, 50) == pytest.approx(5e-7 * hf(k + 1))
    for k in [50, 51, 1000, 5000, 9399, 9400]:
        assert launch.lr_at(k, 9400, 5e-7, 50) == pytest.approx(5e-7 * hf(k), abs=1e-18)
    assert launch.lr_at(12000, 9400, 5e-7, 50) == 0.0  # past the horizon: 0, never negative


def test_paper_preset_decays_the_lr_over_the_official_horizon(monkeypatch, tmp_path):
    """--lr_epochs 10 (the paper preset): the horizon is 10 epochs of the prompts x mu optimizer steps (O: HF's
    num_train_epochs 10), not --steps; --lr_epochs 0 (the task preset) decays over --steps. A real first step of a
    tiny model up to the optimizer: what lr_at receives is checked, not a printed line."""
    class Stop(Exception):
        pass

    def spy(step, total, *a, **k):
        seen.append(total)
        raise Stop

    monkeypatch.setattr(launch, "lr_at", spy)
    ck = save_tiny_task_model(tmp_path / "ck")
    tiny = ["--data", "task", "--model", ck, "--out_dir", str(tmp_path / "run"), "--prompts_per_step", "2", "--G",
            "2", "--gen_length", "16", "--block_length", "8", "--diffusion_steps", "4", "--chunk", "2,3", "--reserve",
            "2", "--eval_limit", "0", "--micro_batch", "4", "--beta", "0", "--lora_rank", "0"]
    n = len(data.rl_prompts("task")[0])
    for argv, want in ((["--preset", "paper", *tiny], 10 * n * 4 / 2),  # paper: mu 4; 10 epochs, not --steps
                       ([*tiny, "--lr_epochs", "0"], igpo.PRESETS["task"]["steps"]),  # the task preset's --steps
                       ([*tiny, "--lr_epochs", "1.5", "--max_prompts", "100"], 100 * 1.5 * 2 / 2)):  # task: mu 2
        seen = []
        with pytest.raises(Stop):
            igpo.train(launch.parse_config(igpo.Config, igpo.PRESETS, argv))
        assert seen == [math.ceil(want)], argv


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
