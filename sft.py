"""Masked-diffusion SFT of LLaDA on (prompt, response) pairs, and the concise-trace rewriting that feeds it.

Loss: LLaDA's SFT objective (arXiv 2502.09992, Eq. (5); IGPO arXiv 2509.10396, Eq. (1)). The prompt stays clean;
each sample draws t ~ U(0, 1), p = (1 - eps) t + eps, and masks each response token with probability p; the
cross-entropy of the masked tokens, weighted 1/p, is summed per sample, divided by that sample's response length
(EOS padding included, as LLaDA's SFT), and averaged over the batch. IGPO's "length-aligned" SFT trains on traces
rewritten by a strong LM into concise steps (<= ~1k tokens, the RL generation budget): `--rewrite_model`.

Deviations (paper/LLaDA = P, d1's SFT code = D):
 1. --loss_norm sample (P) divides each sample by its own response length; D (`--loss_norm batch`) divides the
    batch sum by the batch's response-token count, so long answers weigh more. Both are normalised over the global
    batch, so the loss is independent of micro-batch and world size (D normalises per device micro-batch).
 2. t and the masks are drawn per sample from a generator seeded by (seed, step, slot in the global batch): runs
    are reproducible, resume exactly, and give the same update on any world size (P, D: global RNG).
 3. Prompts are left-padded (masked keys) and responses padded with EOS to --resp_len (0: longest in the
    micro-batch), so a row is the sampler's canvas; P right-pads whole rows and uses no attention mask. RoPE is
    relative, so a left-padded row equals its unpadded row up to rounding.
 4. Full fine-tuning under FSDP2 (D: LoRA r=128 on q/k/v). Values IGPO does not state are LLaDA's SFT ones.
Launch:  python sft.py && for k in 2 3 4; do python sft.py --preset task-$k; done   # the task's start (~2 h)
         torchrun --nproc_per_node=8 sft.py --preset paper --data runs/concise.jsonl
         python sft.py --preset paper --data math --rewrite_model PATH --rewrite_out runs/concise.jsonl
Shapes: B batch, L padded length (P prompt + R response), V vocab.
"""
import json
import math
import os
import time
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

import data
import launch
import model as M
import reward
import sample


@dataclass
class Config:  # a comment starting with [lo, hi] or {a|b} is the field's domain, checked at start-up (launch.domain)
    data: str = "math"               # task[:w1,..,w7] (embedded SFT, lengths 1..7 mixed) | math (GSM8K+MATH) | x.jsonl | hub
    model: str = "GSAI-ML/LLaDA-8B-Instruct"  # HF-format dir / hub id to fine-tune; "scratch" = data.TASK_MODEL
    out_dir: str = "checkpoints/sft"  # checkpoint dir (HF format + optim.pt + trainer_state.json)
    max_len: int = 1024              # [1, inf) response tokens kept, EOT included (paper: concise traces <= ~1k)
    too_long: str = "drop"           # {drop|truncate} longer responses: drop (the paper filters them) | truncate
    resp_len: int = 0                # [0, inf) EOS-pad responses to this length (the RL gen_length); 0 = the longest
    max_samples: int = 0             # [0, inf) use the first N pairs (0 = all)
    epochs: float = 3.0              # (0, inf) passes over the data (LLaDA SFT: 3)
    steps: int = 0                   # [0, inf) optimizer steps; 0 = derived from epochs
    global_batch: int = 256          # [1, inf) sequences per optimizer step, any world size (LLaDA SFT: 256)
    micro_batch: int = 2             # [1, inf) sequences per rank per forward; accumulation = global / (world x micro)
    lr: float = 2.5e-5               # [0, inf) peak AdamW lr (LLaDA SFT; not stated in IGPO)
    min_lr_ratio: float = 0.1        # [0, 1] final lr = ratio x lr (LLaDA SFT decays to 2.5e-6)
    warmup: int = 50                 # [0, inf) linear warmup steps, then cosine decay to min_lr_ratio x lr (LLaDA: 50)
    weight_decay: float = 0.1        # [0, inf) AdamW (LLaDA, d1)
    grad_clip: float = 1.0           # (0, inf) max global grad norm (d1)
    eps: float = 1e-3                # [0, 1) mask-probability floor of Eq. (1) (LLaDA)
    loss_norm: str = "sample"        # {sample|batch} sample (paper, LLaDA) | batch (d1); deviation 1
    lora_rank: int = 0               # [0, inf) LoRA rank on the block projections; 0 = full fine-tuning (d1's SFT: 128)
    lora_alpha: float = 64.0         # (0, inf) LoRA scale alpha / rank
    lora_dropout: float = 0.05       # [0, 1) dropout on the adapter's input
    lora_targets: str = "q_proj,k_proj,v_proj,up_proj"  # adapted projections (model.LORA_ALL: all seven)
    bf16: bool = True                # on: bf16 autocast on GPU (fp32 params and optimizer); off: fp32. CPU: fp32
    grad_ckpt: bool = True           # on: recompute blocks in backward (needed at 8B); off: keep activations
    seed: int = 0                    # [0, inf) init, data order and mask draws
    log_every: int = 10              # [1, inf) steps between log lines
    save_every: int = 500            # [1, inf) steps between checkpoints (and one at the end)
    stop_at: int = 0                 # [0, inf) stop (after saving) at this step without changing the schedule; 0 = off
    resume: bool = False             # on: continue from out_dir's checkpoint (weights, optimizer, step); off: fresh
    rewrite_model: str = ""          # a transformers causal LM: rewrite the traces of --data, write --rewrite_out
    rewrite_out: str = "runs/rewritten.jsonl"  # output of the rewriting (keys id, question, answer, solution)
    rewrite_cap: int = 1024          # [1, inf) drop rewritten traces longer than this many rewriter tokens (paper ~1k)
    max_bad_steps: int = 3           # [1, inf) non-finite steps are skipped; this many in a row stop the run
    dist_timeout: int = 1800         # [1, inf) seconds a collective may wait (a dead or hung rank) before all fail


