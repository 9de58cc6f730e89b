"""Datasets and prompt formatting shared by sft.py, igpo.py and eval.py, and the embedded task.

Real benchmarks (first part): GSM8K, MATH500, MATH train, AMC23 and AIME24, read in place from local JSONL
(../shared/data, provenance in its SOURCES.md; never copied into the repo) or, when online, from the HF hub; and
MetaMathQA, the official RL prompts (hub, or its MetaMathQA-395K.json): GSM_AnsAug + MATH_AnsAug rows, each
query once, the gold answer after "The answer is:" (igpo utils/data_utils.py get_metamath_questions).
Every loader returns a list of items {id, question, answer (gold str), solution (reference trace or None)}:
the trace is what IGPO's inpainting reveals chunks of, the answer is what reward.is_equiv checks.
The prompt is the official IGPO format instruction followed by the question, in LLaDA's chat template with
the generation prompt (model.encode_chat), optionally prefilled with `<reasoning>` (d1's eval).
The embedded task (a toy benchmark small enough to train on a CPU) is the second part of this file.

Deviations: 1. the MATH train split on the hub path is EleutherAI/hendrycks_math (7500 problems); the local file
holds PRM800K's 12000-problem train split (MATH train + 4500 MATH test problems not in MATH500).
2. GSM8K traces drop the `<<48/2=24>>` calculator annotations (as d1/IGPO SFT data do).
3. MetaMathQA: a response without "The answer is:" is skipped with a warning (official: the whole response, or
the text after "####", becomes the gold answer). The trace is the response before that line.
Use: `items = load_split("gsm8k", "test")`.
"""
import functools
import json
import random
import re
import warnings
from pathlib import Path

import reward

DATA_DIR = Path(__file__).resolve().parent.parent / "shared" / "data"  # ../shared/data, beside the repo

# The official IGPO format instruction (facebookresearch/igpo utils/data_utils.py SYSTEM_PROMPT) but for one char:
# O's plain Python string makes its "\boxed" a backspace (\b) + "oxed"; we send the \boxed its authors meant (O's
# exact text: SYSTEM_PROMPT.replace("\\b", "\b")). As in O and d1, it opens the user turn (no system turn).
SYSTEM_PROMPT = """
Respond in the following format:
<reasoning>
...
</reasoning>
<answer>
\\boxed{<Your answer>}
</answer>
"""
REASONING_PREFILL = "<reasoning>"  # d1 eval `--add_reasoning`: appended after the assistant header


def format_response(item):
    """SFT target (and inpainting reference) in the benchmark format, reward.format_reward's layout."""
    return item["response"] if "response" in item else \
        f"<reasoning>\n{item['solution']}\n</reasoning>\n<answer>\n\\boxed{{{item['answer']}}}\n</answer>"


def build_messages(question: str, system_prompt: str | None = SYSTEM_PROMPT) -> list[dict]:
    """Chat messages for one problem: [user: instruction + blank line + question] (IGPO / d1 layout)."""
    content = question if not system_prompt else system_prompt + "\n\n" + question
    return [{"role": "user", "content": content}]


# name -> local file ({split} filled in), hub id, hub config(s), hub split override, fields every row must have
MATH_SUBJECTS = ["algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
                 "prealgebra", "precalculus"]
BENCHMARKS = {
    "gsm8k": dict(file="gsm8k/{split}.jsonl", hub="openai/gsm8k", configs=["main"], fields=("question", "answer")),
    "math500": dict(file="math500/test.jsonl", hub="HuggingFaceH4/MATH-500", fields=("problem", "solution", "answer")),
    "math": dict(file="math/{split}.jsonl", hub="EleutherAI/hendrycks_math", configs=MATH_SUBJECTS,
                 fields=("problem", "solution")),
    "amc23": dict(file="amc23/test.jsonl", hub="math-ai/amc23", fields=("question", "answer")),
    "aime24": dict(file="aime24/test.jsonl", hub="HuggingFaceH4/aime_2024", hub_split="train",
                   fields=("problem", "answer")),
    "metamath": dict(file="metamath/{split}.jsonl", hub="meta-math/MetaMathQA", fields=("query", "response", "type")),
}
METAMATH_TYPES = ("GSM_AnsAug", "MATH_AnsAug")  # the official RL prompts: MetaMathQA's answer-augmented rows


