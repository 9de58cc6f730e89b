"""Host/device mixing without a GPU (issue 27, point 9): igpo.py, sft.py and eval.py run on devicecheck.DEVICE in a
1-rank gloo group (so their collectives run), and no op may mix device tensors with host tensors the way CUDA refuses.
FSDP2 is left out (launch.fsdp returns the model): it is torch's code, and its own device handling is not under test."""
import json

import pytest
import torch
import torch.distributed as dist

import eval as E
import igpo
import launch
import sft
from conftest import save_tiny_task_model
from devicecheck import DEVICE, DeviceCheck
from test_igpo import small_cfg


@pytest.fixture(scope="module")
def task_ckpt(tmp_path_factory):
    return save_tiny_task_model(tmp_path_factory.mktemp("ck") / "tiny-task")


@pytest.fixture
def check(monkeypatch):
    """A DeviceCheck to run a script under: setup_dist hands it DEVICE, in a 1-rank process group."""
    monkeypatch.setattr(launch, "setup_dist", lambda *a: (0, 1, DEVICE))
    monkeypatch.setattr(launch, "fsdp", lambda model, device, **kw: model)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield DeviceCheck()
    if dist.is_initialized():  # the scripts destroy it at their end; not if they raised
        dist.destroy_process_group()


def test_the_check_flags_what_cuda_refuses_and_passes_what_it_allows(check):
    with check:
        comp = torch.zeros(4, 3, dtype=torch.long, device=DEVICE)
        rows = torch.tensor([0, 2])
        comp[rows] = torch.ones(2, 3, dtype=torch.long).to(DEVICE)  # host indices, device values
        comp[rows] = comp[rows] + torch.tensor(1)  # a 0-dim host tensor is a number
        host = comp.cpu() + torch.ones(4, 3, dtype=torch.long)  # all on the host
        torch.rand(3, generator=torch.Generator(comp.device).manual_seed(0), device=comp.device)
        assert check.found == []  # CUDA allows all of the above, and none of the below
        comp[torch.zeros(0, dtype=torch.long)] = torch.zeros(0, 3, dtype=torch.long)  # point 9: host values
        torch.cat([comp, host])
        host[comp[:, 0] > 0] = 0  # a device index into a host tensor
        total = torch.tensor(0)
        total += comp.sum()  # a host scalar as the target of a write
        dist.all_reduce(torch.tensor(1.0))  # NCCL: device tensors only
        dist.all_reduce(comp.sum())
        torch.rand(3, generator=torch.Generator().manual_seed(0), device=DEVICE)  # a host generator
    assert [f.split(": ")[1] for f in check.found] == ["__setitem__", "cat", "__setitem__", "add_",
                                                      "dist.all_reduce", "rand"], check.found
    assert check.found[0].startswith("tests/test_device_mixing.py:")


def scripted_rewards(monkeypatch, verdicts):
    """igpo.rewards runs as written, then its correctness becomes the next of `verdicts` (1 = right) x the weight:
    a tiny random policy is never right, so whether a group is all wrong is set here."""
    real, calls = igpo.rewards, iter(verdicts)

    def rewards(tok, comp, golds, cfg):
        correct, total = real(tok, comp, golds, cfg)
        right = torch.tensor(next(calls), dtype=correct.dtype) * cfg.correct_weight
        return right, total - correct + right
    monkeypatch.setattr(igpo, "rewards", rewards)
    return calls


@pytest.mark.parametrize("all_wrong", [False, True])
def test_igpo_step_keeps_host_and_device_apart(task_ckpt, tmp_path, check, monkeypatch, all_wrong):
    """One rollout batch (2 prompts x G 4) and its 2 updates, checkpoint included. Without an all-wrong group (the task
    preset's loss, a reference copy, prompt masking); with one, rescued by 2 verified inpainted rollouts (the paper's
    loss flags, LoRA: the reference is the adapter off, trajectory log-probs)."""
    if all_wrong:
        calls = scripted_rewards(monkeypatch, [[0] * 4 + [1] * 4, [1] * 4])  # roll-out, then group 0's inpainting
        cfg = small_cfg(task_ckpt, beta=0.01, lora_rank=4, loss_norm="group", ratio="sequence_all", logp="trajectory")
    else:
        calls = scripted_rewards(monkeypatch, [[1] * 8])
        cfg = small_cfg(task_ckpt, beta=0.01, p_mask_prompt=0.5)
    cfg.out_dir = str(tmp_path / "run")
    with check:
        igpo.train(cfg)
    assert not check.found, "host/device mixing:\n" + "\n".join(check.found)
    assert check.ran["linear"] > 0 and check.ran["backward"] > 0  # forwards and backwards ran on the device
    row = json.loads(open(tmp_path / "run" / "metrics.jsonl").readline())
    assert row["all_wrong_before"] == (0.5 if all_wrong else 0.0) and row["all_wrong_after"] == 0.0
    assert row["replaced"] == (2 / 8 if all_wrong else 0.0) and next(calls, None) is None


@pytest.mark.parametrize("loss_norm", ["sample", "batch"])
def test_sft_step_keeps_host_and_device_apart(task_ckpt, tmp_path, check, loss_norm):
    cfg = sft.parse_config(["--model", task_ckpt, "--max_samples", "8", "--steps", "1", "--global_batch", "4",
                            "--micro_batch", "2", "--loss_norm", loss_norm, "--out_dir", str(tmp_path / "sft")])
    with check:
        sft.train(cfg)
    assert not check.found, "host/device mixing:\n" + "\n".join(check.found)
    assert check.ran["linear"] > 0 and check.ran["backward"] > 0
    assert (tmp_path / "sft" / "model.safetensors").exists()


def test_evaluation_keeps_host_and_device_apart(task_ckpt, tmp_path, check):
    with check:
        res = E.main(["--model", task_ckpt, "--bench", "task", "--limit", "3", "--gen_length", "8", "--block_length",
                      "4", "--steps", "4", "--batch_size", "2", "--out_dir", str(tmp_path / "eval")])
    assert not check.found, "host/device mixing:\n" + "\n".join(check.found)
    assert check.ran["linear"] > 0
    assert res["task"]["n_problems"] == 3
