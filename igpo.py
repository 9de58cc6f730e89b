"""IGPO: Inpainting-Guided Policy Optimization for masked diffusion LLMs (arXiv 2509.10396, Algorithm 1).

GRPO on a dLLM wastes every group whose G rollouts are all wrong: their advantages r - mean(r) are zero, so is
their gradient. IGPO re-samples such a group with chunks of the ground-truth reasoning trace fixed in the canvas
(inpainting: the diffusion sampler fills in around them), keeps the inpainted rollouts that verify as correct,
and lets them replace up to ⌊λG⌋ of the wrong ones. Hint tokens are off-policy, so only the top-τ of them by the
old policy's entropy stay in the loss (entropy filter). One rollout batch = `make_batch`, four phases:
  1. roll_out           G completions per prompt, rewarded (correctness + format)
  2. rescue             all_wrong groups -> inpaint_groups (hints fixed in the canvas; inpaint.py, sample.py) ->
                        verify -> pick_replacements. --rescue hints (IGPO) | resample (the sample-matched
                        baseline: G re-samples without hints) | off (GRPO)
  3. group_advantages   A_i = r_i - mean_group(r) (P, O: no std division, also for GRPO)
  4. old_logps          old-policy log-probs and entropies, reference log-probs, for the μ iterations
then μ optimizer steps of `update`: entropy filter (the `keep` mask) -> clipped surrogate + k3 KL (`grpo_loss`).
Log-probs (d1's estimator, as O): the completion is fully masked (prompt tokens with probability p_mask_prompt,
seeded per iteration) and log π(y_k) is read off one forward at position k; old, reference and current policy
see the same input in iteration j. With --ratio sequence_all (O's GSPO ratio, the paper preset) a sequence's
ratio averages over all its positions, so tokens the filter drops still shape the ratio of the kept ones.

Behaves differently from the paper (P) or the official code (O); each flag's --help shows both values:
  --reveal_last  P: hints never contain the final answer. O always reveals the trace's last chunk, answer included.
  --post_eos     P: tokens after the first EOS are in neither the loss nor the reward's text. O keeps all gen_length.
  --stretch      P: hints sit at their index in the trace. O stretches their positions (inpaint.py).
  --logp         d1 (P, O) | trajectory: each token scored in the canvas the sampler committed it in (TraceRL).
  --reward_rule  official (O: the first \\boxed, none = 0; the paper preset) | lenient (eval.py's extraction).
  --loss_norm    group (O): each group's mean over its kept tokens, then the mean over groups | token: one mean
                 over the kept tokens of the global batch (the task preset).
  --lr_epochs    O's lr decays linearly to 0 over its whole run, 10 epochs (~9.4K steps); 0 = over --steps.
  --max_prompt   O keeps the last 600 prompt tokens; 0 = no limit.
Declared, no flag: (1) O's instruction is a plain Python string, so its model reads a backspace and "oxed" where
we send \\boxed (data.SYSTEM_PROMPT). (2) Hint source: the trace in the response format, cut before its first
\\boxed; O: "<reasoning>\\n" + the raw MetaMathQA response ("#### N", "The answer is: N" included). (3) Log-probs
and entropies come from fp32 logits (O: bf16, whose entropies often tie; O's topk keeps an arbitrary one). (4)
HF's warmup gives O's first update lr 0; ours gets lr / warmup.
Notes (same values up to float rounding): rows with identical log-prob inputs (every rollout of a prompt when
p_mask_prompt = 0) share one forward; every rank samples as many inpainted rows as the busiest (padding), so
FSDP's collectives line up; seeds use global indices, so no draw depends on the world size.
Resume (--resume on): every random draw is seeded by (seed, step or batch, row) (launch.seed), so a checkpoint
(policy, optimizer, step) restores every stream; SIGTERM finishes the rollout batch, saves and exits 0.
Launch:  python igpo.py                                    # embedded task, tiny LLaDA, 2 CPU cores, ~3-10 min
         python igpo.py --rescue off                       # GRPO;  --rescue resample: the sample-matched baseline
         torchrun --nproc_per_node=8 igpo.py --preset paper --model PATH_TO_SFT_CHECKPOINT
Shapes: B rollouts on this rank (= prompts x G), G group, P prompt length, L gen_length, V vocab.
"""
import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
from tqdm import tqdm

import data
import eval as E
import inpaint
import launch
import model as M
import reward
import sample
import sft


