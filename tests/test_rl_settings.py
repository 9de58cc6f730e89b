"""experiments/rl_settings.py: the cost columns, from metrics rows worked out by hand."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"))
import rl_settings  # noqa: E402


def test_costs_charge_each_step_half_its_batch():
    rows = [{"step": 0},  # the start's evaluation row: no timings
            {"t_rollout": 10.0, "t_inpaint": 2.0, "t_logp": 1.0, "t_update": 0.5, "clip_frac": 0.1},
            {"t_update": 0.7, "clip_frac": 0.3},
            {"t_rollout": 4.0, "t_logp": 3.0, "t_update": 0.2},  # GRPO-like batch: no inpainting, no clip logged
            {"t_update": 0.6, "clip_frac": 0.2}]
    clip, step, learn = rl_settings.costs(rows)
    # steps: 0.5 + 13/2, 0.7 + 13/2, 0.2 + 7/2, 0.6 + 7/2; log-probs + update: 0.5 + 1/2, 0.7 + 1/2, 0.2 + 3/2, 0.6 + 3/2
    assert clip == pytest.approx(0.15)
    assert step == pytest.approx((7.0 + 7.2 + 3.7 + 4.1) / 4)
    assert learn == pytest.approx((1.0 + 1.2 + 1.7 + 2.1) / 4)
