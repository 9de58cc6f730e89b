"""IGPO: Inpainting-Guided Policy Optimization for masked diffusion LLMs (arXiv 2509.10396, Algorithm 1).

GRPO learns nothing from a group whose G rollouts are all wrong (zero advantages). IGPO re-samples it with chunks of
the reference trace fixed in the canvas (inpainting); up to ⌊λG⌋ rollouts that verify replace wrong ones. Hint tokens
are off-policy: only the top-τ by old-policy entropy stay in the loss (entropy filter). A rollout batch (make_batch):
  1. roll_out           G completions per prompt, rewarded (correctness + format)
  2. rescue             all_wrong groups -> inpaint_groups -> verify -> pick_replacements (--rescue hints, IGPO)
  3. group_advantages   A_i = r_i - mean_group(r) (P, O: no std division, also for GRPO)
  4. old_logps          old and reference log-probs, old entropies: per iteration j of μ, on the input the update
                        of j sees (d1's estimator, P and O: one forward, the completion masked, see estimator_inputs)
then μ optimizer steps of `update`: entropy filter (the `keep` mask) -> clipped surrogate + k3 KL (`grpo_loss`).

Behaves differently from the paper (P) or the official code (O); each flag's --help shows both values:
  --reveal_last  P: hints never contain the final answer. O always reveals the trace's last chunk, answer included.
  --post_eos     P: tokens after the first EOS are in neither the loss nor the reward's text. O keeps all gen_length.
  --stretch      P: hints sit at their index in the trace. O stretches their positions (inpaint.py).
  --logp         d1 (P, O) | trajectory: each token scored in the canvas the sampler committed it in (TraceRL).
  --reward_rule  official (O: the first \\boxed, none = 0; the paper preset) | lenient (eval.py's extraction).
  --loss_norm    group (O): the mean over groups of each one's kept-token mean | token: over the batch's kept tokens.
  --lr_epochs    O's lr decays linearly to 0 over its whole run, 10 epochs (~9.4K steps); 0 = over --steps.
  --max_prompt   O keeps the last 600 prompt tokens; 0 = no limit.
Declared, no flag: (1) O's instruction is a plain Python string: its model reads a backspace and "oxed" for \\boxed
(data.SYSTEM_PROMPT). (2) Hints: the trace in the response format up to its first \\boxed (O: "<reasoning>\\n" + the
raw MetaMathQA response, "#### N" and "The answer is: N" included). (3) Log-probs and entropies from fp32 logits (O:
bf16, entropies often tie; its topk keeps any one). (4) O's first update has lr 0 (HF's warmup), ours lr / warmup.
Same values up to float rounding: identical log-prob inputs (a prompt's rollouts when p_mask_prompt = 0) share one
forward; each rank samples as many inpainted rows as the busiest (FSDP's collectives line up). Seeds use global
indices (launch.seed): no draw depends on the world size, a checkpoint resumes every stream (--resume on).
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
    data: str = "metamath"             # prompts: metamath (O) | math | gsm8k | x.jsonl | task | task-<n>[b<k>]
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
    rescue: str = "hints"              # {hints|resample|off} all-wrong groups: IGPO | sample-matched: no hints | GRPO
    eta: tuple = (0.2, 0.6)            # [0, 1] hint ratio range lo,hi: eta ~ U[lo, hi] per hinted rollout (P, O)
    chunk: tuple = (5, 10)             # [1, inf) hint chunk sizes lo,hi in tokens, inclusive (O)
    lam: float = 0.5                   # [0, 1] replace at most floor(lam * G) wrong rollouts per group (O: 4 of 8)
    tau: float = 0.2                   # (0, 1] per row, keep the top max(1, ⌊τn⌋) of its n hint tokens by entropy
                                       # (P, O): at least 1: --tau 1e-9 leaves 1 hint token per hinted row in the loss
    stretch: bool = False              # on: O's stretched hint placement; off: P's placement at the trace index
    rechunk: bool = True               # on: each hinted rollout chunks the trace anew (O); off: once per group
    reserve: int = 30                  # [0, inf) last positions of the window never hinted (O)
    reveal_last: bool = False          # on: O, the trace's last chunk (the answer) is always shown; off: P, never
    withhold: str = "answer"           # {answer|step} hints hide the answer (P) | + the last reasoning line (ablation)
    mu: int = 4                        # [1, inf) inner updates per rollout batch (O: num_iterations)
    eps: float = 0.2                   # (0, 1) clip range of the ratio (P, O)
    beta: float = 0.01                 # [0, inf) k3 KL weight to the reference policy; 0 = no reference (O: 0.01)
    ratio: str = "sequence_all"        # {token|sequence|sequence_all} token | sequence (GSPO: mean over kept tokens) |
                                       # sequence_all (O's use_gspo: over all gen_length; dropped tokens get gradient)
    loss_norm: str = "group"           # {token|group} mean over the kept tokens: of the batch | of each group (O)
    logp: str = "d1"                   # {d1|trajectory} log-prob estimator (d1: P, O; see the docstring)
    logp_group: int = 1                # [1, inf) trajectory: sampler steps scored per forward (a block's = block TF)
    p_mask_prompt: float = 0.0         # [0, 1) prompt-token mask probability in the log-prob forward (d1 option)
    post_eos: bool = False             # on: O, tokens after the first EOS in the loss and reward; off: P, neither
    lr: float = 5e-7                   # [0, inf) AdamW peak lr, after a linear warmup, then linear decay (O)
    lr_epochs: float = 10.0            # [0, inf) epochs of prompts x mu until the lr is 0 (O: 10, HF); 0 = at --steps
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


TASK_DEFAULT_MODEL = "checkpoints/task-sft"  # committed; sft.py's task presets make it when missing (this path only)
PRESETS = {  # python igpo.py: the embedded task on a CPU (steps, lr, beta chosen on val: experiments/rl_settings.py); paper: P
    "task": dict(model=TASK_DEFAULT_MODEL, data="task", out_dir="runs/igpo-task", steps=160, prompts_per_step=16, mu=2,
                 micro_batch=128, gen_length=data.TASK_SAMPLING["gen_length"], chunk=(2, 4), lr=3e-4, warmup=5,
                 block_length=data.TASK_SAMPLING["block_length"], diffusion_steps=data.TASK_SAMPLING["steps"],
                 temperature=data.TASK_SAMPLING["temperature"], fast_threshold=data.TASK_SAMPLING["threshold"],
                 reserve=data.TASK_HINT_RESERVE, grad_clip=1.0, grad_ckpt=False, save_every=40, eval_every=0,
                 eval_limit=500, ratio="token", loss_norm="token", lr_epochs=0, lora_rank=0, seed=0, beta=0.1),
    "paper": dict(),
}
OFFICIAL = dict(  # the official run's flags (facebookresearch/igpo run_igpo.sh + train.yaml); --help shows them
    data="metamath", prompts_per_step=64, G=8, micro_batch=8, max_prompt=600, gen_length=256, block_length=32,
    diffusion_steps=128, temperature=1.2, eta=(0.2, 0.6), chunk=(5, 10), lam=0.5, tau=0.2, stretch=True, rechunk=True,
    reserve=30, reveal_last=True, mu=4, eps=0.2, beta=0.01, ratio="sequence_all", loss_norm="group", logp="d1",
    p_mask_prompt=0.0, post_eos=True, lr=5e-7, lr_epochs=10.0, betas=(0.9, 0.99), weight_decay=0.1, grad_clip=0.2,
    warmup=50, correct_weight=3.0, format_weight=1.0, reward_rule="official", lora_rank=128, lora_alpha=64.0,
    lora_dropout=0.05, bf16=True, seed=3, save_every=96)


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
    """G completions per prompt and their rewards: a Batch without advantages and log-probs (`first`: global index)."""
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
    """One completion per row and the step at which each token was committed, (B, L) each; one seed per row."""
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
    """Algorithm 1's inpainting step, on every rank (FSDP): all-wrong groups with a trace re-sampled G times, up to ⌊λG⌋
    verified picked. Returns (rows of b to overwrite, completions, commit steps, correctness, reward, hint mask)."""
    G = cfg.G
    groups = [gi for gi in all_wrong(b.correct, G).nonzero().squeeze(1).tolist() if has_trace(items[gi])]  # IGPO acts
    hinted = inpaint_groups(policy, tok, [(gi, items[gi]) for gi in groups], b.prompt, b.attn, cfg, b.idx, first)
    rows, src = [], []
    for k, gi in enumerate(groups):
        gen = torch.Generator().manual_seed(launch.seed(cfg.seed, "pick", b.idx, first + gi))
        pick = pick_replacements(hinted[2][k * G:(k + 1) * G], cfg.lam, gen)  # (K,) of the group's correctness
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
    """G hinted rollouts per (local group, item): (completions, steps (nG, L), correct, reward (nG,), hints (nG, L))."""
    G, L, mask_id = cfg.G, cfg.gen_length, policy.config.mask_token_id
    hints, seeds = [], []
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
        seeds += [launch.seed(cfg.seed, "inpaint", batch_idx, (first + gi) * G + r) for r in range(G)]
    n = len(groups) * G
    n_max = launch.all_max(n, prompt_ids.device)  # every rank samples n_max rows: the rest are discarded padding
    if n_max == 0:
        no = torch.zeros(0, L, dtype=torch.long, device=prompt_ids.device)  # make_batch writes it into b.comp
        return no, no, torch.zeros(0), torch.zeros(0), no.bool()
    rows = torch.cat([torch.arange(gi * G, gi * G + G) for gi, _ in groups] + [torch.zeros(n_max - n).long()])
    hints = torch.cat(hints + [torch.full((n_max - n, L), mask_id)]).to(prompt_ids.device)
    comp, order = sample_rows(policy, prompt_ids[rows], prompt_attn[rows], cfg, seeds + [0] * (n_max - n), hints)
    correct, total = rewards(tok, comp[:n].cpu(), [it["answer"] for _, it in groups for _ in range(G)], cfg)
    return comp[:n], order[:n], correct, total, hints[:n] != mask_id


# ----------------------------------------------------------------------------------------------- 3. advantages

def group_advantages(total, G):
    """A_i = r_i - mean_j r_j within each group of G consecutive rows (P, O: no std division)."""
    r = total.view(-1, G)
    return (r - r.mean(1, keepdim=True)).view(-1)


# ----------------------------------------------------------------------------------------- 4. old/ref log-probs

def old_logps(policy, ref, b, cfg):
    """Per iteration j of μ: old-policy log-probs and entropies, reference log-probs (B, L), from j's update inputs."""
    fresh = cfg.mu if cfg.logp == "d1" and cfg.p_mask_prompt > 0 else 1  # iterations with inputs of their own
    old, ent, refs = [], [], []
    with torch.no_grad():
        for j in range(fresh):
            inputs, attn = estimator_inputs(b, j, cfg, policy.config.mask_token_id)
            lp, en = zip(*[estimate_logps(policy, inputs, attn, b.comp, slice(k, k + cfg.micro_batch), True)
                           for k in range(0, len(b.comp), cfg.micro_batch)])
            old.append(torch.cat(lp))
            ent.append(torch.cat(en))
            if cfg.beta > 0:
                refs.append(reference_logps(policy, ref, inputs, attn, b.comp, cfg.micro_batch))
    pad = cfg.mu - fresh  # the other iterations see iteration 0's inputs: its values, not recomputed
    return old + old[:1] * pad, ent + ent[:1] * pad, refs + refs[:1] * pad if cfg.beta > 0 else None