@dataclass
class Config:  # a comment starting with [lo, hi] or {a|b} is the field's domain, checked at start-up (launch.domain)
    model: str = "GSAI-ML/LLaDA-8B-Instruct"  # initial policy (HF dir or hub id; P starts from the SFT model)
    data: str = "metamath"             # prompts: metamath (O) | math | gsm8k | x.jsonl | task | task-ext<share>
    max_prompts: int = 0               # [0, inf) train on the first N prompts only (0 = all; bench/overfit.py: 16)
    out_dir: str = "runs/igpo"         # metrics.jsonl, config.json, checkpoints
    steps: int = 1000                  # [1, inf) optimizer steps = rollout batches x mu
    prompts_per_step: int = 64         # [1, inf) prompts per rollout batch, global (any world size)
    G: int = 8                         # [2, inf) rollouts per prompt (P, O)
    micro_batch: int = 8               # [1, inf) rows per forward/backward on a rank (memory only; same update)
    max_prompt: int = 600              # [0, inf) prompt tokens kept, the last ones (O: 600); 0 = all
    gen_length: int = 256              # [1, inf) new tokens per rollout (O)
    block_length: int = 32             # [1, inf) semi-autoregressive block (O)
    diffusion_steps: int = 128         # [1, inf) denoising steps per rollout (O)
    temperature: float = 1.2           # [0, inf) rollout temperature (O)
    fast_threshold: float = 0.0        # [0, 1] fast rollouts: commit every token with confidence >= this (0 = exact)
    fast_cache: str = ""               # {""|prefix|dual} fast rollouts: approximate KV cache (sample.py; "" = none)
    rescue: str = "hints"              # {hints|resample|off} what happens to an all-wrong group: hints = IGPO (G
                                       # re-samples with hints; correct ones replace wrong ones), resample = the
                                       # sample-matched baseline (G re-samples without hints), off = GRPO
    eta: tuple = (0.2, 0.6)            # [0, 1] hint ratio range lo,hi: eta ~ U[lo, hi] per hinted rollout (P, O)
    chunk: tuple = (5, 10)             # [1, inf) hint chunk sizes lo,hi in tokens, inclusive (O)
    lam: float = 0.5                   # [0, 1] replace at most floor(lam * G) wrong rollouts per group (O: 4 of 8)
    tau: float = 0.2                   # (0, 1] keep the top-tau fraction of hint tokens by entropy (P, O)
    stretch: bool = False              # on: O's stretched hint placement; off: P's placement at the trace index
    rechunk: bool = True               # on: each hinted rollout chunks the trace anew (O); off: once per group
    reserve: int = 30                  # [0, inf) last positions of the window never hinted (O)
    reveal_last: bool = False          # on: O, the trace's last chunk (the answer) is always shown; off: P, never
    withhold: str = "answer"           # {answer|step} hints never show the final answer (P) | nor the reasoning's
                                       # last line, whose result is the answer (an ablation; README's "Does it work")
    mu: int = 4                        # [1, inf) inner updates per rollout batch (O: num_iterations)
    eps: float = 0.2                   # (0, 1) clip range of the ratio (P, O)
    beta: float = 0.01                 # [0, inf) k3 KL weight to the reference policy; 0 = no reference (O: 0.01)
    ratio: str = "sequence_all"        # {token|sequence|sequence_all} importance ratio: token | sequence (GSPO,
                                       # mean log-ratio over kept tokens) | sequence_all (O's use_gspo: mean over
                                       # all gen_length positions)
    loss_norm: str = "group"           # {token|group} mean over the kept tokens: of the batch | of each group (O)
    logp: str = "d1"                   # {d1|trajectory} log-prob estimator (d1: P, O; see the docstring)
    logp_group: int = 1                # [1, inf) trajectory: sampler steps scored per forward (a block's = block TF)
    p_mask_prompt: float = 0.0         # [0, 1) prompt-token mask probability in the log-prob forward (d1 option)
    post_eos: bool = False             # on: O, tokens after the first EOS in the loss and reward; off: P, neither
    lr: float = 5e-7                   # [0, inf) AdamW peak lr, after a linear warmup, then linear decay (O)
    lr_epochs: float = 10.0            # [0, inf) the lr reaches 0 after this many epochs of prompts x mu (O: 10,
                                       # HF's linear schedule, ~9.4K steps on MetaMathQA); 0 = at --steps
    betas: tuple = (0.9, 0.99)         # [0, 1) AdamW betas (O)
    weight_decay: float = 0.1          # [0, inf) AdamW weight decay (O)
    grad_clip: float = 0.2             # (0, inf) max global grad norm (O)
    warmup: int = 50                   # [0, inf) linear lr warmup, optimizer steps (O)
    correct_weight: float = 3.0        # [0, inf) correctness reward (O)
    format_weight: float = 1.0         # [0, inf) scale of reward.format_reward (O: 0.125 per tag + 0.25 for \boxed)
    reward_rule: str = "official"      # {official|lenient} correctness: O's first \boxed | eval.py's extraction
    lora_rank: int = 128               # [0, inf) LoRA rank on the block projections (O: 128); 0 = full fine-tuning
    lora_alpha: float = 64.0           # (0, inf) LoRA scale alpha / rank (O: 64)
    lora_dropout: float = 0.05         # [0, 1) dropout on the adapter's input (O)
    lora_targets: str = "q_proj,k_proj,v_proj,up_proj"  # adapted projections (O's peft list, matched on LLaDA)
    bf16: bool = True                  # on: bf16 autocast on GPU (O); off: fp32. Ignored on CPU
    grad_ckpt: bool = True             # on: activation checkpointing per block (needed at 8B); off: none
    seed: int = 3                      # [0, inf) data order, rollouts, hints, mask seeds (O: 3)
    save_every: int = 100              # [0, inf) optimizer steps between checkpoints (0 = none but the last)
    save_last: str = "full"            # {full|model|off} at the end: step-N (resumable) | out_dir/final | none
    eval_every: int = 0                # [0, inf) optimizer steps between evaluations; 0 = only at the end
    eval_limit: int = 200              # [0, inf) test problems per evaluation; 0 = no evaluation
    eval_start: bool = True            # on: also evaluate the initial policy before the first step; off: not
    resume: bool = False               # on: continue from out_dir/latest (if any); off: start fresh
    keep_last: int = 3                 # [0, inf) step-N checkpoints kept in out_dir, the newest (0 = all)
    max_bad_steps: int = 3             # [1, inf) non-finite steps are skipped; this many in a row stop the run
    dist_timeout: int = 1800           # [1, inf) seconds a collective may wait (a dead or hung rank) before all fail