# The no-flag run: a 0.9M-param LLaDA from scratch on the embedded task (data.py); rows = the RL sampler's canvas.
# The task's start is four runs, each a warm restart from the last one's weights with a fresh AdamW: "task" (4,000
# steps), "task-2" (2,500 at half the lr), "task-3" (1,500 at a quarter, 6- and 7-step chains 5x as often), "task-4"
# (task-3 again): each stage alone leaves the start short (val sound pass@1 0.02, then right => sound 71% at 5 steps,
# then 79-87% at 5-6; after task-4 98% and 92% at 5 and 6 steps on 128 RL prompts; docs/task.md).
TASK_STAGES = ("runs/task-sft-stage1", "runs/task-sft-stage2", "runs/task-sft-stage3", "checkpoints/task-sft")
PRESETS = {"task": dict(data="task", model="scratch", out_dir=TASK_STAGES[0],
                        max_len=data.TASK_SAMPLING["gen_length"], resp_len=data.TASK_SAMPLING["gen_length"],
                        steps=4000, global_batch=64, micro_batch=64, lr=2e-3, warmup=50, min_lr_ratio=0.05,
                        weight_decay=0.0, grad_ckpt=False, log_every=50, save_every=1000),
           "paper": {}}
PRESETS["task-2"] = dict(PRESETS["task"], model=TASK_STAGES[0], out_dir=TASK_STAGES[1], steps=2500, lr=1e-3)
PRESETS["task-3"] = dict(PRESETS["task"], data="task:1,1,1,1,1,1,0.5", model=TASK_STAGES[1], out_dir=TASK_STAGES[2],
                         steps=1500, lr=5e-4)
PRESETS["task-4"] = dict(PRESETS["task-3"], model=TASK_STAGES[2], out_dir=TASK_STAGES[3])

REWRITE_PROMPT = ("Rewrite this solution as concise steps, one short line each, same final answer, ending with "
                  "\\boxed{{ANSWER}}.\n\nProblem: {question}\n\nSolution: {solution}\n\nAnswer: {answer}\n\nConcise:")


def train_task_start(out_dir):
    """The embedded task's start in out_dir: presets "task" .. "task-4", each from the last one's weights."""
    train(parse_config([]))
    for k in (2, 3):
        train(parse_config(["--preset", f"task-{k}"]))
    train(parse_config(["--preset", "task-4", "--out_dir", out_dir]))


def parse_config(argv=None):
    """Config() (the paper's setting) <- --preset (default "task") <- flags; --help lists every field."""
    return launch.parse_config(Config, PRESETS, argv, doc=__doc__)


