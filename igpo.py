"""IGPO: Inpainting-Guided Policy Optimization for masked diffusion LLMs (arXiv 2509.10396, Algorithm 1).

GRPO on a dLLM wastes every group whose G rollouts are all wrong: their advantages r - mean(r) are zero, so is
their gradient. IGPO re-samples such a group with chunks of the ground-truth reasoning trace fixed in the canvas
(inpainting: the diffusion sampler fills in around them), keeps the inpainted rollouts that verify as correct,
and lets them replace up to ⌊λG⌋ of the wrong ones. The group now has reward variance and a learning signal.
Hint tokens are off-policy, so only the top-τ of them by the old policy's entropy stay in the loss (entropy
filter). One step, top to bottom in `train`: sample prompts -> roll out -> reward -> find all-wrong groups ->
inpaint and verify -> replace -> advantages A = r - mean_group(r) -> old/ref log-probs under μ fixed masks ->
μ updates of the clipped surrogate + k3 KL -> log, checkpoint, evaluate.
GRPO is this script with `--inpaint off`; the sample-matched baseline (same number of rollouts, no hints) is
`--eta 0,0`.

Log-probs (d1's one-step estimator, as in the official code): the completion is fully masked, each prompt token
is masked with probability p_mask_prompt under a per-iteration seed, and log π(y_k) is read off one forward at
completion position k. Old, reference and current policy see the same masked input in iteration j.

Deviations (P = paper, O = official code facebookresearch/igpo), numbered:
 1. Hints never contain the final answer (P). O's training path always reveals the last chunk of the trace:
    `--reveal_last on` (see inpaint.py for the chunking/placement deviations).
 2. Tokens after the first EOS are left out of the loss (P: the loss is over the response). O keeps all
    gen_length tokens: `--post_eos on`.
 3. The loss is a mean over the kept tokens of the whole global batch (one all_reduce of the count), so it does
    not depend on micro-batch size or world size; O (via TRL) averages per device micro-batch.
 4. Rows whose masked input is identical (every rollout of a prompt when p_mask_prompt = 0, the default) share one
    forward pass in the log-prob computation: G times fewer forwards, same numbers.
Launch:  python igpo.py                                    # embedded task, tiny LLaDA, 2 CPU cores, ~15 min
         torchrun --nproc_per_node=8 igpo.py --preset paper --model PATH_TO_SFT_CHECKPOINT
         python igpo.py --inpaint off                      # GRPO baseline;  --eta 0,0: sample-matched baseline
Shapes: B rollouts on this rank (= prompts x G), G group, P prompt length, L gen_length, V vocab.
"""
import json
import math
import os
import time
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
from tqdm import tqdm

import data
import inpaint
import launch
import model as M
import reward
import sample
import sft