# `python igpo.py` = the embedded task on a CPU (lr chosen on val: experiments/rl_settings.py); `--preset paper` =
# the paper's run.
TASK_DEFAULT_MODEL = "checkpoints/task-sft"  # committed; `python sft.py` makes it when missing (only this path)
PRESETS = {
    "task": dict(model=TASK_DEFAULT_MODEL, data="task", out_dir="runs/igpo-task", steps=40, prompts_per_step=16,
                 micro_batch=128, gen_length=data.TASK_SAMPLING["gen_length"], mu=2,
                 block_length=data.TASK_SAMPLING["block_length"], diffusion_steps=data.TASK_SAMPLING["steps"],
                 temperature=data.TASK_SAMPLING["temperature"], chunk=(2, 4), reserve=data.TASK_HINT_RESERVE,
                 lr=3e-4, warmup=5, grad_clip=1.0, grad_ckpt=False, save_every=40, eval_every=0,
                 eval_limit=500, ratio="token", loss_norm="token", lr_epochs=0, lora_rank=0, seed=0),
    "paper": dict(),
}
# The official run's value of every flag it sets (facebookresearch/igpo run_igpo.sh + train.yaml; --help shows them)
OFFICIAL = dict(data="metamath", prompts_per_step=64, G=8, micro_batch=8, max_prompt=600, gen_length=256,
                block_length=32, diffusion_steps=128, temperature=1.2, eta=(0.2, 0.6), chunk=(5, 10), lam=0.5,
                tau=0.2, stretch=True, rechunk=True, reserve=30, reveal_last=True, mu=4, eps=0.2, beta=0.01,
                ratio="sequence_all", loss_norm="group", logp="d1", p_mask_prompt=0.0, post_eos=True, lr=5e-7,
                lr_epochs=10.0, betas=(0.9, 0.99), weight_decay=0.1, grad_clip=0.2, warmup=50, correct_weight=3.0,
                format_weight=1.0, reward_rule="official", lora_rank=128, lora_alpha=64.0, lora_dropout=0.05,
                bf16=True, seed=3, save_every=96)


@dataclass
class Batch:
    """One rollout batch on this rank: everything the μ updates and the metrics need. B = prompts x G rows."""
    idx: int                      # rollout batch index (seeds the log-prob masks of its μ iterations)
    prompt: torch.Tensor          # (B, P) left-padded prompt ids
    attn: torch.Tensor            # (B, P) prompt key-padding mask
    comp: torch.Tensor            # (B, L) completions, wrong ones replaced by verified inpainted ones
    order: torch.Tensor           # (B, L) sampler step at which each token was committed (-1: hint)
    correct: torch.Tensor         # (B,) correctness reward of comp
    reward: torch.Tensor          # (B,) total reward of comp (correctness + format)
    correct_policy: torch.Tensor  # (B,) correctness of the on-policy rollouts, before any replacement
    hint: torch.Tensor            # (B, L) bool: hint positions of replaced rows
    replaced: torch.Tensor        # (B,) bool: the row is an inpainted rollout
    adv: torch.Tensor = None      # (B,) group advantages
    lmask: torch.Tensor = None    # (B, L) bool: tokens in the loss before the entropy filter
    old: list = None              # μ x (B, L) old-policy log-probs
    ent: list = None              # μ x (B, L) old-policy entropies
    ref_logp: list = None         # μ x (B, L) reference-policy log-probs, or None when beta = 0


# ------------------------------------------------------------------------------------- 1. roll out and reward

def roll_out(policy, tok, items, messages, cfg, batch_idx, first, device):
    """G completions per prompt and their rewards: a Batch without advantages and log-probs yet. `first` is the
    global index of this rank's first prompt (seeds use global indices, so no draw depends on the world size)."""
    G = cfg.G
    convs = [messages(it["question"]) for it in items for _ in range(G)]
    prompt, attn = M.encode_chat(tok, convs, device=device)
    if cfg.max_prompt and prompt.shape[1] > cfg.max_prompt:  # O: left truncation (prompts are left-padded)
        prompt, attn = prompt[:, -cfg.max_prompt:], attn[:, -cfg.max_prompt:]
    seeds = [launch.seed(cfg.seed, "rollout", batch_idx, first * G + r) for r in range(len(convs))]
    comp, order = sample_rows(policy, prompt, attn, cfg, seeds)                             # (B, L) each
    correct, total = rewards(tok, comp.cpu(), [it["answer"] for it in items for _ in range(G)], cfg)
    no = torch.zeros_like(comp, dtype=torch.bool)
    return Batch(idx=batch_idx, prompt=prompt, attn=attn, comp=comp, order=order, correct=correct, reward=total,
                 correct_policy=correct.clone(), hint=no, replaced=torch.zeros(len(comp), dtype=torch.bool))


def sample_rows(policy, prompt_ids, prompt_attn, cfg, seeds, hints=None):
    """One completion per row and the step at which each token was committed, (B, L) each; each row has its own
    generator seed, so a rollout is reproducible."""
    out, order = [], []
    for k in range(0, len(prompt_ids), cfg.micro_batch):
        sl = slice(k, k + cfg.micro_batch)
        gens = [torch.Generator(prompt_ids.device).manual_seed(s) for s in seeds[sl]]
        x, steps = sample.generate(policy, prompt_ids[sl], attention_mask=prompt_attn[sl], gen_length=cfg.gen_length,
                                   block_length=cfg.block_length, steps=cfg.diffusion_steps,
                                   temperature=cfg.temperature, hints=None if hints is None else hints[sl],
                                   generator=gens, return_steps=True, early_exit=not cfg.post_eos,
                                   threshold=cfg.fast_threshold or None, cache=cfg.fast_cache or None,
                                   lockstep=launch.lockstep(prompt_ids.device))
        out.append(x[:, prompt_ids.shape[1]:])
        order.append(steps)
    return torch.cat(out), torch.cat(order)


def rewards(tok, completions, golds, cfg):
    """(correctness (B,), total reward (B,)) of completion ids (B, L) against gold answers."""
    texts = [tok.decode(c if cfg.post_eos else sample.until_stop(c, {tok.eos_token_id}), skip_special_tokens=True)
             for c in completions]  # O (--post_eos on) decodes all gen_length tokens
    correct = torch.tensor([reward.correctness_reward(t, g, weight=cfg.correct_weight, rule=cfg.reward_rule)
                            for t, g in zip(texts, golds)])
    fmt = torch.tensor([reward.format_reward(t) for t in texts])
    return correct, correct + cfg.format_weight * fmt


