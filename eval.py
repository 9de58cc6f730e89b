"""Benchmark evaluation of a LLaDA checkpoint: GSM8K and MATH500 (pass@1, greedy), AMC23 / AIME24 (avg@16, T=0.1).

Generates with LLaDA's semi-autoregressive low-confidence remasking (sample.generate; LLaDA/d1 protocol: 256 new
tokens, blocks of 32, gen_length/2 steps, temperature 0), takes the last \\boxed{} of each completion and judges it
with reward.is_equiv: the evaluation protocol of the IGPO paper (arXiv 2509.10396), which follows d1 and LLaDA.
Deviations:
 1. Answers are judged by math-verify (reward.py), not by d1's per-benchmark string parsers.
 2. Problems are sharded round-robin over ranks (data.shard): ranks may hold one problem more than others; that
    is harmless because generation uses no collective and the rows are gathered once, with all_gather_object.
 3. Each (problem, sample) has its own seeded generator, so scores do not depend on batch size, world size or
    resumption (d1 draws from the global RNG).
 4. The 95% interval is Wilson's over problems; for avg@k it treats each per-problem mean as a fractional
    success, which is conservative.
Launch:  python eval.py                              # embedded task: checkpoints/task-sft or a random tiny LLaDA, CPU
         python eval.py --preset paper --model DIR   # GSM8K, MATH500, AMC23 on one device
         torchrun --nproc_per_node=8 eval.py --preset paper --model DIR --gen_length 512
Output (OUT = --out_dir): OUT/{bench}.jsonl, one row per (problem, sample): id, sample, prompt, completion,
extracted, gold, correct, format, sound (task: every reasoning line right); OUT/{bench}.summary.json: accuracy,
ci95, sound_accuracy and sound_ci95 (task), n, settings, model. Resumable: rows already in OUT/{bench}.jsonl, or in
a crashed run's OUT/{bench}.jsonl.rank*.part, are not generated again.
"""
import glob
import json
import math
import os
import time
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
from tqdm import tqdm

import data
import launch
import model as M
import reward
import sample as S


@dataclass
class Config:  # a comment starting with [lo, hi] or {a|b} is the field's domain, checked at start-up (launch.domain)
    model: str = "GSAI-ML/LLaDA-8B-Instruct"  # HF dir / hub id; auto = checkpoints/task-sft, else scratch (random)
    bench: str = "gsm8k,math500,amc23"   # comma list of gsm8k | math500 | amc23 | aime24 | task | task-<n>[b<k>]
    gen_length: int = None               # [1, inf) new tokens; None = 256 (LLaDA protocol), task: data.TASK_SAMPLING
    block_length: int = None             # [1, inf) semi-AR block; None = 32 (LLaDA, d1), task: data.TASK_SAMPLING
    steps: int = None                    # [1, inf) denoising steps; None = gen_length // 2 (d1), task: TASK_SAMPLING
    threshold: float = None              # [0, 1] commit every token with confidence >= this (Fast-dLLM; steps unused);
                                         # None = LLaDA's steps (0 turns the task's off), task: TASK_SAMPLING
    temperature: float = None            # [0, inf) Gumbel temperature; None = 0 (greedy), AMC23/AIME24: 0.1 (paper)
    samples: int = None                  # [1, inf) samples per problem; None = 1 (pass@1), AMC23/AIME24: 16 (avg@16)
    remasking: str = "low_confidence"    # {low_confidence|random} LLaDA remasking
    prefill: bool = True                 # on: start every answer with "<reasoning>" (d1 eval --add_reasoning; never
                                         # for task); off: the model writes it
    batch_size: int = 8                  # [1, inf) sequences per generate() call on each rank
    limit: int = 0                       # [0, inf) evaluate the first N problems of each benchmark (0 = all)
    data_dir: str = ""                   # folder with the benchmark JSONL files; "" = ../shared/data (data.DATA_DIR)
    out_dir: str = ""                    # per-problem JSONL and summaries; "" = runs/eval/<model folder name>
    seed: int = 0                        # [0, inf) seeds the per-(problem, sample) generators
    dtype: str = "auto"                  # {auto|bfloat16|float32} weights dtype: auto = bfloat16 on GPU, float32 on CPU