def sft_loss(model, input_ids, prompt_len, *, mask_id, attention_mask=None, eps=1e-3, t=None, mask=None,
             generator=None, norm="sample", denom=None):
    """Masked-diffusion SFT loss (module docstring). input_ids (B, L) clean; prompt_len (B,): row b's response
    starts at column prompt_len[b] (all before it, left padding too, is prompt: never masked); attention_mask
    (B, L) key padding or None. t (B,), mask (B, L) bool: explicit draws, else drawn from `generator`.
    denom replaces B ("sample") or the response-token count ("batch"): micro-batches then sum to the batch loss."""
    B, L = input_ids.shape
    is_resp = torch.arange(L, device=input_ids.device)[None, :] >= prompt_len[:, None]    # (B, L)
    t = torch.rand(B, generator=generator, device=input_ids.device) if t is None else t
    p = (1 - eps) * t + eps                                                                # (B,)
    mask = torch.rand(B, L, generator=generator, device=input_ids.device) < p[:, None] if mask is None else mask
    mask = mask & is_resp                                                                  # prompt never masked
    logits = model(torch.where(mask, mask_id, input_ids), attention_mask=attention_mask)  # (B, L, V)
    ce = F.cross_entropy(logits[mask].float(), input_ids[mask], reduction="none")         # (n_masked,)
    w = (1.0 / p)[:, None].expand(B, L)[mask]
    if norm == "sample":
        resp_len = is_resp.sum(1, keepdim=True).expand(B, L)[mask]
        return (ce * w / resp_len).sum() / (B if denom is None else denom)  # Eq. (1)
    assert norm == "batch", norm
    return (ce * w).sum() / (is_resp.sum() if denom is None else denom)  # d1's normalisation


def load_items(spec, split="train"):
    """Items with keys question, answer, solution (the format of data.py's loaders), or prompt/response."""
    if spec.split(":")[0] == "task":  # task:w1,..,w7: relative frequency of chain lengths 1..7
        return data.task_splits(tuple(float(w) for w in spec[5:].split(",")) if ":" in spec else None)["sft"]
    if spec == "math":
        return data.load_split("gsm8k", "train") + data.load_split("math", "train")
    if spec.endswith(".jsonl"):  # errors name the file, the line and the missing field
        return data.read_jsonl(spec, ("prompt", "response"), ("question", "answer", "solution"))
    import datasets  # a hub dataset with question/answer/solution or prompt/response columns
    return list(datasets.load_dataset(spec, split=split))


def tokenize_pairs(items, tokenizer, cfg, log=print):
    """[(prompt_ids, response_ids)]: the chat template renders the full conversation, the response is what follows
    the generation prompt (content + <|eot_id|> for LLaDA). Over-long responses are dropped or truncated."""
    pairs, n_long = [], 0
    for item in items[:cfg.max_samples or None]:
        msgs = ([{"role": "user", "content": item["prompt"]}] if "prompt" in item else
                (data.task_messages if cfg.data.split(":")[0] == "task" else data.build_messages)(item["question"]))
        prompt = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(msgs + [{"role": "assistant", "content": data.format_response(item)}],
                                             tokenize=False)
        assert full.startswith(prompt), "chat template: the conversation must extend the generation prompt"
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        r_ids = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
        if len(r_ids) > cfg.max_len:
            n_long += 1
            if cfg.too_long == "drop":
                continue
            r_ids = r_ids[:cfg.max_len]
        pairs.append((p_ids, r_ids))
    log(f"data: {len(pairs)} pairs; {n_long} responses over max_len={cfg.max_len} ({cfg.too_long})")
    return pairs


def collate(pairs, idx, step, cfg, eos_id):
    """Rows [left pad][prompt][response, EOS to resp_len] (deviation 3), per-sample draws (deviation 2); idx: slots in
    the global batch. Returns input_ids, attention_mask (B, P + R), prompt_len (B,) (all P), t (B,), mask (B, P + R)."""
    P, R = max(len(p) for p, _ in pairs), cfg.resp_len or max(len(r) for _, r in pairs)
    ids = torch.full((len(pairs), P + R), eos_id, dtype=torch.long)
    attn, mask, t = torch.zeros_like(ids), torch.zeros(ids.shape, dtype=torch.bool), torch.empty(len(pairs))
    for i, ((p, r), j) in enumerate(zip(pairs, idx)):
        ids[i, P - len(p):P], attn[i, P - len(p):] = torch.tensor(p), 1
        ids[i, P:P + min(len(r), R)] = torch.tensor(r[:R])
        g = torch.Generator().manual_seed(launch.seed(cfg.seed, "sft_mask", step, j))
        t[i] = torch.rand((), generator=g)
        mask[i, P:] = torch.rand(R, generator=g) < (1 - cfg.eps) * t[i] + cfg.eps
    return ids, attn, torch.full((len(pairs),), P), t, mask