# -------------------------------------------------------------------------- 2. rescue all-wrong groups (IGPO)

def all_wrong(correct, G):
    """(groups,) bool: every correctness reward of the group is 0 (the format reward is ignored)."""
    return (correct.view(-1, G) == 0).all(1)


def rescue(policy, tok, items, b, cfg, first):
    """Algorithm 1's inpainting step. Every all-wrong group is re-sampled G times with hints from its reference
    trace (inpaint.py; --rescue resample: without hints), the new rollouts are verified, and up to ⌊λG⌋ correct
    ones are chosen. Returns the
    replacement rows: (rows of b to overwrite (R,), completions (R, L), commit steps (R, L), correctness (R,),
    reward (R,), hint mask (R, L)). Called on every rank, also with no all-wrong group: FSDP needs every rank in every forward."""
    G = cfg.G
    groups = [gi for gi in all_wrong(b.correct, G).nonzero().squeeze(1).tolist() if has_trace(items[gi])]  # IGPO acts
    hinted = inpaint_groups(policy, tok, [(gi, items[gi]) for gi in groups], b.prompt, b.attn, cfg, b.idx, first)
    hinted_correct = hinted[2]  # hinted = (completions, commit steps, correctness, reward, hint mask)
    rows, src = [], []
    for k, gi in enumerate(groups):
        new_correct = hinted_correct[k * G:(k + 1) * G]
        gen = torch.Generator().manual_seed(launch.seed(cfg.seed, "pick", b.idx, first + gi))
        pick = pick_replacements(new_correct, cfg.lam, gen)                                 # (K,)
        rows += range(gi * G, gi * G + len(pick))  # all originals are wrong: overwrite the first K of the group
        src += (k * G + pick).tolist()
    rows, src = torch.tensor(rows, dtype=torch.long), torch.tensor(src, dtype=torch.long)
    return (rows, *[t[src] for t in hinted])


def has_trace(item):
    """Whether an item has a reference trace to take hints from (AMC, question/answer-only JSONL rows have none)."""
    return bool(item.get("response") or item.get("solution"))


def pick_replacements(new_correct, lam, gen):
    """Indices of K = min(#correct inpainted, ⌊λG⌋) verified-correct inpainted rollouts, drawn at random (O)."""
    ok = (new_correct > 0).nonzero().squeeze(1)
    ok = ok[torch.randperm(len(ok), generator=gen)]
    return ok[:min(len(ok), math.floor(lam * len(new_correct)))]


def inpaint_groups(policy, tok, groups, prompt_ids, prompt_attn, cfg, batch_idx, first):
    """G hinted rollouts for each (local group index, item) in `groups`: (completions (nG, L), commit steps (nG, L),
    correctness (nG,), total reward (nG,), hint mask (nG, L)). Seeds use the global group index (first + local). Every rank samples
    the same number of rows, padding with discarded hint-free rows."""
    G, L, mask_id = cfg.G, cfg.gen_length, policy.config.mask_token_id
    hints, masks, seeds, golds = [], [], [], []
    for gi, item in groups:
        h = torch.full((G, L), mask_id)  # --rescue resample: nothing revealed (the sample-matched baseline)
        if cfg.rescue == "hints":
            trace, answer_start = inpaint.reference_trace(tok, data.format_response(item), cfg.withhold == "step")
            gen = torch.Generator().manual_seed(launch.seed(cfg.seed, "hints", batch_idx, first + gi))
            h, _, _ = inpaint.build_hints(trace, G, L, mask_id, gen=gen, answer_start=answer_start,
                                          s_min=cfg.chunk[0], s_max=cfg.chunk[1], eta_low=cfg.eta[0],
                                          eta_high=cfg.eta[1], stretch=cfg.stretch, reserve=cfg.reserve,
                                          reveal_last=cfg.reveal_last, rechunk=cfg.rechunk)
        hints.append(h)
        masks.append(h != mask_id)
        seeds += [launch.seed(cfg.seed, "inpaint", batch_idx, (first + gi) * G + r) for r in range(G)]
        golds += [item["answer"]] * G
    n = len(groups) * G
    n_max = launch.all_max(n, prompt_ids.device)
    no_rows = torch.zeros(0, L, dtype=torch.long)
    empty = (no_rows, no_rows, torch.zeros(0), torch.zeros(0), torch.zeros(0, L, dtype=torch.bool))
    if n_max == 0:
        return empty
    rows = torch.cat([torch.arange(gi * G, gi * G + G) for gi, _ in groups] + [torch.zeros(n_max - n).long()])
    hints = torch.cat(hints + [torch.full((n_max - n, L), mask_id)]).to(prompt_ids.device)
    comp, order = sample_rows(policy, prompt_ids[rows], prompt_attn[rows], cfg, seeds + [0] * (n_max - n), hints)
    if n == 0:
        return empty
    correct, total = rewards(tok, comp[:n].cpu(), golds, cfg)
    return comp[:n], order[:n], correct, total, torch.cat(masks).to(comp.device)


# ----------------------------------------------------------------------------------------------- 3. advantages

def group_advantages(total, G):
    """A_i = r_i - mean_j r_j within each group of G consecutive rows (P, O: no std division)."""
    r = total.view(-1, G)
    return (r - r.mean(1, keepdim=True)).view(-1)


# ----------------------------------------------------------------------------------------- 4. old/ref log-probs