@dataclass
class Config:
    model: str = "GSAI-ML/LLaDA-8B-Instruct"  # initial policy (HF dir or hub id; P starts from the SFT model)
    data: str = "math"                 # training prompts: math (MATH train, O) | gsm8k | task (embedded RL split)
    out_dir: str = "runs/igpo"         # metrics.jsonl, config.json, checkpoints
    steps: int = 1000                  # optimizer steps = rollout batches x mu
    prompts_per_step: int = 64         # prompts per rollout batch, global (any world size)
    G: int = 8                         # rollouts per prompt (P, O)
    micro_batch: int = 8               # rows per forward/backward on a rank (memory only; the update is the same)
    gen_length: int = 256              # new tokens per rollout (O)
    block_length: int = 32             # semi-autoregressive block (O)
    diffusion_steps: int = 128         # denoising steps per rollout (O)
    temperature: float = 1.2           # rollout temperature (O)
    inpaint: bool = True               # IGPO on; off = GRPO
    eta: tuple = (0.2, 0.6)            # hint ratio range, eta ~ U[lo, hi] per rollout (P, O); 0,0 = sample-matched
    chunk: tuple = (5, 10)             # hint chunk sizes in tokens, inclusive (O)
    lam: float = 0.5                   # replace at most floor(lam * G) wrong rollouts per group (P: lambda; O: 4 of 8)
    tau: float = 0.2                   # keep the top-tau fraction of hint tokens by entropy (P, O)
    stretch: bool = False              # O's stretched hint placement instead of P's same-index placement
    reserve: int = 30                  # last positions of the window never hinted (O)
    reveal_last: bool = False          # O: always reveal the trace's last chunk (answer included); deviation 1
    mu: int = 4                        # inner updates per rollout batch (O: num_iterations)
    eps: float = 0.2                   # clip range of the ratio (P, O)
    beta: float = 0.01                 # k3 KL weight to the reference policy; 0 = no reference model (O)
    ratio: str = "token"               # importance ratio: token (GRPO) | sequence (GSPO: exp of mean log-ratio)
    p_mask_prompt: float = 0.0         # prompt-token mask probability in the log-prob forward (d1 option)
    post_eos: bool = False             # keep tokens after the first EOS in the loss (O); deviation 2
    lr: float = 5e-7                   # AdamW peak lr, constant after warmup (O)
    betas: tuple = (0.9, 0.99)         # AdamW betas (O)
    weight_decay: float = 0.1          # AdamW weight decay (O)
    grad_clip: float = 0.2             # max global grad norm (O)
    warmup: int = 50                   # linear lr warmup, optimizer steps (O)
    correct_weight: float = 3.0        # correctness reward (O)
    format_weight: float = 1.0         # scale of reward.format_reward (O: 0.125 per tag + 0.25 for \boxed)
    bf16: bool = True                  # bf16 autocast on GPU; ignored on CPU
    grad_ckpt: bool = True             # activation checkpointing per block (needed at 8B)
    seed: int = 0                      # data order, rollouts, hints, mask seeds
    save_every: int = 100              # optimizer steps between checkpoints (and one at the end)
    eval_every: int = 0                # optimizer steps between evaluations; 0 = only at the end
    eval_limit: int = 200              # test problems per evaluation; 0 = no evaluation


# `python igpo.py` = the embedded task on a CPU; `--preset paper` = the paper's run.
PRESETS = {
    "task": dict(model="checkpoints/task-sft", data="task", out_dir="runs/igpo-task", steps=40, prompts_per_step=16,
                 micro_batch=128, gen_length=data.TASK_SAMPLING["gen_length"], mu=2,
                 block_length=data.TASK_SAMPLING["block_length"], diffusion_steps=data.TASK_SAMPLING["steps"],
                 temperature=data.TASK_SAMPLING["temperature"], chunk=(2, 4), reserve=data.TASK_HINT_RESERVE,
                 lr=1e-4, warmup=5, grad_clip=1.0, grad_ckpt=False, save_every=40, eval_every=0,
                 eval_limit=500),
    "paper": dict(),
}


# --------------------------------------------------------------------------------------------- rollouts

def rollout(policy, prompt_ids, prompt_attn, cfg, seeds, hints=None):
    """Sample one completion per row (B, L); each row has its own generator seed, so a rollout is reproducible."""
    out = []
    for k in range(0, len(prompt_ids), cfg.micro_batch):
        sl = slice(k, k + cfg.micro_batch)
        gens = [torch.Generator(prompt_ids.device).manual_seed(s) for s in seeds[sl]]
        x = sample.generate(policy, prompt_ids[sl], attention_mask=prompt_attn[sl], gen_length=cfg.gen_length,
                            block_length=cfg.block_length, steps=cfg.diffusion_steps, temperature=cfg.temperature,
                            hints=None if hints is None else hints[sl], generator=gens)
        out.append(x[:, prompt_ids.shape[1]:])
    return torch.cat(out)


def rewards(tok, completions, golds, cfg):
    """(correctness (B,), total reward (B,)) of completion ids (B, L) against gold answers."""
    texts = [tok.decode(c, skip_special_tokens=True) for c in completion_ids_to_eos(completions, tok.eos_token_id)]
    correct = torch.tensor([reward.correctness_reward(t, g, weight=cfg.correct_weight) for t, g in zip(texts, golds)])
    fmt = torch.tensor([reward.format_reward(t) for t in texts])
    return correct, correct + cfg.format_weight * fmt


def completion_ids_to_eos(completions, eos_id):
    """Each row cut at its first EOS (the answer a reader sees)."""
    return [row[:int((row == eos_id).nonzero()[0])] if (row == eos_id).any() else row for row in completions]