# No flags: the embedded task on a CPU (100 test problems: ~1 min on 2 free cores); `--preset paper`: the paper's.
PRESETS = {"task": dict(model="auto", bench="task", limit=100, batch_size=50), "paper": {}}


def protocol(bench, gen_length=None, block_length=None, steps=None, temperature=None, samples=None,
             remasking="low_confidence", prefill=True, threshold=None):
    """Generation settings of one benchmark; an argument that is not None overrides the benchmark's default."""
    p = dict(gen_length=256, block_length=32, steps=None, temperature=0.0, samples=1, threshold=None)
    if bench in ("amc23", "aime24"):
        p.update(temperature=0.1, samples=16)  # avg@16 at T = 0.1 (IGPO paper, AMC)
    if bench.startswith("task"):
        p.update({k: data.TASK_SAMPLING[k] for k in ("gen_length", "block_length", "steps", "threshold")})
    given = dict(gen_length=gen_length, block_length=block_length, steps=steps, temperature=temperature,
                 samples=samples, threshold=threshold)
    p.update({k: v for k, v in given.items() if v is not None})
    if p["steps"] is None or (gen_length is not None and steps is None):
        p["steps"] = p["gen_length"] // 2  # 2 tokens per step (LLaDA/d1 at 256 tokens: 128 steps)
    p["threshold"] = p["threshold"] or None  # 0: off
    p.update(remasking=remasking, prefill=data.REASONING_PREFILL if prefill and not bench.startswith("task") else "")
    return p


def load_items(bench, data_dir="", limit=0):
    """(the first `limit` (0: all) test problems of `bench`, their chat-message builder)."""
    if bench.startswith("task"):  # the task's test split, or a difficulty level's test set (data.task_level)
        items = data.task_level(bench, "test")
        return items[:limit or None], data.task_messages
    src = os.path.join(data_dir, data.BENCHMARKS[bench]["file"].format(split="test")) if data_dir else None
    return data.load_split(bench, "test", source=src)[:limit or None], data.build_messages