def old_logps(policy, ref, b, cfg):
    """Per iteration j of μ: old-policy log-probs and entropies, and reference log-probs, each (B, L), from the
    estimator inputs that the update of iteration j will use too (the same for every j unless d1 masks prompts)."""
    old, ent, refs = [], [], [] if cfg.beta > 0 else None
    with torch.no_grad():
        for j in range(cfg.mu):
            if j > 0 and not (cfg.logp == "d1" and cfg.p_mask_prompt > 0):  # same inputs as j = 0
                old.append(old[0])
                ent.append(ent[0])
                if refs is not None:
                    refs.append(refs[0])
                continue
            inputs, attn = estimator_inputs(b, j, cfg, policy.config.mask_token_id)
            parts = [estimate_logps(policy, inputs, attn, b.comp, slice(k, k + cfg.micro_batch), True)
                     for k in range(0, len(b.comp), cfg.micro_batch)]
            old.append(torch.cat([p[0] for p in parts]))
            ent.append(torch.cat([p[1] for p in parts]))
            if refs is not None:
                refs.append(reference_logps(policy, ref, inputs, attn, b.comp, cfg.micro_batch))
    return old, ent, refs


def reference_logps(policy, ref, inputs, attn, comp, micro_batch):
    """Reference log-probs (B, L): the frozen copy, or (LoRA) the policy with its adapter off."""
    net = ref if ref is not None else policy
    with contextlib.ExitStack() as stack:
        if ref is None:
            stack.enter_context(M.lora_disabled(policy))
        return torch.cat([estimate_logps(net, inputs, attn, comp, slice(k, k + micro_batch))[0]
                          for k in range(0, len(comp), micro_batch)])


def estimator_inputs(b, j, cfg, mask_id):
    """The log-prob estimator's forward inputs for iteration j: ([(input (B, P + L), scored (B, L) bool)],
    key-padding mask (B, P + L)); every completion token is scored in exactly one input.
    d1: one input, the completion fully masked (prompt tokens masked with p_mask_prompt under the seed of j).
    trajectory: per group of `logp_group` sampler steps, the canvas before the group's first step (earlier
    commits and hints visible, the rest masked), scoring the tokens committed in the group; hint tokens, which the
    sampler never decided, are scored in a fully masked canvas. With one step per group this is the likelihood of
    the sampler's own token choices (not of its choice of positions)."""
    attn = torch.cat([b.attn, torch.ones_like(b.comp)], dim=1)
    if cfg.logp == "d1":
        x = masked_input(b.prompt, b.comp, mask_id, cfg.p_mask_prompt, launch.seed(cfg.seed, "mask", b.idx, j))
        return [(x, torch.ones_like(b.comp, dtype=torch.bool))], attn
    assert cfg.logp == "trajectory", cfg.logp
    group = torch.where(b.order < 0, -1, torch.div(b.order, cfg.logp_group, rounding_mode="floor"))  # (B, L)
    inputs = []
    for k in group.unique().tolist():
        start = -1 if k < 0 else k * cfg.logp_group
        canvas = torch.where(b.order < start, b.comp, mask_id)                                   # (B, L)
        inputs.append((torch.cat([b.prompt, canvas], dim=1), group == k))
    return inputs, attn


def estimate_logps(net, inputs, attn, comp, rows, with_entropy=False):
    """(log π (R, L), entropy (R, L) or None) of comp[rows]: each token read off the input that scores it."""
    logp = torch.zeros(comp[rows].shape, device=comp.device)
    ent = torch.zeros_like(logp) if with_entropy else None
    for x, scored in inputs:
        if not scored[rows].any():
            continue
        out = token_logps(net, x[rows], attn[rows], comp[rows], with_entropy)
        lp, en = out if with_entropy else (out, None)
        logp = logp + torch.where(scored[rows], lp, 0.0)
        if with_entropy:
            ent = ent + torch.where(scored[rows], en, 0.0)
    return logp, ent


def masked_input(prompt_ids, completions, mask_id, p_mask_prompt, seed):
    """The log-prob forward's input (B, P + L): completion all masked, prompt tokens masked with p_mask_prompt
    under `seed` (one draw per row position, shared by old/ref/current policy within an iteration)."""
    prompt = prompt_ids
    if p_mask_prompt > 0:
        g = torch.Generator().manual_seed(seed)
        drop = torch.rand(prompt_ids.shape, generator=g) < p_mask_prompt
        prompt = torch.where(drop.to(prompt_ids.device), mask_id, prompt_ids)
    return torch.cat([prompt, torch.full_like(completions, mask_id)], dim=1)


def token_logps(net, x, attn, completions, with_entropy=False):
    """Per-token log π(y) (B, L) (= -CE at completion positions) and optionally the entropy (B, L), from one
    forward over the distinct rows of x only."""
    L = completions.shape[1]
    uniq, inv = torch.unique(torch.cat([x, attn], dim=1), dim=0, return_inverse=True)
    logits = net(uniq[:, :x.shape[1]], attention_mask=uniq[:, x.shape[1]:])[:, -L:].float()  # (U, L, V)
    lse = logits.logsumexp(-1)                                                              # (U, L)
    logp = logits[inv[:, None], torch.arange(L, device=x.device)[None, :], completions] - lse[inv]  # (B, L)
    if not with_entropy:
        return logp
    ent = lse - (logits.softmax(-1) * logits).sum(-1)                                     # (U, L)
    return logp, ent[inv]


def loss_mask(completions, eos_id, post_eos):
    """(B, L) bool: tokens up to and including the first EOS (P), or all of them (`--post_eos on`, O)."""
    if post_eos:
        return torch.ones_like(completions, dtype=torch.bool)
    is_eos = (completions == eos_id).int()
    return (is_eos.cumsum(1) - is_eos) == 0  # no EOS strictly before this position


# ----------------------------------------------------------------------------------------- one rollout batch