def loss_mask(completions, eos_id, post_eos):
    """(B, L) bool: tokens up to and including the first EOS (deviation 2), or all of them."""
    if post_eos:
        return torch.ones_like(completions, dtype=torch.bool)
    is_eos = (completions == eos_id).int()
    return (is_eos.cumsum(1) - is_eos) == 0  # no EOS strictly before this position


def reference_trace(tok, item):
    """Token ids of the item's reference response and the index where its final answer starts (the last \\boxed)."""
    text = data.format_response(item)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    cut = text.rfind("\\boxed")
    answer_start = next((i for i, (s, _) in enumerate(enc["offset_mapping"]) if s >= cut), None) if cut >= 0 else None
    return enc["input_ids"], answer_start


def inpaint_groups(policy, tok, groups, prompt_ids, prompt_attn, cfg, batch_idx, first):
    """Re-sample each all-wrong group in `groups` (list of (local group index, item)) with hints; returns, per
    group, (completions (G, L), correctness (G,), total reward (G,), hint_mask (G, L)). Seeds use the global group
    index (first + local), so the hints and rollouts do not depend on the world size. Every rank samples the
    same number of rows (padding with discarded hint-free rows): FSDP needs all ranks in every forward."""
    G, mask_id = cfg.G, policy.config.mask_token_id
    hints, masks, seeds = [], [], []
    for gi, item in groups:
        trace, answer_start = reference_trace(tok, item)
        gen = torch.Generator().manual_seed(mix(cfg.seed, batch_idx, first + gi, 2))
        h, hm, _ = inpaint.build_hints(trace, G, cfg.gen_length, mask_id, gen=gen, answer_start=answer_start,
                                       s_min=cfg.chunk[0], s_max=cfg.chunk[1], eta_low=cfg.eta[0],
                                       eta_high=cfg.eta[1], stretch=cfg.stretch, reserve=cfg.reserve,
                                       reveal_last=cfg.reveal_last)
        hints.append(h)
        masks.append(hm)
        seeds += [mix(cfg.seed, batch_idx, (first + gi) * G + r, 3) for r in range(G)]
    n = n_max = len(groups) * G
    if dist.is_initialized():
        t = torch.tensor(n, device=prompt_ids.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        n_max = int(t)
    if n_max == 0:
        return []
    rows = torch.cat([torch.arange(gi * G, gi * G + G) for gi, _ in groups] + [torch.zeros(n_max - n).long()])
    hints = torch.cat(hints + [torch.full((n_max - n, cfg.gen_length), mask_id)]).to(prompt_ids.device)
    comp = rollout(policy, prompt_ids[rows], prompt_attn[rows], cfg, seeds + [0] * (n_max - n), hints)[:n]
    if not groups:
        return []
    correct, total = rewards(tok, comp.cpu(), [item["answer"] for _, item in groups for _ in range(G)], cfg)
    return [(comp[k * G:(k + 1) * G], correct[k * G:(k + 1) * G], total[k * G:(k + 1) * G], masks[k])
            for k in range(len(groups))]


def replace_wrong(comp, correct, total, hint_mask, new, lam, gen):
    """Algorithm 1's replacement for one all-wrong group: K = min(#correct inpainted, ⌊λG⌋) correct inpainted
    rollouts, drawn at random (O), overwrite the first K rows (all originals are wrong). In place; returns K."""
    new_comp, new_correct, new_total, new_mask = new
    ok = (new_correct > 0).nonzero().squeeze(1)
    ok = ok[torch.randperm(len(ok), generator=gen)]
    K = min(len(ok), math.floor(lam * len(correct)))
    pick = ok[:K]
    comp[:K], correct[:K], total[:K], hint_mask[:K] = new_comp[pick], new_correct[pick], new_total[pick], new_mask[pick]
    return K


def all_wrong(correct, G):
    """(groups,) bool: every correctness reward of the group is 0 (the format reward is ignored)."""
    return (correct.view(-1, G) == 0).all(1)


def group_advantages(total, G):
    """A_i = r_i - mean_j r_j within each group of G consecutive rows (P, O: no std division)."""
    r = total.view(-1, G)
    return (r - r.mean(1, keepdim=True)).view(-1)


# ---------------------------------------------------------------------------------------------- log-probs

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
    forward over the distinct rows of x only (deviation 4)."""
    L = completions.shape[1]
    uniq, inv = torch.unique(torch.cat([x, attn], dim=1), dim=0, return_inverse=True)
    logits = net(uniq[:, :x.shape[1]], attention_mask=uniq[:, x.shape[1]:])[:, -L:].float()  # (U, L, V)
    lse = logits.logsumexp(-1)                                                              # (U, L)
    logp = logits[inv[:, None], torch.arange(L, device=x.device)[None, :], completions] - lse[inv]  # (B, L)
    if not with_entropy:
        return logp
    ent = lse - (logits.softmax(-1) * logits).sum(-1)                                     # (U, L)
    return logp, ent[inv]


def grpo_loss(logp, old_logp, ref_logp, adv, keep, n_total, eps, beta, ratio="token"):
    """Sum over kept tokens of the clipped surrogate + k3 KL, divided by n_total (the kept tokens of the global
    batch, deviation 3). logp/old_logp/ref_logp (B, L), adv (B,), keep (B, L) bool. Returns (loss, stats)."""
    log_ratio = logp - old_logp
    if ratio == "sequence":  # GSPO: s_i = exp(mean_t log ratio), one ratio per sequence
        n_i = keep.sum(1, keepdim=True).clamp(min=1)
        log_ratio = ((log_ratio * keep).sum(1, keepdim=True) / n_i).expand_as(logp)
    rho = log_ratio.exp()
    a = adv[:, None]
    surrogate = torch.min(rho * a, rho.clamp(1 - eps, 1 + eps) * a)                        # Eq. (3), per token
    per_token = -surrogate
    kl = torch.zeros_like(logp)
    if beta > 0:
        d = ref_logp - logp
        kl = d.exp() - d - 1                                                                # k3 estimator, Eq. (4)
        per_token = per_token + beta * kl
    loss = (per_token * keep).sum() / n_total
    clipped = ((rho < 1 - eps) & (a < 0)) | ((rho > 1 + eps) & (a > 0))
    return loss, dict(kl=(kl * keep).sum().item(), clipped=(clipped & keep).sum().item())


# ------------------------------------------------------------------------------------------------- training

def mix(*xs):
    """A deterministic 62-bit seed from integers (Python's hash() of str is salted per process)."""
    h = 1469598103934665603
    for x in xs:
        h = (h ^ (int(x) & 0xFFFFFFFFFFFF)) * 1099511628211 % 2**62
    return h


def lr_at(step, cfg):
    """Linear warmup, then linear decay to 0 (O: the HF Trainer default schedule)."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    return cfg.lr * max(0.0, (cfg.steps - step) / max(1, cfg.steps - cfg.warmup))


def load_prompts(cfg):
    if cfg.data == "task":
        return data.task_splits()["rl"], data.task_messages
    return data.load_split(cfg.data, "train"), data.build_messages


def batch_items(items, batch_idx, cfg, rank, world):
    """This rank's prompts of rollout batch `batch_idx` and the global position of the first one: one seeded
    permutation per epoch, consecutive global slices, each rank a contiguous share (all G rollouts of a prompt
    stay on one rank)."""
    per_rank = cfg.prompts_per_step // world
    n, first = len(items), batch_idx * cfg.prompts_per_step + rank * per_rank
    perms = {}
    out = []
    for pos in range(first, first + per_rank):
        epoch = pos // n
        if epoch not in perms:
            perms[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(mix(cfg.seed, epoch))).tolist()
        out.append(items[perms[epoch][pos % n]])
    return out, first


def make_batch(policy, ref, tok, items, messages, cfg, batch_idx, first, rank, device):
    """Rollouts, rewards, inpainting and replacement, advantages, and the old/ref log-probs of the μ iterations.
    Returns (batch dict, metrics dict of sums). Batch keys: prompt (B, P), attn (B, P), comp (B, L), adv (B,),
    hint (B, L) bool, lmask (B, L) bool, old [μ x (B, L)], ent [μ x (B, L)], ref [μ x (B, L)] or None."""
    G, mask_id = cfg.G, policy.config.mask_token_id
    convs = [messages(it["question"]) for it in items for _ in range(G)]
    prompt, attn = M.encode_chat(tok, convs, device=device)
    t0 = time.time()
    seeds = [mix(cfg.seed, batch_idx, first * G + r) for r in range(len(convs))]
    comp = rollout(policy, prompt, attn, cfg, seeds)                                        # (B, L)
    golds = [it["answer"] for it in items for _ in range(G)]
    correct, total = rewards(tok, comp.cpu(), golds, cfg)
    t_roll = time.time() - t0
    hint = torch.zeros_like(comp, dtype=torch.bool)
    n_correct_policy = float((correct > 0).sum())  # on-policy accuracy, before any replacement
    wrong = all_wrong(correct, G)
    groups = [(gi, items[gi]) for gi in wrong.nonzero().squeeze(1).tolist()] if cfg.inpaint else []
    t0, n_replaced, rescued = time.time(), 0, 0
    for (gi, _), new in zip(groups, inpaint_groups(policy, tok, groups, prompt, attn, cfg, batch_idx, first)):
        sl = slice(gi * G, gi * G + G)
        gen = torch.Generator().manual_seed(mix(cfg.seed, batch_idx, first + gi, 1))
        K = replace_wrong(comp[sl], correct[sl], total[sl], hint[sl], (new[0], new[1], new[2], new[3].to(device)),
                          cfg.lam, gen)
        n_replaced, rescued = n_replaced + K, rescued + (K > 0)
    t_inp = time.time() - t0
    adv = group_advantages(total, G).to(device)
    lmask = loss_mask(comp, tok.eos_token_id, cfg.post_eos)
    t0 = time.time()
    old, ent, refs = [], [], [] if ref is not None else None
    with torch.no_grad():
        for j in range(cfg.mu):
            x = masked_input(prompt, comp, mask_id, cfg.p_mask_prompt, mix(cfg.seed, batch_idx, j))
            full_attn = torch.cat([attn, torch.ones_like(comp)], dim=1)
            lp, en = zip(*[token_logps(policy, x[k:k + cfg.micro_batch], full_attn[k:k + cfg.micro_batch],
                                       comp[k:k + cfg.micro_batch], with_entropy=True)
                           for k in range(0, len(comp), cfg.micro_batch)])
            old.append(torch.cat(lp))
            ent.append(torch.cat(en))
            if ref is not None:
                refs.append(torch.cat([token_logps(ref, x[k:k + cfg.micro_batch], full_attn[k:k + cfg.micro_batch],
                                                   comp[k:k + cfg.micro_batch])
                                       for k in range(0, len(comp), cfg.micro_batch)]))
    t_old = time.time() - t0
    gen_len = lmask.sum(1).float()
    m = dict(groups=len(items), all_wrong_before=int(wrong.sum()),
             all_wrong_after=int(all_wrong(correct, G).sum()), rescued=rescued, replaced=n_replaced,
             correct=n_correct_policy, correct_after=float((correct > 0).sum()), reward=float(total.sum()),
             rollouts=len(comp),
             format=float((total - correct).sum()) / max(cfg.format_weight, 1e-9),
             hint_tokens=float(hint.sum()), loss_tokens=float(lmask.sum()), comp_len=float(gen_len.sum()),
             ent_hint=float((ent[0] * (hint & lmask)).sum()), ent_gen=float((ent[0] * (~hint & lmask)).sum()),
             n_gen=float((~hint & lmask).sum()), n_hint=float((hint & lmask).sum()),
             nfe=cfg.diffusion_steps * (len(comp) + len(groups) * G) / cfg.micro_batch,
             t_rollout=t_roll, t_inpaint=t_inp, t_logp=t_old)
    return dict(prompt=prompt, attn=attn, comp=comp, adv=adv, hint=hint, lmask=lmask, old=old, ent=ent, ref=refs), m


def update(policy, opt, b, j, cfg, world):
    """One optimizer step on the rollout batch `b` with the masks of iteration j. Returns loss-side sums."""
    keep = b["lmask"] & inpaint.entropy_filter(b["ent"][j], b["hint"], cfg.tau)  # hint tokens: top-tau by entropy
    n_total = keep.sum().float()
    if world > 1:
        dist.all_reduce(n_total)
    n_total = n_total.clamp(min=1)
    mask_id = policy.config.mask_token_id
    x = masked_input(b["prompt"], b["comp"], mask_id, cfg.p_mask_prompt, mix(cfg.seed, b["idx"], j))
    full_attn = torch.cat([b["attn"], torch.ones_like(b["comp"])], dim=1)
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.bf16 and x.device.type == "cuda")
    sums = dict(loss=0.0, kl=0.0, clipped=0.0, kept=float(keep.sum()))
    B, mb = len(x), cfg.micro_batch
    for k in range(0, B, mb):
        sl = slice(k, k + mb)
        if world > 1:
            policy.set_requires_gradient_sync(k + mb >= B)  # reduce-scatter once per step
        with amp:
            logp = token_logps(policy, x[sl], full_attn[sl], b["comp"][sl])
        loss, st = grpo_loss(logp, b["old"][j][sl], None if b["ref"] is None else b["ref"][j][sl], b["adv"][sl],
                             keep[sl], n_total, cfg.eps, cfg.beta, cfg.ratio)
        (loss * world).backward()  # FSDP averages gradients over ranks; the loss is already a global mean
        sums["loss"] += loss.item()
        sums["kl"] += st["kl"]
        sums["clipped"] += st["clipped"]
    return sums


def build(cfg, device):
    """(policy, reference or None, tokenizer): the policy from cfg.model (built by sft.py for the task if
    missing), and a frozen copy of it when beta > 0."""
    if cfg.data == "task" and not os.path.exists(os.path.join(cfg.model, "config.json")):
        if dist.is_initialized():
            raise SystemExit(f"{cfg.model} is missing: run `python sft.py` once before torchrun")
        print(f"{cfg.model} is missing: training it with sft.py's task preset first")
        sft.train(sft.parse_config(["--out_dir", cfg.model]))
    policy, tok = M.load(cfg.model, device=device)
    ref = None
    if cfg.beta > 0:
        ref, _ = M.load(cfg.model, device=device)
        ref.requires_grad_(False)
    return policy, ref, tok


def train(cfg):
    rank, world, device = launch.setup_dist()
    log = print if rank == 0 else (lambda *a, **k: None)
    assert cfg.prompts_per_step % world == 0, "prompts_per_step must be divisible by the world size"
    assert cfg.steps % cfg.mu == 0, "steps must be a multiple of mu (one rollout batch serves mu steps)"
    log(json.dumps(asdict(cfg), indent=1))
    log(f"world {world}: {cfg.prompts_per_step // world} prompts x G={cfg.G} = {cfg.prompts_per_step // world * cfg.G}"
        f" rollouts per rank, global {cfg.prompts_per_step * cfg.G}; {cfg.steps // cfg.mu} rollout batches"
        f" x mu={cfg.mu}")
    torch.manual_seed(cfg.seed)
    policy, ref, tok = build(cfg, device)
    policy.gradient_checkpointing = cfg.grad_ckpt
    policy, ref = launch.fsdp(policy, device), ref and launch.fsdp(ref, device)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    items, messages = load_prompts(cfg)
    os.makedirs(cfg.out_dir, exist_ok=True)
    if rank == 0:
        with open(os.path.join(cfg.out_dir, "config.json"), "w") as f:
            json.dump(asdict(cfg), f, indent=1)
    metrics_f = open(os.path.join(cfg.out_dir, "metrics.jsonl"), "a") if rank == 0 else None
    bar = tqdm(range(cfg.steps), disable=rank != 0, desc="igpo" if cfg.inpaint else "grpo")
    for step in bar:
        if step % cfg.mu == 0:
            policy.eval()
            batch_idx = step // cfg.mu
            mine, first = batch_items(items, batch_idx, cfg, rank, world)
            b, m = make_batch(policy, ref, tok, mine, messages, cfg, batch_idx, first, rank, device)
            b["idx"] = batch_idx
        policy.train()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        t0 = time.time()
        s = update(policy, opt, b, step % cfg.mu, cfg, world)
        row = reduce_metrics({**(m if step % cfg.mu == 0 else {}), **s}, world)
        if not math.isfinite(row["loss"]):
            raise FloatingPointError(f"non-finite loss at step {step}; no checkpoint is written after it")
        gnorm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
        gnorm = gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm
        opt.step()
        opt.zero_grad(set_to_none=True)
        row.update(step=step + 1, lr=lr_at(step, cfg), grad_norm=float(gnorm), t_update=time.time() - t0)
        if rank == 0:
            metrics_f.write(json.dumps(summarize(row)) + "\n")
            metrics_f.flush()
            shown = ("acc", "all_wrong_before", "all_wrong_after", "loss")
            bar.set_postfix({k: f"{v:.3g}" for k, v in summarize(row).items() if k in shown})
        last = step + 1 == cfg.steps
        if (step + 1) % cfg.save_every == 0 or last:
            save(policy, tok, cfg, step + 1, rank)
        if cfg.eval_limit and ((cfg.eval_every and (step + 1) % cfg.eval_every == 0) or last):
            res = evaluate(policy, tok, cfg)
            lo, hi = res["ci95"]
            log(f"step {step + 1}: test {res['metric']} {res['accuracy']:.3f} (95% CI {lo:.3f}-{hi:.3f})")
            if rank == 0:
                metrics_f.write(json.dumps(dict(step=step + 1, eval=res)) + "\n")
                metrics_f.flush()
    if dist.is_initialized():
        dist.destroy_process_group()


def reduce_metrics(sums, world):
    """Sum the per-rank metric sums over ranks (times are maxed: the slowest rank sets the pace)."""
    keys = sorted(sums)
    t = torch.tensor([float(sums[k]) for k in keys], dtype=torch.float64)
    if world > 1:
        times = torch.tensor([float(k.startswith("t_")) for k in keys], dtype=torch.bool)
        mx = torch.where(times, t, 0.0)
        dist.all_reduce(t)
        dist.all_reduce(mx, op=dist.ReduceOp.MAX)
        t = torch.where(times, mx, t)
    return dict(zip(keys, t.tolist()))


def summarize(r):
    """Metrics row of one optimizer step (rollout metrics only on steps that drew a rollout batch)."""
    kept = max(r["kept"], 1)
    out = dict(step=r["step"], loss=r["loss"], kl=r["kl"] / kept, clip_frac=r["clipped"] / kept,
               grad_norm=r["grad_norm"], lr=r["lr"], t_update=r["t_update"])
    if "rollouts" in r:
        n, g = r["rollouts"], r["groups"]
        out.update(acc=r["correct"] / n, acc_after=r["correct_after"] / n, reward=r["reward"] / n,
                   format=r["format"] / n,
                   all_wrong_before=r["all_wrong_before"] / g, all_wrong_after=r["all_wrong_after"] / g,
                   rescued=r["rescued"] / max(r["all_wrong_before"], 1), replaced=r["replaced"],
                   hint_frac=r["hint_tokens"] / max(r["loss_tokens"], 1), comp_len=r["comp_len"] / n,
                   ent_hint=r["ent_hint"] / max(r["n_hint"], 1), ent_gen=r["ent_gen"] / max(r["n_gen"], 1),
                   nfe=r["nfe"], t_rollout=r["t_rollout"], t_inpaint=r["t_inpaint"], t_logp=r["t_logp"],
                   tokens_per_s=r["comp_len"] / max(r["t_rollout"] + r["t_inpaint"], 1e-9))
    return out


def save(policy, tok, cfg, step, rank):
    """HF-format checkpoint of the policy at out_dir/step-N (atomic: model.save writes a temp dir and renames)."""
    sd = launch.full_state_dict(policy)
    if rank == 0:
        with torch.device("meta"):
            plain = M.LLaDA(policy.config)
        plain.load_state_dict(sd, assign=True)
        M.save(plain, tok, os.path.join(cfg.out_dir, f"step-{step}"),
               extra_files={"igpo_config.json": asdict(cfg), "trainer_state.json": {"step": step}})
    if dist.is_initialized():
        dist.barrier()


def evaluate(policy, tok, cfg):
    """Greedy test accuracy with eval.py's protocol: the embedded task's test split, else GSM8K test."""
    import eval as E
    policy.eval()
    if cfg.data == "task":
        items, proto, messages = data.task_splits()["test"], E.protocol("task"), data.task_messages
    else:
        items, proto, messages = data.load_split("gsm8k", "test"), E.protocol("gsm8k"), data.build_messages
    return E.evaluate(policy, tok, items[:cfg.eval_limit], proto, messages=messages, batch_size=cfg.micro_batch,
                      seed=cfg.seed, desc="eval")


if __name__ == "__main__":
    train(launch.parse_config(Config, PRESETS, doc=__doc__))