def build_model(cfg):
    """(model, tokenizer) in fp32 on CPU: resumed, loaded, or a fresh tiny LLaDA for the task; --lora_rank adds
    adapters (a LoRA resume reloads the base and the saved adapter: the checkpoint's own weights are merged)."""
    resuming = cfg.resume and os.path.exists(os.path.join(cfg.out_dir, "trainer_state.json"))
    if resuming and cfg.lora_rank:
        model, tok = launch.load_model(cfg.model)
        return M.load_adapter(model, os.path.join(cfg.out_dir, "adapter")), tok
    if resuming or cfg.model != "scratch":
        model, tok = launch.load_model(cfg.out_dir if resuming else cfg.model)
    else:
        tok = data.task_tokenizer()
        mc = M.ModelConfig(**data.task_model_fields(tok))
        model = M.LLaDA(mc).init_weights(generator=torch.Generator().manual_seed(cfg.seed))
    targets = tuple(cfg.lora_targets.split(","))
    return M.add_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, targets), tok


def train(cfg):
    """SFT with exact resume: the draws are functions of the step (deviation 2), so a checkpoint needs only the
    weights, the optimizer and the step. SIGTERM finishes the step, saves and exits 0; a non-finite step is skipped."""
    rank, world, device = launch.setup_dist(cfg.dist_timeout)
    log = print if rank == 0 else (lambda *a, **k: None)
    per_rank, accum = cfg.global_batch // world, cfg.global_batch // (world * cfg.micro_batch)
    launch.usage_error([f"--global_batch {cfg.global_batch} not divisible by world {world} x --micro_batch "
                        f"{cfg.micro_batch}"] if accum * world * cfg.micro_batch != cfg.global_batch else [])
    try:  # bad data fails here, naming file, line and field, before a model is loaded
        items = load_items(cfg.data)
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(f"--data {cfg.data}: {e}") from None
    log(json.dumps(asdict(cfg), indent=1))
    if cfg.resume:
        launch.recover(cfg.out_dir)
    resuming = cfg.resume and os.path.exists(os.path.join(cfg.out_dir, "trainer_state.json"))
    if resuming and (problem := launch.broken(cfg.out_dir)):  # sft.py keeps one checkpoint: nothing to fall back to
        raise SystemExit(f"{problem}: damaged checkpoint, cannot resume; move {cfg.out_dir} away to start afresh")
    state = launch.resume_state(cfg.out_dir if resuming else None, cfg.model)  # a LoRA resume reloads the base
    model, tok = build_model(cfg)
    pairs = tokenize_pairs(items, tok, cfg, log)
    total = cfg.steps or math.ceil(cfg.epochs * len(pairs) / cfg.global_batch)
    log(f"world {world} x micro_batch {cfg.micro_batch} x accumulation {accum} = global batch {cfg.global_batch}; "
        f"{total} steps; {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params")
    model.gradient_checkpointing = cfg.grad_ckpt
    model = launch.fsdp(model.to(device).train(), device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    start = state["step"]
    if start:  # build_model loaded the weights; the data order and the draws are functions of the step
        launch.load_optimizer(model, opt, cfg.out_dir)
        log(f"resumed from {cfg.out_dir} at step {start}")
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.bf16 and device.type == "cuda")
    launch.catch_sigterm()
    t0 = time.time()
    for step in range(start, total):
        idx = launch.data_order(len(pairs), cfg.seed, range(step * cfg.global_batch, (step + 1) * cfg.global_batch))
        mine = list(range(rank * per_rank, (rank + 1) * per_rank))  # positions in the global batch
        micro = [collate([pairs[idx[j]] for j in mine[k:k + cfg.micro_batch]], mine[k:k + cfg.micro_batch], step,
                         cfg, tok.eos_token_id) for k in range(0, per_rank, cfg.micro_batch)]
        denom = torch.tensor(float(cfg.global_batch), device=device)  # on the device: NCCL reduces nothing else
        if cfg.loss_norm == "batch":  # response tokens (EOS padding included) of the whole global batch
            denom = launch.all_sum(sum((ids.shape[1] - plen).sum() for ids, _, plen, *_ in micro).float().to(device))
        lr = launch.lr_at(step, total, cfg.lr, cfg.warmup, cfg.min_lr_ratio, decay="cosine")  # LLaDA's SFT schedule
        for g in opt.param_groups:
            g["lr"] = lr
        torch.manual_seed(launch.seed(cfg.seed, "dropout", step, rank))  # LoRA dropout: a function of the step
        loss_sum = torch.zeros((), device=device)
        for k, (ids, attn, plen, t, mask) in enumerate(micro):
            if world > 1:
                model.set_requires_gradient_sync(k == accum - 1)  # reduce-scatter once per step
            with amp:
                loss = sft_loss(model, ids.to(device), plen.to(device), attention_mask=attn.to(device), t=t.to(device),
                                mask=mask.to(device), mask_id=model.config.mask_token_id, eps=cfg.eps,
                                norm=cfg.loss_norm, denom=denom)
            (loss * world).backward()  # FSDP averages gradients over ranks; the loss is already a global mean
            loss_sum += loss.detach()
        launch.all_sum(loss_sum)
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        gnorm = float(gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm)  # a DTensor under FSDP
        ok = launch.step_ok(loss_sum.item(), gnorm, state, cfg.max_bad_steps)
        if ok:  # a non-finite step is skipped: no update
            opt.step()
        opt.zero_grad(set_to_none=True)
        if (step + 1) % cfg.log_every == 0 or step + 1 == total or not ok:
            log(f"step {step + 1}/{total} loss {loss_sum.item():.4f} lr {lr:.2e} "
                f"gnorm {gnorm:.3f}{'' if ok else ' skipped (non-finite)'} {time.time() - t0:.0f}s")
        stop = launch.stop_requested(device)
        state["step"] = step + 1
        if step + 1 in (total, cfg.stop_at) or (step + 1) % cfg.save_every == 0 or stop:  # weights, optimizer, state
            launch.save_checkpoint(model, tok, cfg.out_dir, opt=opt,
                                   extra_files={"sft_config.json": asdict(cfg), "trainer_state.json": state})
        if step + 1 == cfg.stop_at or stop:
            log(f"stopped at step {step + 1}{' (SIGTERM)' if stop else ''}; --resume on continues from it")
            break
    log(f"saved {cfg.out_dir}; {time.time() - t0:.0f}s")
    if dist.is_initialized():
        dist.destroy_process_group()