def make_batch(policy, ref, tok, items, messages, cfg, batch_idx, first, device, times):
    """The four phases of the module docstring, in order; `times` collects each phase's seconds."""
    with timed(times, "t_rollout"):
        b = roll_out(policy, tok, items, messages, cfg, batch_idx, first, device)           # 1
    with timed(times, "t_inpaint"):
        if cfg.rescue != "off":
            rows, comp, order, correct, total, hint = rescue(policy, tok, items, b, cfg, first)  # 2
            b.comp[rows], b.order[rows], b.correct[rows], b.reward[rows] = comp, order, correct, total
            b.hint[rows] = hint
            b.replaced[rows] = True
    b.adv = group_advantages(b.reward, cfg.G).to(device)                                   # 3
    b.lmask = loss_mask(b.comp, tok.eos_token_id, cfg.post_eos)
    with timed(times, "t_logp"):
        b.old, b.ent, b.ref_logp = old_logps(policy, ref, b, cfg)                               # 4
    return b


# --------------------------------------------------------------------------------------------- the update

def update(policy, b, j, cfg, world):
    """Forward/backward of the loss of iteration j over this rank's micro-batches; gradients accumulate. The
    optimizer step is the caller's. Returns loss-side statistics as (sum, count) pairs."""
    keep = b.lmask & inpaint.entropy_filter(b.ent[j], b.hint & b.lmask, cfg.tau)  # hint tokens: top-tau by entropy
    n_total = launch.all_sum(keep.sum().float()).clamp(min=1)  # kept tokens of the global batch
    if cfg.loss_norm == "group":  # O: per row, its group's kept tokens x the number of groups of the global batch
        per_group = keep.view(-1, cfg.G, keep.shape[1]).sum((1, 2)).float().clamp(min=1)            # (B / G,)
        n_total = per_group.repeat_interleave(cfg.G) * launch.all_sum(torch.tensor(len(per_group) * 1.0))  # (B,)
    inputs, attn = estimator_inputs(b, j, cfg, policy.config.mask_token_id)
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.bf16 and attn.device.type == "cuda")
    sums = dict(loss=0.0, kl=0.0, clip_frac=0.0)
    B, mb = len(b.comp), cfg.micro_batch
    for k in range(0, B, mb):
        sl = slice(k, k + mb)
        if world > 1:
            policy.set_requires_gradient_sync(k + mb >= B)  # reduce-scatter once per step
        with amp:
            logp = estimate_logps(policy, inputs, attn, b.comp, sl)[0]
        ref_logp = None if b.ref_logp is None else b.ref_logp[j][sl]
        denom = n_total if n_total.dim() == 0 else n_total[sl]
        loss, st = grpo_loss(logp, b.old[j][sl], ref_logp, b.adv[sl], keep[sl], denom, cfg.eps, cfg.beta, cfg.ratio)
        (loss * world).backward()  # FSDP averages gradients over ranks; the loss is already a global mean
        sums["loss"] += loss.item()
        sums["kl"] += st["kl"]
        sums["clip_frac"] += st["clipped"]
    kept = float(keep.sum())
    return dict(loss=(sums["loss"], 1 / world), kl=(sums["kl"], kept), clip_frac=(sums["clip_frac"], kept))


def grpo_loss(logp, old_logp, ref_logp, adv, keep, n_total, eps, beta, ratio="token"):
    """Sum over kept tokens of the clipped surrogate + k3 KL, divided by n_total: a scalar (the kept tokens of the
    global batch, --loss_norm token) or (B,) per row (--loss_norm group: its group's kept tokens x the number of
    groups). logp/old_logp/ref_logp (B, L), adv (B,), keep (B, L) bool. Returns (loss, stats)."""
    log_ratio = logp - old_logp
    if ratio == "sequence":  # GSPO: s_i = exp(mean_t log ratio) over the kept tokens, one ratio per sequence
        n_i = keep.sum(1, keepdim=True).clamp(min=1)
        log_ratio = ((log_ratio * keep).sum(1, keepdim=True) / n_i).expand_as(logp)
    elif ratio == "sequence_all":  # O's GSPO: the mean runs over all L positions, dropped tokens get gradient too
        log_ratio = log_ratio.mean(1, keepdim=True).expand_as(logp)
    else:
        assert ratio == "token", ratio
    rho = log_ratio.exp()
    a = adv[:, None]
    surrogate = torch.min(rho * a, rho.clamp(1 - eps, 1 + eps) * a)                        # Eq. (3), per token
    per_token = -surrogate
    kl = torch.zeros_like(logp)
    if beta > 0:
        d = ref_logp - logp
        kl = d.exp() - d - 1                                                                # k3 estimator, Eq. (4)
        per_token = per_token + beta * kl
    if n_total.dim() == 0:
        loss = (per_token * keep).sum() / n_total                                           # token mean
    else:
        loss = ((per_token * keep).sum(1) / n_total).sum()  # O: each group's token mean, averaged over groups
    clipped = ((rho < 1 - eps) & (a < 0)) | ((rho > 1 + eps) & (a > 0))
    return loss, dict(kl=(kl * keep).sum().item(), clipped=(clipped & keep).sum().item())


# ------------------------------------------------------------------------------------------------ training

def batch_items(items, batch_idx, cfg, rank, world):
    """This rank's prompts of rollout batch `batch_idx` and the global position of the first one: consecutive
    global slices of the seeded data order, each rank a contiguous share (all G rollouts of a prompt stay on one
    rank)."""
    per_rank = cfg.prompts_per_step // world
    first = batch_idx * cfg.prompts_per_step + rank * per_rank
    return [items[i] for i in launch.data_order(len(items), cfg.seed, range(first, first + per_rank))], first