def _to_item(name: str, split: str, i: int, row: dict) -> dict:
    """One raw row -> {id, question, answer, solution}; ValueError (with the reason) if it cannot be used."""
    if name == "gsm8k":
        trace, sep, gold = row["answer"].rpartition("####")
        if not sep:
            raise ValueError("no '#### <answer>' line")
        trace = re.sub(r"<<[^<>]*>>", "", trace).strip()  # calculator annotations: 2*3=<<2*3=6>>6 -> 2*3=6
        return dict(id=f"gsm8k-{split}-{i}", question=row["question"], answer=gold.strip().replace(",", ""),
                    solution=trace)
    if name == "math500":
        return dict(id=row.get("unique_id", f"math500-{i}"), question=row["problem"], answer=row["answer"],
                    solution=row["solution"])
    if name == "math":
        gold = reward.last_boxed(row["solution"])  # MATH has no answer field: the last \boxed{} is the gold
        if gold is None:
            return None  # well-formed but unusable: 2 train rows (lines 5342, 5344) hold an empty \boxed{}
        return dict(id=f"math-{split}-{i}", question=row["problem"], answer=gold, solution=row["solution"])
    if name == "amc23":  # the answer is a float (27.0); reward.is_equiv compares it numerically
        return dict(id=f"amc23-{row.get('id', i)}", question=row["question"], answer=str(row["answer"]), solution=None)
    if name == "aime24":
        return dict(id=f"aime24-{row.get('id', i)}", question=row["problem"], answer=str(row["answer"]),
                    solution=row.get("solution"))
    if name == "metamath":
        trace, sep, gold = row["response"].rpartition("The answer is:")
        if not sep or not gold.strip():
            return None  # deviation 3
        trace = re.sub(r"\n?#### [^\n]*$", "", trace.strip())  # GSM rows repeat the answer as "#### 10" first
        return dict(id=f"metamath-{split}-{i}", question=row["query"], answer=gold.strip(), solution=trace)
    raise KeyError(name)


def _local_rows(path: Path):
    """(line number, row) of a JSONL file, or of a .json array (MetaMathQA-395K.json as published) from 1; bad
    JSON or UTF-8 is a ValueError naming the file and the line."""
    if path.suffix == ".json":
        yield from enumerate(json.loads(path.read_text(encoding="utf-8")), 1)
        return
    with open(path, "rb") as f:  # bytes: a bad byte is reported with its line, not as a bare UnicodeDecodeError
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
                if line.strip():
                    yield n, json.loads(line)
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{n}: not UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1})") from None
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: malformed JSON ({e.msg})") from None


def _hub_rows(hub: str, spec: dict, split: str):
    import datasets  # needs internet (or a warm HF cache); not exercised by the offline tests
    hub_split = spec.get("hub_split", split)
    rows = (row for c in spec.get("configs", [None]) for row in datasets.load_dataset(hub, c, split=hub_split))
    return enumerate(map(dict, rows), 1)


def _checked(rows, where, *schemas):
    """(n, row) of `rows`, each a JSON object with every field of one of `schemas`, else a ValueError at where(n)."""
    for n, row in rows:
        if not isinstance(row, dict):
            raise ValueError(f"{where(n)}: expected a JSON object, got {type(row).__name__}")
        missing = min(([k for k in schema if row.get(k) is None] for schema in schemas), key=len)
        if missing:
            raise ValueError(f"{where(n)}: missing field(s) {missing}")
        yield n, row


def read_jsonl(path, *schemas):
    """The rows of a JSONL file, each holding every field of one of `schemas` (tuples of field names)."""
    return [row for _, row in _checked(_local_rows(Path(path)), lambda n: f"{path}:{n}", *schemas)]