def reference_logps(policy, ref, inputs, attn, comp, micro_batch):
    """Reference log-probs (B, L): the frozen copy, or (LoRA) the policy with its adapter off."""
    net = ref if ref is not None else policy
    with M.lora_disabled(policy) if ref is None else contextlib.nullcontext():
        return torch.cat([estimate_logps(net, inputs, attn, comp, slice(k, k + micro_batch))[0]
                          for k in range(0, len(comp), micro_batch)])


def estimator_inputs(b, j, cfg, mask_id):
    """The estimator's inputs for iteration j: ([(input (B, P + L), scored (B, L) bool)], key-padding mask (B, P + L));
    each completion token is scored in one input. d1: the completion masked (prompt tokens with p_mask_prompt, seed j).
    trajectory: per `logp_group` sampler steps, the canvas before the first (earlier commits, hints shown) scores their
    tokens; hints, never sampled, a fully masked one. One step each: the likelihood of the sampler's token choices."""
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
        lp, en = token_logps(net, x[rows], attn[rows], comp[rows], with_entropy)
        logp = logp + torch.where(scored[rows], lp, 0.0)
        if with_entropy:
            ent = ent + torch.where(scored[rows], en, 0.0)
    return logp, ent


def masked_input(prompt_ids, completions, mask_id, p_mask_prompt, seed):
    """The log-prob forward's input (B, P + L): the completion all masked, prompt tokens with p_mask_prompt (seeded)."""
    if p_mask_prompt > 0:
        drop = torch.rand(prompt_ids.shape, generator=torch.Generator().manual_seed(seed)) < p_mask_prompt
        prompt_ids = torch.where(drop.to(prompt_ids.device), mask_id, prompt_ids)
    return torch.cat([prompt_ids, torch.full_like(completions, mask_id)], dim=1)