def rewrite(cfg):
    """Rewrite the traces of cfg.data with a causal LM (greedy) into concise steps; keep a sample only if the rewrite
    fits rewrite_cap tokens and its \\boxed answer is equivalent to the gold one (reward.is_equiv)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(cfg.rewrite_model)
    lm = AutoModelForCausalLM.from_pretrained(cfg.rewrite_model).eval()
    items, kept, n_cap, n_wrong = load_items(cfg.data)[:cfg.max_samples or None], [], 0, 0
    for it in items:
        text = REWRITE_PROMPT.format(question=it["question"], solution=it["solution"], answer=it["answer"])
        if tok.chat_template:
            text = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                           tokenize=False)
        enc = tok(text, return_tensors="pt", add_special_tokens=not tok.chat_template)
        with torch.no_grad():  # one token past the cap tells an over-long rewrite
            row = lm.generate(**enc, max_new_tokens=cfg.rewrite_cap + 1, do_sample=False,
                              pad_token_id=tok.pad_token_id or tok.eos_token_id)[0, enc["input_ids"].shape[1]:]
        row = sample.until_stop(row, {tok.eos_token_id})
        out = tok.decode(row, skip_special_tokens=True).strip()
        if len(row) > cfg.rewrite_cap:
            n_cap += 1
        elif not reward.is_equiv(reward.extract_answer(out), it["answer"]):
            n_wrong += 1  # the rewrite changed the final answer: drop the sample
        else:
            kept.append({"id": it.get("id"), "question": it["question"], "answer": it["answer"], "solution": out})
    os.makedirs(os.path.dirname(os.path.abspath(cfg.rewrite_out)), exist_ok=True)
    with open(cfg.rewrite_out + ".tmp", "w") as f:
        f.writelines(json.dumps(x) + "\n" for x in kept)
    os.replace(cfg.rewrite_out + ".tmp", cfg.rewrite_out)
    print(f"rewrite: kept {len(kept)}/{len(items)}; dropped {n_cap} over {cfg.rewrite_cap} tokens, "
          f"{n_wrong} with a changed answer -> {cfg.rewrite_out}")
    return kept


if __name__ == "__main__":
    config = parse_config()
    rewrite(config) if config.rewrite_model else train(config)
    launch.exit_worker()