def load_split(name: str, split: str = "test", source: str | None = None) -> list[dict]:
    """Items of benchmark `name` (gsm8k | math500 | math | amc23 | aime24 | metamath). source: a JSONL path, a hub
    id, or None = ../shared/data when present, else the hub. A malformed row is a ValueError naming file and line."""
    spec = BENCHMARKS[name]
    local = DATA_DIR / spec["file"].format(split=split)
    if source is None:
        source = str(local) if local.exists() else spec["hub"]
    is_file = source.endswith((".jsonl", ".json")) or Path(source).exists()
    rows = _local_rows(Path(source)) if is_file else _hub_rows(source, spec, split)
    where = (lambda n: f"{source}:{n}") if is_file else (lambda n: f"{source} [{split}] row {n}")
    items, skipped, seen = [], [], set()
    for n, row in _checked(rows, where, spec["fields"]):
        if name == "metamath":  # official filter and deduplication (by the query text, first row kept)
            if row["type"] not in METAMATH_TYPES or row["query"] in seen:
                continue
            seen.add(row["query"])
        try:
            item = _to_item(name, split, n - 1, row)
        except (ValueError, KeyError, AttributeError, TypeError) as e:
            raise ValueError(f"{where(n)}: {e!r}") from None
        items.append(item) if item is not None else skipped.append(n)
    if skipped:
        warnings.warn(f"{source}: skipped {len(skipped)} row(s) without a gold answer, at {skipped[:10]}")
    return items


def rl_prompts(name: str, limit: int = 0):
    """The first `limit` (0: all) of igpo.py's RL prompts (task level, JSONL or train split), and their chat builder."""
    if name.startswith("task"):  # task, or a difficulty level task-<n>[b<k>]
        items, messages = task_level(name, "rl"), task_messages
    elif name.endswith(".jsonl"):  # question, answer; an optional solution is the reference trace
        items, messages = read_jsonl(name, ("question", "answer")), build_messages
    else:
        items, messages = load_split(name, "train"), build_messages
    return items[:limit or None], messages


def shard(items: list, rank: int, world: int) -> list:
    """This rank's share, round-robin: every item on exactly one rank, counts differ by at most one
    (1319 over 8 ranks: 7 x 165 + 164). Callers must not assume equal counts (eval.py gathers lists)."""
    assert 0 <= rank < world, (rank, world)
    return items[rank::world]


# ----------------------------------------------------------------------------------------------------------------
# The embedded task: counting word problems small enough to SFT and RL a tiny LLaDA on a CPU, where right = sound.
#   "Tom has 3 coins. First he gets 2, second loses 4, third finds 3. How many coins after each step?"
#   -> "first: 3+2=5\nsecond: 5-4=1\nthird: 1+3=4" -> \boxed{514}
# Values stay in 1..6: a step is one lookup in a table of 30 facts on the previous value and an operand copied from
# the question (a 4-layer d=128 model learns no two-digit arithmetic in minutes on 2 cores; ordinals let it find the
# k-th operand). The answer is every step's result, one digit each (no 0: numeric equivalence is string equality),
# so it cannot be guessed (6 x 5^n chains of n steps) and is right only if every result is (docs/task.md measures
# how often a right box sits on a wrong line). Difficulty is a rule on the problem: chain length n (`task-<n>`; SFT
# sees lengths 1..7 at TASK_SFT_WEIGHTS, long ones rarely) and big steps (`task-<n>b<k>`). Held out by construction
# (tests/test_task.py): level sets are drawn before SFT, which avoids them, or fresh; SFT rewords short chains.
TASK_VALUES = (1, 6)                       # every value of a chain lies in lo..hi
TASK_NAMES = {"Tom": "He", "Sam": "He", "Leo": "He", "Ann": "She", "Mia": "She", "Eva": "She"}
TASK_THINGS = ("coins", "apples", "cards", "pens", "shells", "books")
TASK_VERBS = {"+": ("gets", "finds"), "-": ("loses", "gives")}
TASK_ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh")
TASK_SFT = (80000, 1)                      # SFT problems, seed
TASK_SFT_WEIGHTS = (1, 1, 1, 1, 1, 0.2, 0.1)  # relative frequency of chain lengths 1..7 in SFT
TASK_LEVELS = (4, 5, 6, 7)                 # chain lengths with held-out sets (data names task-4 .. task-7)
TASK_MAIN = 6                              # `task` = this level: python igpo.py trains on it, eval.py tests on it
TASK_HELD = {"test": (500, 3), "val": (300, 4), "rl": (1000, 2)}  # per level: size, seed (+ 100 x level)
TASK_MODEL = dict(d_model=128, n_layers=4, n_heads=4, n_kv_heads=4, mlp_hidden_size=384, rope_theta=10000.0,
                  max_sequence_length=160)  # plus the ids and vocab size from the task tokenizer