def token_logps(net, x, attn, completions, with_entropy=False):
    """(log π(y) = -CE at completion positions, entropy or None), (B, L) each, from one forward per distinct row."""
    L = completions.shape[1]
    uniq, inv = torch.unique(torch.cat([x, attn], dim=1), dim=0, return_inverse=True)
    logits = net(uniq[:, :x.shape[1]], attention_mask=uniq[:, x.shape[1]:])[:, -L:].float()  # (U, L, V)
    lse = logits.logsumexp(-1)                                                              # (U, L)
    logp = logits[inv[:, None], torch.arange(L, device=x.device)[None, :], completions] - lse[inv]  # (B, L)
    if not with_entropy:
        return logp, None
    ent = lse - (logits.softmax(-1) * logits).sum(-1)                                     # (U, L)
    return logp, ent[inv]


def loss_mask(completions, eos_id, post_eos):
    """(B, L) bool: tokens up to and including the first EOS (P), or all of them (`--post_eos on`, O)."""
    if post_eos:
        return torch.ones_like(completions, dtype=torch.bool)
    is_eos = (completions == eos_id).int()
    return (is_eos.cumsum(1) - is_eos) == 0  # no EOS strictly before this position


def make_batch(policy, ref, tok, items, messages, cfg, batch_idx, first, device, times):
    """The four phases of the module docstring, in order; `times` collects each phase's seconds."""
    with timed(times, "t_rollout"):
        b = roll_out(policy, tok, items, messages, cfg, batch_idx, first, device)           # 1
    with timed(times, "t_inpaint"):
        if cfg.rescue != "off":
            rows, comp, order, correct, total, hint = rescue(policy, tok, items, b, cfg, first)  # 2
            b.comp[rows], b.order[rows], b.correct[rows], b.reward[rows] = comp, order, correct, total
            b.hint[rows], b.replaced[rows] = hint, True
    b.adv = group_advantages(b.reward, cfg.G).to(device)                                   # 3
    b.lmask = loss_mask(b.comp, tok.eos_token_id, cfg.post_eos)
    with timed(times, "t_logp"):
        b.old, b.ent, b.ref_logp = old_logps(policy, ref, b, cfg)                               # 4
    return b