def stop_ids(tokenizer):
    """The ids that end a completion: EOS and <|eot_id|> (LLaDA-Instruct ends its turn with the latter)."""
    return {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|eot_id|>")} - {None, tokenizer.unk_token_id}


def read_rows(path):
    """{(id, sample): row} from path and the .rank*.part files of a crashed run; a torn last line is skipped."""
    rows = {}
    for f in sorted(glob.glob(glob.escape(path) + ".rank*.part")) + [path]:
        if os.path.exists(f):
            for line in open(f, encoding="utf-8"):
                try:
                    r = json.loads(line)
                    rows[(r["id"], r["sample"])] = r
                except (json.JSONDecodeError, KeyError, TypeError):
                    pass
    return rows


def wilson(p, n, z=1.96):
    if n == 0:
        return [0.0, 1.0]
    d = 1 + z * z / n
    c, h = (p + z * z / (2 * n)) / d, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return [max(0.0, c - h), min(1.0, c + h)]


def evaluate(model, tokenizer, items, proto, *, out_path=None, messages=data.build_messages, batch_size=8,
             seed=0, desc="eval"):
    """Generate, score and summarise `items` ({id, question, answer}) under `proto` (see protocol()). Call it on
    every rank with the same items: each generates its shard, rows are gathered, and every rank returns the same
    summary dict (accuracy, ci95, n_problems, n_samples, format_reward, metric). out_path: JSONL to resume from and
    to write (rank 0); None = in memory only (igpo.py's periodic evaluation)."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    device = next(model.parameters()).device
    reward.warmup()
    done = read_rows(out_path) if out_path else {}
    units = [(it, s) for it in data.shard(items, rank, world) for s in range(proto["samples"])
             if (it["id"], s) not in done]
    if done and rank == 0:  # resumed: rows a killed run wrote are kept, not generated again
        print(f"{desc}: {len(done)} rows already in {out_path}*; rank 0 generates {len(units)}")
    part = open(f"{out_path}.rank{rank}.part" if out_path and units else os.devnull, "a", encoding="utf-8")
    new, bar = [], tqdm(total=len(units), desc=f"{desc} (rank 0 of {world})", disable=rank != 0)
    model.eval()
    stops = stop_ids(tokenizer)
    n_batches = launch.all_max(math.ceil(len(units) / batch_size), device)  # FSDP (igpo.py): all ranks, all forwards
    for i in range(0, n_batches * batch_size, batch_size):
        batch = units[i:i + batch_size]
        convs = [messages(it["question"]) for it, _ in batch or [(items[0], 0)]]  # none left: a dummy row, not kept
        ids, attn = M.encode_chat(tokenizer, convs, prefill=proto["prefill"], device=device)  # (b, P)
        gens = [torch.Generator(device).manual_seed(launch.seed(seed, "eval", it["id"], s))
                for it, s in batch] or None  # per (problem, sample): independent of batching and world size
        out = S.generate(model, ids, attention_mask=attn, gen_length=proto["gen_length"],
                         block_length=proto["block_length"], steps=proto["steps"], temperature=proto["temperature"],
                         remasking=proto["remasking"], generator=gens, early_exit=True, stop_ids=stops,
                         threshold=proto["threshold"],
                         lockstep=launch.lockstep(device))  # (b, P + gen_length); the text to a stop is exact
        for (it, s), conv, row_ids in zip(batch, convs, out[:, ids.shape[1]:].tolist()):
            text = tokenizer.decode(S.until_stop(row_ids, stops), skip_special_tokens=True)  # up to the first stop
            text = proto["prefill"] + text  # the prefill is part of the answer's format
            pred = reward.extract_answer(text)
            row = dict(id=it["id"], sample=s, completion=text, extracted=pred, gold=it["answer"],
                       correct=reward.is_equiv(pred, it["answer"]), format=reward.format_reward(text),
                       sound=data.task_sound(it["question"], text) if it["id"].startswith("task") else None,
                       prompt=tokenizer.apply_chat_template(conv, add_generation_prompt=True, tokenize=False))
            new.append(row)
            part.write(json.dumps(row) + "\n")
        part.flush()
        bar.update(len(batch))
    bar.close()
    part.close()
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, new)  # ranks hold different counts: lists of any length are fine
        new = [r for g in gathered for r in g]
    done.update({(r["id"], r["sample"]): r for r in new})
    k = proto["samples"]
    keys = [(it["id"], s) for it in items for s in range(k)]
    rows = [done[key] for key in keys]  # problem order, then sample order
    if out_path and rank == 0:  # keep every row ever written (also of problems outside this run's --limit)
        ours = set(keys)
        with open(out_path + ".tmp", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows + [r for key, r in done.items() if key not in ours])
        os.replace(out_path + ".tmp", out_path)
        for f in glob.glob(glob.escape(out_path) + ".rank*.part"):
            os.remove(f)
    per_problem = [sum(r["correct"] for r in rows[j:j + k]) / k for j in range(0, len(rows), k)]
    acc = sum(per_problem) / max(1, len(per_problem))
    out = dict(metric="pass@1" if k == 1 else f"avg@{k}", accuracy=acc, ci95=wilson(acc, len(per_problem)),
               n_problems=len(items), n_samples=len(rows),
               format_reward=sum(r["format"] for r in rows) / max(1, len(rows)))
    if rows and rows[0].get("sound") is not None:  # the task: right with every reasoning line right
        sound = sum(bool(r["correct"] and r["sound"]) for r in rows) / len(rows)
        out.update(sound_accuracy=sound, sound_ci95=wilson(sound, len(per_problem)))
    return out


def sound_rows(tok, items, comp, G):
    """(B,) bool: completion ids comp[r] (G rows per item) reason soundly (data.task_sound); None off the task."""
    if not items or not items[0]["id"].startswith("task"):
        return None
    return torch.tensor([data.task_sound(items[r // G]["question"], tok.decode(c)) for r, c in enumerate(comp)])


def evaluate_fresh(model, tokenizer, bench, limit, out_path, batch_size=8, seed=0):
    """evaluate() on the first `limit` problems of `bench` with its protocol, discarding rows an earlier run left
    at out_path (evaluate would resume from them): igpo.py's evaluation of the policy during training."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        os.makedirs(os.path.dirname(out_path), exist_ok=True)
        for f in glob.glob(glob.escape(out_path)) + glob.glob(glob.escape(out_path) + ".rank*.part"):
            os.remove(f)
    if dist.is_initialized():
        dist.barrier()
    items, msgs = load_items(bench, limit=limit)
    return evaluate(model, tokenizer, items, protocol(bench), out_path=out_path, messages=msgs,
                    batch_size=batch_size, seed=seed)


def fmt_acc(res):
    lo, hi = res["ci95"]
    out = f"{res['metric']} {res['accuracy']:.3f} (95% CI {lo:.3f}-{hi:.3f}, n = {res['n_problems']})"
    if "sound_accuracy" in res:
        out += f", sound {res['sound_accuracy']:.3f} ({res['sound_ci95'][0]:.3f}-{res['sound_ci95'][1]:.3f})"
    return out


def check_settings(path, settings, rank):
    """Resuming is only sound under the same model and generation settings: refuse to mix, else record them."""
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if old != settings:
            raise SystemExit(f"{path}: the rows there were generated with {old}, not {settings}; "
                             "pass another --out_dir (or delete that folder)")
    elif rank == 0:
        with open(path + ".tmp", "w") as f:
            json.dump(settings, f)
        os.replace(path + ".tmp", path)  # atomic: another rank reads all of it or nothing


def build_model(cfg, device):
    """(model, tokenizer): a checkpoint, or a random tiny LLaDA with the task tokenizer ("scratch")."""
    if cfg.model == "auto":
        cfg.model = "checkpoints/task-sft" if os.path.exists("checkpoints/task-sft/config.json") else "scratch"
    dtype = {"auto": torch.bfloat16 if device.type == "cuda" else torch.float32, "bfloat16": torch.bfloat16,
             "float32": torch.float32}[cfg.dtype]
    if cfg.model != "scratch":
        return M.load(cfg.model, dtype=dtype, device=device)
    tok = data.task_tokenizer()
    mc = M.ModelConfig(**data.task_model_fields(tok))
    torch.manual_seed(cfg.seed)
    return M.LLaDA(mc).init_weights().to(device=device, dtype=dtype), tok


def main(argv=None):
    cfg = launch.parse_config(Config, PRESETS, argv, doc=__doc__)
    rank, world, device = launch.setup_dist()
    model, tok = build_model(cfg, device)
    cfg.out_dir = cfg.out_dir or os.path.join("runs", "eval", os.path.basename(cfg.model.rstrip("/")))
    if rank == 0:
        print(f"eval config (world {world}, {device}):", json.dumps(asdict(cfg)))
        os.makedirs(cfg.out_dir, exist_ok=True)
    results = {}
    for bench in cfg.bench.split(","):
        proto = protocol(bench, cfg.gen_length, cfg.block_length, cfg.steps, cfg.temperature, cfg.samples,
                         cfg.remasking, cfg.prefill, cfg.threshold)
        items, msgs = load_items(bench, cfg.data_dir, cfg.limit)
        out_path = os.path.join(cfg.out_dir, f"{bench}.jsonl")
        check_settings(out_path + ".settings.json", dict(model=cfg.model, seed=cfg.seed, **proto), rank)
        t0 = time.time()
        summ = evaluate(model, tok, items, proto, out_path=out_path,
                        messages=msgs, batch_size=cfg.batch_size, seed=cfg.seed, desc=bench)
        summ.update(bench=bench, model=cfg.model, settings=proto, config=asdict(cfg), world=world,
                    seconds=round(time.time() - t0, 1))
        results[bench] = summ
        if rank == 0:
            with open(os.path.join(cfg.out_dir, f"{bench}.summary.json"), "w") as f:
                json.dump(summ, f, indent=2)
            print(f"{bench}: {fmt_acc(summ)}, format reward {summ['format_reward']:.3f}")
    if dist.is_initialized():
        dist.destroy_process_group()
    return results


if __name__ == "__main__":
    main()
    launch.exit_worker()