TASK_SAMPLING = dict(gen_length=80, block_length=8, steps=40, temperature=1.2, threshold=0.9)  # a response is <= 77
# tokens. Fast-dLLM's confidence threshold, not the paper's 2 tokens per step, which commits a line's result beside
# its operand: the previous task's start was sound on 9% of val at 2 a step, 82% at 0.9, in fewer forwards (task.md)
TASK_HINT_RESERVE = 8  # inpaint.build_hints(reserve=...): the window's last 8 slots stay free for the answer


def task_model_fields(tok):
    """model.ModelConfig kwargs of the task's LLaDA: TASK_MODEL plus the tokenizer's vocab size and special ids."""
    return dict(TASK_MODEL, vocab_size=len(tok), embedding_size=len(tok), mask_token_id=tok.mask_token_id,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)


def task_problem(rng, n_steps):
    """One problem of n_steps operations: ({question, answer, solution}, its chain: numbers and operations)."""
    lo, hi = TASK_VALUES
    name, thing, v = rng.choice(sorted(TASK_NAMES)), rng.choice(TASK_THINGS), rng.randint(lo, hi)
    phrases, lines, chain = [], [], [v]
    for k in range(n_steps):
        op = rng.choice([o for o, ok in (("+", v < hi), ("-", v > lo)) if ok])
        n = rng.randint(1, hi - v if op == "+" else v - lo)
        new = v + n if op == "+" else v - n
        phrases.append(f"{TASK_ORDINALS[k]} {rng.choice(TASK_VERBS[op])} {n}")
        lines.append(f"{TASK_ORDINALS[k]}: {v}{op}{n}={new}")
        chain += [op, n]
        v = new
    steps = ", ".join(phrases).replace("first ", f"First {TASK_NAMES[name].lower()} ")
    question = f"{name} has {chain[0]} {thing}. {steps}. How many {thing} after each step?"
    answer = "".join(line.rsplit("=", 1)[1] for line in lines)
    return dict(question=question, answer=answer, solution="\n".join(lines)), tuple(chain)


def task_splits(sft_weights=None):
    """{"sft": items, "<split>-<n>": items for split in TASK_HELD, n in TASK_LEVELS}, deterministic. Held-out sets
    first, each chain in one only; then SFT (lengths 1..7 at sft_weights, default TASK_SFT_WEIGHTS), avoiding them."""
    return _task_splits(tuple(sft_weights or TASK_SFT_WEIGHTS))


@functools.lru_cache(maxsize=2)
def _task_splits(sft_weights):
    out, held = {}, set()
    for n in TASK_LEVELS:
        for split, (size, seed) in TASK_HELD.items():
            rng, items = random.Random(seed + 100 * n), []
            while len(items) < size:
                item, chain = task_problem(rng, n)
                if chain not in held:
                    held.add(chain)
                    items.append(dict(id=f"task-{split}-{n}-{len(items)}", **item))
            out[f"{split}-{n}"] = items
    rng, out["sft"] = random.Random(TASK_SFT[1]), []
    while len(out["sft"]) < TASK_SFT[0]:
        n, chain = rng.choices(range(1, len(sft_weights) + 1), sft_weights)[0], None
        while chain is None or chain in held:  # redraw at the same length, so held-out chains do not skew lengths
            item, chain = task_problem(rng, n)
        out["sft"].append(dict(id=f"task-sft-{len(out['sft'])}", **item))
    return out


def task_level(name, split, draw=0):
    """Items of level `task-<n>` (`task`: TASK_MAIN) for split rl | val | test; ValueError for another name. Fresh
    sets (chains in no set of task_splits() nor SFT, rl / val / test apart): `task-<n>b<k>`, n-step chains with >= k
    big steps (numbers >= 3: misread more often, docs/task.md); draw > 0, a new draw of the split (a new test)."""
    m = re.fullmatch(r"task(?:-(\d+)(?:b([1-9]))?)?", name)
    if not m or int(m[1] or TASK_MAIN) not in TASK_LEVELS:
        raise ValueError(f"{name!r}: expected task, task-<n> or task-<n>b<k>, n in {TASK_LEVELS}")
    n, big = int(m[1] or TASK_MAIN), int(m[2] or 0)
    return _fresh(n, big, split, draw) if draw or big else task_splits()[f"{split}-{n}"]