# --------------------------------------------------------------------------------------------- the update

def update(policy, b, j, cfg, world):
    """Forward and backward of iteration j's loss on this rank (gradients accumulate); returns (sum, count) stats."""
    keep = b.lmask & inpaint.entropy_filter(b.ent[j], b.hint & b.lmask, cfg.tau)  # hint tokens: top-tau by entropy
    n_total = launch.all_sum(keep.sum().float()).clamp(min=1)  # kept tokens of the global batch
    if cfg.loss_norm == "group":  # O: per row, its group's kept tokens x the number of groups of the global batch
        per_group = keep.view(-1, cfg.G, keep.shape[1]).sum((1, 2)).float().clamp(min=1)            # (B / G,)
        n_total = per_group.repeat_interleave(cfg.G) * launch.all_sum(torch.ones_like(per_group).sum())  # (B,)
    inputs, attn = estimator_inputs(b, j, cfg, policy.config.mask_token_id)
    loss_sum = kl_sum = clipped = 0.0
    B, mb = len(b.comp), cfg.micro_batch
    for k in range(0, B, mb):
        sl = slice(k, k + mb)
        if world > 1:
            policy.set_requires_gradient_sync(k + mb >= B)  # reduce-scatter once per step
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.bf16 and attn.device.type == "cuda"):
            logp = estimate_logps(policy, inputs, attn, b.comp, sl)[0]
        ref_logp = None if b.ref_logp is None else b.ref_logp[j][sl]
        denom = n_total if n_total.dim() == 0 else n_total[sl]
        loss, st = grpo_loss(logp, b.old[j][sl], ref_logp, b.adv[sl], keep[sl], denom, cfg.eps, cfg.beta, cfg.ratio)
        (loss * world).backward()  # FSDP averages gradients over ranks; the loss is already a global mean
        loss_sum, kl_sum, clipped = loss_sum + loss.item(), kl_sum + st["kl"], clipped + st["clipped"]
    kept = float(keep.sum())
    return dict(loss=(loss_sum, 1 / world), kl=(kl_sum, kept), clip_frac=(clipped, kept))