def build(cfg, device, ckpt=None):
    """(policy, reference or None, tokenizer, run state): the policy from cfg.model (resumed: from checkpoint ckpt;
    LoRA: cfg.model + the saved adapter), and a frozen copy of cfg.model when beta > 0 under full fine-tuning (with
    LoRA the reference is the policy with its adapter off: no copy). Only the task preset's own default path is
    trained on the fly (by sft.py) when missing."""
    if not os.path.exists(os.path.join(cfg.model, "config.json")) and cfg.model == TASK_DEFAULT_MODEL:
        if dist.is_initialized():
            raise SystemExit(f"{cfg.model} is missing: run `python sft.py` once before torchrun")
        print(f"{cfg.model} is missing: training it with sft.py's task preset first")
        sft.train(sft.parse_config(["--out_dir", cfg.model]))
    state = launch.resume_state(ckpt, cfg.model)  # refuses a --model whose weights changed since the checkpoint
    policy, tok = launch.load_model(ckpt if ckpt and not cfg.lora_rank else cfg.model, device=device)
    if ckpt and cfg.lora_rank:
        M.load_adapter(policy, os.path.join(ckpt, "adapter"))
    else:
        M.add_lora(policy, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, tuple(cfg.lora_targets.split(",")))
    ref = None
    if cfg.beta > 0 and not cfg.lora_rank:
        ref, _ = launch.load_model(cfg.model, device=device)
        ref.requires_grad_(False)
    return policy, ref, tok, state


