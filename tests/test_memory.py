"""bench/memory.py runs on the meta device in seconds: LLaDA-8B's 8.02B parameters, static bytes against hand
counts, the live-bytes tracker on a hand-computed sequence, and the 1-and-2-block extrapolation against a direct
measurement."""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import memory  # noqa: E402

GIB = 2**30


def test_memory_table_for_llada_8b(capsys):
    out = memory.main([])
    text = capsys.readouterr().out
    assert out["total"] == 8_015_581_184 and "8,015,581,184 parameters (8.02B" in text
    full, lora = out["static"]["full FT"], out["static"]["LoRA r=128"]
    assert full["parameters (sharded)"] == 8_015_581_184 * 4 / 8 / GIB  # fp32 master weights, 8 shards
    assert full["AdamW states (2 x fp32, sharded)"] == 8_015_581_184 * 8 / 8 / GIB
    # LoRA r=128 on q, k, v (4096 -> 4096) and up_proj (4096 -> 12288) in 32 blocks: r x (in + out) each
    assert out["n_train"]["LoRA r=128"] == 32 * 128 * (3 * (4096 + 4096) + (4096 + 12288)) == 167_772_160
    assert lora["reference policy (bf16, sharded)"] == 0
    assert lora["parameters (sharded)"] == (8_015_581_184 * 2 + 167_772_160 * 4) / 8 / GIB  # bf16 base, fp32 adapter
    for setting in ("checkpointing on", "checkpointing off", "rollout 8 rows", "ESTIMATE"):
        assert setting in text


def test_live_bytes_by_hand():
    with memory.LiveBytes() as live:
        a = torch.empty(1000, device="meta")      # 4000 bytes
        b = a * 2                                  # 8000 alive
        del a                                      # 4000
        c = b.view(10, 100)                        # a view: no new storage
        d = c + 1                                  # 8000
        c.mul_(3)                                  # in place: no new storage
        del b
        assert live.now == 8000                    # c still holds b's storage
        del c, d
    assert live.peak == 8000 and live.now == 0


def test_extrapolation_from_one_and_two_blocks_is_exact():
    for rank, ckpt in ((0, False), (128, True)):
        args = (2, 40, 24, ckpt)
        direct = memory.train_peak(memory.build(rank, 3), *args)
        assert memory.extrapolated(memory.train_peak, rank, 3, *args) == direct
        assert direct > memory.train_peak(memory.build(rank, 2), *args)