@functools.lru_cache(maxsize=16)
def _fresh(n, big, split, draw):
    earlier = [it for s in list(TASK_HELD)[:list(TASK_HELD).index(split)] for it in _fresh(n, big, s, draw)]
    used = {it["solution"] for items in [*task_splits().values(), earlier] for it in items}  # solution: the chain
    level, size = (f"{n}b{big}" if big else f"{n}"), TASK_HELD[split][0]
    rng, items = random.Random(f"{split}-{level}-{draw}"), []
    for _ in range(100 * size):
        item, chain = task_problem(rng, n)
        if item["solution"] not in used and sum(x >= 3 for x in chain[2::2]) >= big:
            used.add(item["solution"])
            items.append(dict(id=f"task-{split}{draw or ''}-{level}-{len(items)}", **item))
            if len(items) == size:
                return items
    raise ValueError(f"task-{level}: too few {n}-step chains in no set and not in SFT for a fresh {split}")


_OPS = {"gets": "+", "finds": "+", "loses": "-", "gives": "-"}


def task_sound(question, text):
    """Whether a completion reasons soundly: before </reasoning>, one line per operation of the question, line k
    'a op n=c' with a the previous value (the start for k = 1), op and n the k-th operation, c = a op n. The reward
    checks only the box; this is measured, never trained on."""
    value = int(re.search(r"has (\d+)", question)[1])
    ops = [(_OPS[verb], int(n)) for verb, n in re.findall(r"(gets|finds|loses|gives) (\d+)", question)]
    lines = re.findall(r"(\d+)\s*([+-])\s*(\d+)\s*=\s*(\d+)", text.split("</reasoning>")[0])
    if len(lines) != len(ops):
        return False
    for (a, op, n, c), (op_q, n_q) in zip(lines, ops):
        if int(a) != value or op != op_q or int(n) != n_q or int(c) != (value + n_q if op == "+" else value - n_q):
            return False
        value = int(c)
    return True


def task_messages(question):
    return build_messages(question, system_prompt=None)  # the question alone: no system prompt (see above)


TASK_SPECIAL = ["<|startoftext|>", "<|endoftext|>", "<|mdm_mask|>", "<|start_header_id|>", "<|end_header_id|>",
                "<|eot_id|>", "<|unk|>"]
TASK_TAGS = ["<reasoning>", "</reasoning>", "<answer>", "</answer>"]
LLADA_CHAT_TEMPLATE = (  # LLaDA-8B-Instruct's template (Llama-3 style headers, BOS once, content trimmed)
    "{% for message in messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")


def task_tokenizer():
    """A 181-token word-level PreTrainedTokenizerFast (saved by model.save): the task's words (with and without a
    leading space), single digits (a step is a table lookup), printable ASCII as fallback, tags, LLaDA's specials."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    words = sorted({*TASK_NAMES, *TASK_THINGS, *sum(TASK_VERBS.values(), ()), *TASK_ORDINALS, "First", "he", "she",
                    "has", "How", "many", "after", "each", "step", "user", "assistant", "system"}, key=lambda w: (-len(w), w))
    vocab = TASK_SPECIAL + TASK_TAGS + ["\\boxed", "\n\n"] + [chr(c) for c in range(32, 127)] + ["\n"]
    vocab += [f" {d}" for d in "0123456789"] + [p + w for w in words for p in ("", " ")]
    vocab = list(dict.fromkeys(vocab))
    known = "|".join(re.escape(w) for w in words)
    split = Regex(rf"\\boxed| ?(?:{known})(?![A-Za-z])| ?[0-9]|\n\n|[\s\S]")
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(vocab)}, unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.Split(split, behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(TASK_SPECIAL)
    tok.add_tokens(TASK_TAGS)
    t = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                                pad_token="<|endoftext|>", mask_token="<|mdm_mask|>", unk_token="<|unk|>")
    t.chat_template = LLADA_CHAT_TEMPLATE
    return t