def check_config(cfg, world):
    """Flag combinations that cannot run are usage errors at start-up, before any model is loaded."""
    blocks = max(1, cfg.gen_length // cfg.block_length)
    launch.usage_error([msg for bad, msg in [
        (cfg.prompts_per_step % world, f"--prompts_per_step {cfg.prompts_per_step} not divisible by world {world}"),
        (cfg.steps % cfg.mu, f"--steps {cfg.steps} not a multiple of --mu {cfg.mu} (a rollout batch serves mu steps)"),
        (cfg.save_every % cfg.mu, f"--save_every {cfg.save_every} not a multiple of --mu {cfg.mu} (checkpoints fall "
                                  f"between rollout batches)"),
        (cfg.gen_length % cfg.block_length, f"--gen_length {cfg.gen_length} not a multiple of --block_length"),
        (cfg.diffusion_steps % blocks, f"--diffusion_steps {cfg.diffusion_steps} not divisible by {blocks} blocks"),
        (len(cfg.eta) != 2 or cfg.eta[0] > cfg.eta[1], f"--eta {cfg.eta}: two values lo,hi with lo <= hi"),
        (len(cfg.chunk) != 2 or cfg.chunk[0] > cfg.chunk[1], f"--chunk {cfg.chunk}: two sizes lo,hi with lo <= hi")]
        if bad])


def train(cfg):
    rank, world, device = launch.setup_dist(cfg.dist_timeout)
    log = print if rank == 0 else (lambda *a, **k: None)
    check_config(cfg, world)
    try:  # bad data fails here, naming file, line and field, before a model is loaded
        items, messages = data.rl_prompts(cfg.data, cfg.max_prompts)
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(f"--data {cfg.data}: {e}") from None
    log(json.dumps(asdict(cfg), indent=1))
    horizon = math.ceil(cfg.lr_epochs * len(items) * cfg.mu / cfg.prompts_per_step) if cfg.lr_epochs else cfg.steps
    log(f"world {world}: {cfg.prompts_per_step // world} prompts x G={cfg.G} = {cfg.prompts_per_step // world * cfg.G}"
        f" rollouts per rank, global {cfg.prompts_per_step * cfg.G}; {cfg.steps // cfg.mu} rollout batches"
        f" x mu={cfg.mu}; the lr decays to 0 at step {horizon}")
    torch.manual_seed(cfg.seed)
    ckpt = launch.latest_checkpoint(cfg.out_dir) if cfg.resume else None
    policy, ref, tok, state = build(cfg, device, ckpt)
    policy.gradient_checkpointing = cfg.grad_ckpt
    policy, ref = launch.fsdp(policy, device), ref and launch.fsdp(ref, device)
    params = [p for p in policy.parameters() if p.requires_grad]  # LoRA: the adapters only
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    if ckpt:
        launch.load_optimizer(policy, opt, ckpt)
        log(f"resumed from {ckpt} at step {state['step']}")
    os.makedirs(cfg.out_dir, exist_ok=True)
    if rank == 0:
        with open(os.path.join(cfg.out_dir, "config.json"), "w") as f:
            json.dump(asdict(cfg), f, indent=1)
        launch.keep_rows(os.path.join(cfg.out_dir, "metrics.jsonl"), state["step"])
    metrics_f = open(os.path.join(cfg.out_dir, "metrics.jsonl"), "a") if rank == 0 else None
    start = res = None
    if cfg.eval_limit and cfg.eval_start and not state["step"]:
        start = run_eval(policy, tok, cfg, 0, metrics_f, log)
    launch.catch_sigterm()
    accs = []  # on-policy accuracy of each rollout batch, for the closing summary
    bar = tqdm(range(state["step"], cfg.steps), disable=rank != 0, desc="grpo" if cfg.rescue == "off" else "igpo",
               initial=state["step"], total=cfg.steps)
    for step in bar:
        stats, times = {}, {}
        if step % cfg.mu == 0:
            policy.eval()
            mine, first = batch_items(items, step // cfg.mu, cfg, rank, world)
            b = make_batch(policy, ref, tok, mine, messages, cfg, step // cfg.mu, first, device, times)
            stats = batch_stats(b, cfg)
            wrong = all_wrong(b.correct_policy, cfg.G).tolist()
            stats["no_trace"] = (float(sum(w and not has_trace(it) for w, it in zip(wrong, mine))), len(mine))
        policy.train()
        torch.manual_seed(launch.seed(cfg.seed, "dropout", step, rank))  # LoRA dropout: a function of the step
        lr = launch.lr_at(step, horizon, cfg.lr, cfg.warmup)  # linear warmup and decay to 0 at `horizon` (O: HF's)
        for g in opt.param_groups:
            g["lr"] = lr
        with timed(times, "t_update"):
            stats.update(update(policy, b, step % cfg.mu, cfg, world))
            gnorm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
            gnorm = float(gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm)
            row = summarize(stats, times, world)
            ok = launch.step_ok(row.get("loss", 0.0), gnorm, state, cfg.max_bad_steps)
            if ok:  # a non-finite step is skipped: no update
                opt.step()
            opt.zero_grad(set_to_none=True)
        row.update(step=step + 1, lr=lr, grad_norm=gnorm, skipped=float(not ok),
                   t_update=times["t_update"])
        if "acc" in row:
            accs.append(row["acc"])
        if rank == 0:
            metrics_f.write(json.dumps(row) + "\n")
            metrics_f.flush()
            bar.set_postfix({k: f"{row[k]:.3g}" for k in SHOWN if k in row})
        last = step + 1 == cfg.steps
        if cfg.eval_limit and ((cfg.eval_every and (step + 1) % cfg.eval_every == 0) or last):
            res = run_eval(policy, tok, cfg, step + 1, metrics_f, log)  # before the save: a resume redoes both
        stop = launch.stop_requested(device) and (step + 1) % cfg.mu == 0  # SIGTERM: at the end of the batch
        state["step"] = step + 1
        files = {"igpo_config.json": asdict(cfg), "trainer_state.json": state}  # atomic; `latest` names it last
        if (cfg.save_every and (step + 1) % cfg.save_every == 0) or stop or (last and cfg.save_last == "full"):
            launch.save_checkpoint(policy, tok, os.path.join(cfg.out_dir, f"step-{step + 1}"), files, opt, cfg.keep_last)
        elif last and cfg.save_last == "model":  # the policy alone, not resumable, not named by `latest`
            launch.save_checkpoint(policy, tok, os.path.join(cfg.out_dir, "final"), files)
        if stop:
            log(f"SIGTERM: stopped after step {step + 1}, checkpoint saved; --resume on continues from it")
            break
    q = max(1, len(accs) // 4)
    log(f"on-policy accuracy (T = {cfg.temperature}): first quarter of the run {sum(accs[:q]) / q:.3f} -> last "
        f"quarter {sum(accs[-q:]) / q:.3f}")
    if start is not None and cfg.eval_limit:
        log(f"test: start {E.fmt_acc(start)} -> after {cfg.steps} steps {E.fmt_acc(res)}")
    if dist.is_initialized():
        dist.destroy_process_group()


def run_eval(policy, tok, cfg, step, metrics_f, log):
    """Greedy test accuracy (eval.py's protocol: the task's test split, else GSM8K test), logged and appended to
    metrics.jsonl; per-problem rows go to out_dir/eval/step-N.jsonl."""
    policy.eval()
    path = os.path.join(cfg.out_dir, "eval", f"step-{step}.jsonl")
    res = E.evaluate_fresh(policy, tok, cfg.data if cfg.data.startswith("task") else "gsm8k", cfg.eval_limit, path,
                           batch_size=cfg.micro_batch, seed=cfg.seed)
    log(f"step {step}: test {E.fmt_acc(res)}")
    if metrics_f is not None:
        metrics_f.write(json.dumps(dict(step=step, eval=res)) + "\n")
        metrics_f.flush()
    return res


# ------------------------------------------------------------------------------------ metrics (kept out of the
# algorithm above): statistics are (sum, count) pairs, summed over ranks, reported as sum / count.

SHOWN = ("acc", "all_wrong_before", "all_wrong_after", "loss")  # on the progress bar


def batch_stats(b, cfg):
    """The rollout batch's statistics as (sum, count) pairs (the README's table reports these)."""
    B, groups = len(b.comp), len(b.comp) // cfg.G
    wrong_before = all_wrong(b.correct_policy, cfg.G)
    gen, hint = ~b.hint & b.lmask, b.hint & b.lmask
    ent = b.ent[0]
    fmt = (b.reward - b.correct) / max(cfg.format_weight, 1e-9)
    return dict(acc=(float((b.correct_policy > 0).sum()), B), acc_after=(float((b.correct > 0).sum()), B),
                reward=(float(b.reward.sum()), B), format=(float(fmt.sum()), B),
                all_wrong_before=(float(wrong_before.sum()), groups),
                all_wrong_after=(float(all_wrong(b.correct, cfg.G).sum()), groups),
                rescued=(float(b.replaced.view(-1, cfg.G).any(1).sum()), float(wrong_before.sum())),
                replaced=(float(b.replaced.sum()), B),
                spent=(B + (cfg.G * float(wrong_before.sum()) if cfg.rescue != "off" else 0.0), B),  # rollouts sampled
                hint_frac=(float(b.hint.sum()), float(b.lmask.sum())), comp_len=(float(b.lmask.sum()), B),
                ent_hint=(float((ent * hint).sum()), float(hint.sum())),
                ent_gen=(float((ent * gen).sum()), float(gen.sum())))


def summarize(stats, times, world):
    """One metrics row: every (sum, count) summed over ranks and divided; times are the slowest rank's."""
    keys = sorted(stats)
    t = torch.tensor([stats[k] for k in keys], dtype=torch.float64).view(-1, 2)
    tk = sorted(times)
    tt = torch.tensor([times[k] for k in tk], dtype=torch.float64)
    if world > 1:
        dist.all_reduce(t)
        dist.all_reduce(tt, op=dist.ReduceOp.MAX)
    row = {k: s / c for k, (s, c) in zip(keys, t.tolist()) if c > 0}
    row.update(zip(tk, tt.tolist()))
    return row


@contextlib.contextmanager
def timed(times, name):
    t0 = time.time()
    yield
    times[name] = times.get(name, 0.0) + time.time() - t0


if __name__ == "__main__":
    train(launch.parse_config(Config, PRESETS, doc=__doc__, official=OFFICIAL))
    launch.exit_worker()