def grpo_loss(logp, old_logp, ref_logp, adv, keep, n_total, eps, beta, ratio="token"):
    """Clipped surrogate + k3 KL summed over kept tokens / n_total: a scalar (global kept tokens, --loss_norm token) or
    (B,) (group: the row's group's kept tokens x #groups). logp, old_logp, ref_logp, keep (B, L); adv (B,)."""
    assert ratio in ("token", "sequence", "sequence_all"), ratio
    log_ratio = logp - old_logp
    if ratio == "sequence":  # GSPO: s_i = exp(mean_t log ratio) over the kept tokens, one ratio per sequence
        n_i = keep.sum(1, keepdim=True).clamp(min=1)
        log_ratio = ((log_ratio * keep).sum(1, keepdim=True) / n_i).expand_as(logp)
    elif ratio == "sequence_all":  # O's GSPO: the mean runs over all L positions, dropped tokens get gradient too
        log_ratio = log_ratio.mean(1, keepdim=True).expand_as(logp)
    rho = log_ratio.exp()
    a = adv[:, None]
    per_token = -torch.min(rho * a, rho.clamp(1 - eps, 1 + eps) * a)                       # Eq. (3), per token
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
    """This rank's contiguous share of the prompts of rollout batch `batch_idx`, and the global index of its first."""
    per_rank = cfg.prompts_per_step // world
    first = batch_idx * cfg.prompts_per_step + rank * per_rank
    return [items[i] for i in launch.data_order(len(items), cfg.seed, range(first, first + per_rank))], first


def build(cfg, device, ckpt=None):
    """(policy, reference or None, tokenizer, run state). Policy: cfg.model (resumed: ckpt, or LoRA: its adapter);
    reference: a frozen cfg.model if beta > 0 (LoRA: the policy, adapter off). sft.py makes a missing task model."""
    if not os.path.exists(os.path.join(cfg.model, "config.json")) and cfg.model == TASK_DEFAULT_MODEL:
        if dist.is_initialized():
            raise SystemExit(f"{cfg.model} is missing: run sft.py's presets task, task-2 .. task-4 first")
        print(f"{cfg.model} is missing: training it with sft.py's task presets first (task .. task-4)")
        sft.train_task_start(cfg.model)
    state = launch.resume_state(ckpt, cfg.model)  # refuses a --model whose weights changed since the checkpoint
    policy, tok = launch.load_model(ckpt if ckpt and not cfg.lora_rank else cfg.model, device=device)
    if ckpt and cfg.lora_rank:
        M.load_adapter(policy, os.path.join(ckpt, "adapter"))
    else:
        M.add_lora(policy, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, tuple(cfg.lora_targets.split(",")))
    ref = None
    if cfg.beta > 0 and not cfg.lora_rank:
        ref = launch.load_model(cfg.model, device=device)[0].requires_grad_(False)
    return policy, ref, tok, state


def check_config(cfg, world):
    """Flag combinations that cannot run are usage errors at start-up, before any model is loaded."""
    blocks = max(1, cfg.gen_length // cfg.block_length)
    launch.usage_error([msg for bad, msg in [
        (cfg.prompts_per_step % world, f"--prompts_per_step {cfg.prompts_per_step} not divisible by world {world}"),
        (cfg.steps % cfg.mu, f"--steps {cfg.steps} not a multiple of --mu {cfg.mu} (a rollout batch serves mu steps)"),
        (cfg.save_every % cfg.mu, f"--save_every {cfg.save_every} not a multiple of --mu {cfg.mu} (saves go between)"),
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
    metrics_f = open(os.path.join(cfg.out_dir, "metrics.jsonl"), "a", buffering=1) if rank == 0 else None
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
            stats = batch_stats(b, cfg, tok, mine)
        policy.train()
        torch.manual_seed(launch.seed(cfg.seed, "dropout", step, rank))  # LoRA dropout: a function of the step
        lr = launch.lr_at(step, horizon, cfg.lr, cfg.warmup)  # linear warmup and decay to 0 at `horizon` (O: HF's)
        for g in opt.param_groups:
            g["lr"] = lr
        with timed(times, "t_update"):
            stats.update(update(policy, b, step % cfg.mu, cfg, world))
            gnorm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
            gnorm = float(gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm)
            row = summarize(stats, times, device)
            ok = launch.step_ok(row.get("loss", 0.0), gnorm, state, cfg.max_bad_steps)
            if ok:  # a non-finite step is skipped: no update
                opt.step()
            opt.zero_grad(set_to_none=True)
        row.update(step=step + 1, lr=lr, grad_norm=gnorm, skipped=float(not ok), t_update=times["t_update"])
        accs += [row["acc"]] if "acc" in row else []  # rows of a rollout batch's first step
        if rank == 0:
            metrics_f.write(json.dumps(row) + "\n")
            bar.set_postfix({k: f"{row[k]:.3g}" for k in SHOWN if k in row})
        last = step + 1 == cfg.steps
        if cfg.eval_limit and ((cfg.eval_every and (step + 1) % cfg.eval_every == 0) or last):
            res = run_eval(policy, tok, cfg, step + 1, metrics_f, log)  # before the save: a resume redoes both
        stop = launch.stop_requested(device) and (step + 1) % cfg.mu == 0  # SIGTERM: at the end of the batch
        state["step"] = step + 1
        files = {"igpo_config.json": asdict(cfg), "trainer_state.json": state}  # atomic; `latest` names it last
        if (cfg.save_every and (step + 1) % cfg.save_every == 0) or stop or (last and cfg.save_last == "full"):
            launch.save_checkpoint(policy, tok, os.path.join(cfg.out_dir, f"step-{step + 1}"), files, opt, cfg.keep_last)
        if last and cfg.save_last == "model":  # the policy alone (after step-N too), not named by `latest`
            launch.save_checkpoint(policy, tok, os.path.join(cfg.out_dir, "final"), files)
        if stop:
            log(f"SIGTERM: stopped after step {step + 1}, checkpoint saved; --resume on continues from it")
            break
    q = max(1, len(accs) // 4)
    log(f"on-policy accuracy (T = {cfg.temperature}): first quarter {sum(accs[:q]) / q:.3f}, last {sum(accs[-q:]) / q:.3f}")
    if start is not None and res is not None:  # not after a SIGTERM stop (no final eval)
        log(f"test: start {E.fmt_acc(start)} -> after {cfg.steps} steps {E.fmt_acc(res)}")
    if dist.is_initialized():
        dist.destroy_process_group()


def run_eval(policy, tok, cfg, step, metrics_f, log):
    """Greedy test accuracy (eval.py's protocol), logged, into metrics.jsonl; per problem: out_dir/eval/step-N.jsonl."""
    policy.eval()
    path = os.path.join(cfg.out_dir, "eval", f"step-{step}.jsonl")
    res = E.evaluate_fresh(policy, tok, cfg.data if cfg.data.startswith("task") else "gsm8k", cfg.eval_limit, path,
                           batch_size=cfg.micro_batch, seed=cfg.seed)
    log(f"step {step}: test {E.fmt_acc(res)}")
    if metrics_f is not None:
        metrics_f.write(json.dumps(dict(step=step, eval=res)) + "\n")
    return res


# -------------------------------------- metrics, kept out of the algorithm above: (sum, count) pairs, summed over ranks

SHOWN = ("acc", "sound_acc", "all_wrong_before", "all_wrong_after", "loss")  # on the progress bar


def batch_stats(b, cfg, tok, items):
    """The rollout batch's statistics as (sum, count) pairs; the task's sound rates too (measured, never trained on)."""
    B, groups = len(b.comp), len(b.comp) // cfg.G
    ok = E.sound_rows(tok, items, b.comp, cfg.G)  # (B,) every reasoning line right, or None off the task
    sound = {} if ok is None else dict(sound_acc=(float((ok & (b.correct_policy > 0) & ~b.replaced).sum()), B),
                                       sound_replaced=(float((ok & b.replaced).sum()), float(b.replaced.sum())))
    wrong = float(all_wrong(b.correct_policy, cfg.G).sum())  # all-wrong groups before the rescue
    gen, hint, ent = ~b.hint & b.lmask, b.hint & b.lmask, b.ent[0]
    per_rollout = dict(acc=b.correct_policy > 0, acc_after=b.correct > 0, reward=b.reward, replaced=b.replaced,
                       comp_len=b.lmask, format=(b.reward - b.correct) / max(cfg.format_weight, 1e-9))
    return dict({k: (float(v.sum()), B) for k, v in per_rollout.items()}, all_wrong_before=(wrong, groups),
                all_wrong_after=(float(all_wrong(b.correct, cfg.G).sum()), groups),
                rescued=(float(b.replaced.view(-1, cfg.G).any(1).sum()), wrong),
                spent=(B + (cfg.G * wrong if cfg.rescue != "off" else 0.0), B),  # rollouts sampled
                hint_frac=(float(b.hint.sum()), float(b.lmask.sum())),
                ent_hint=(float((ent * hint).sum()), float(hint.sum())),
                ent_gen=(float((ent * gen).sum()), float(gen.sum())), **sound,
                no_trace=(sum(float(w and not has_trace(it)) for w, it in zip(all_wrong(b.correct_policy, cfg.G), items)),
                          len(items)))  # all-wrong groups IGPO cannot act on


def summarize(stats, times, device):
    """One metrics row: every (sum, count) summed over ranks (on the device: NCCL) and divided; times: the slowest's."""
    keys, tk = sorted(stats), sorted(times)
    t = torch.tensor([stats[k] for k in keys], dtype=torch.float64, device=device).view(-1, 2)
    tt = torch.tensor([times[k] for k in tk], dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
        dist.all_reduce(tt, op=dist.ReduceOp.MAX)
    return {k: s / c for k, (s, c) in zip(keys, t.tolist()) if c > 0} | dict(zip(tk, tt.tolist()))


@contextlib.contextmanager
def timed(times, name):
    t0 = time.time()
    yield
    times[name] = times.get(name, 0.0) + time.time() - t0


if __name__ == "__main__":
    train(launch.parse_config(Config, PRESETS, doc=__doc__, official=OFFICIAL))
    launch.exit_worker()
