"""Answer extraction, answer equivalence, and the correctness and format rewards of IGPO.

IGPO's reward (arXiv 2509.10396; official facebookresearch/igpo utils/reward_func.py): correctness, 3.0 when the
last `\\boxed{}` equals the gold, else 0, plus a format reward for `<reasoning>\\n...</reasoning>\\n<answer>\\n
\\boxed{...}\\n</answer>` (0.125 per tag, 0.25 for `\\boxed{`). All-wrong groups trigger inpainting, so a false
negative here changes which groups get hints: the equivalence test is what matters in this file.
Deviations from the official code:
1. Equivalence is math-verify (sympy) behind cheap fast paths (normalised string match, exact decimal compare), on
   every benchmark. Official training reward (correctness_reward_func): the first \\boxed's content judged by
   manual_math_verify, i.e. Hendrycks' MATH string normaliser, on every dataset (GSM8K's float compare is in its
   evaluation code only).
2. extract_answer falls back to the `<answer>` span (as official), then to the last number (official GSM8K path).
3. math-verify's own timeouts use signal.alarm, which fails off the main thread: they are off, and sympy runs in a
   persistent worker subprocess that is killed, and replaced by a warm standby, when it misses the 1 s deadline.
   No input can hang or crash the caller, in any thread or torchrun worker. Calls are serialised per process;
   the first one waits once for the worker's import (~1 s; warmup() does it up front).
Use: `import reward`; `python reward.py PRED GOLD` prints the verdict; speed: `python bench/reward_speed.py`.
"""
import atexit
import json
import os
import re
import select
import subprocess
import sys
import threading
import time
from decimal import Decimal

TIMEOUT_S = 1.0         # hard wall-clock limit of one is_equiv call once a worker is warm (issue 3)
STARTUP_TIMEOUT_S = 60  # first call only: the worker imports sympy + math-verify (~0.5-2 s)
MAX_CHARS = 1000        # longer strings get only exact/numeric compare (longest MATH500 gold answer: 53 chars)
MAX_SCAN = 10_000       # a \boxed{ whose group does not close within this many chars is not an answer
WORKER_MEM_BYTES = 4 << 30  # address-space cap of a worker, so 10^10^10 dies of MemoryError, not OOM


# ----------------------------------------------------------------------------- extraction

_BOX = re.compile(r"\\(?:boxed|fbox)")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _braced(text: str, i: int) -> str | None:
    """Content of the {...} group opening at text[i], or None if it never closes. `\\{` / `\\}` are skipped."""
    depth, j, stop = 0, i, min(len(text), i + MAX_SCAN)
    while j < stop:
        c = text[j]
        depth += (c == "{") - (c == "}")
        if depth == 0:
            return text[i + 1:j]
        j += 2 if c == "\\" else 1  # an escaped character (\{, \}, \\) never opens or closes a group
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last well-formed `\\boxed{...}` / `\\fbox{...}` / `\\boxed 5` in text, else None."""
    ends = [m.end() for m in _BOX.finditer(text)]
    for end in reversed(ends[-8:]):  # a few tries: the last box may be truncated by the generation length
        if text.startswith("{", end):
            content = _braced(text, end)
        else:  # `\boxed 5`: the next token (but `\boxedfoo` is another macro)
            m = re.match(r"\s+([^\s$]+)", text[end:end + 200])
            content = m and m.group(1)
        if content and content.strip():
            return content.strip()
    return None


def first_boxed(text: str) -> str | None:
    """Content of the first `\\boxed{...}` in text, else None: the official training reward's extraction."""
    m = re.search(r"\\boxed\{", text)
    return _braced(text, m.end() - 1) if m else None


def extract_answer(text) -> str | None:
    """The answer a completion gives: last boxed, else the last `<answer>` span, else the last number."""
    if not isinstance(text, str):
        return None
    span = text.rpartition("<answer>")[2].split("</answer>")[0].strip() if "<answer>" in text else ""
    numbers = _NUMBER.findall(text)
    return last_boxed(text) or span or (numbers[-1].replace(",", "") if numbers else None)


# ----------------------------------------------------------------------------- fast paths

def _clean(s: str) -> str:
    """Meaning-preserving LaTeX clean-up shared by the fast paths and the sympy path."""
    s = s.strip().replace("\\$", "").replace("$", "").replace("\\!", "")
    s = re.sub(r"\\(?:left|right)(?![a-zA-Z])", "", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?", "", s)  # degrees: 30^\circ == 30 (MATH golds mix both)
    s = s.replace("\\%", "").replace("%", "")     # 25\% == 25, as Hendrycks' normaliser
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s.strip()):
        s = s.replace(",", "")                    # 1,234 (a number, not the set {1, 234})
    m = re.fullmatch(r"(.+?)\s*\\(?:text|mbox|mathrm)\{[^{}]*\}", s.strip())
    if m and re.search(r"\d", m.group(1)):
        s = m.group(1)                            # trailing unit: 5\text{ cm} == 5
    m = re.fullmatch(r"[a-zA-Z]\s*=\s*([^=]+)", s.strip())
    if m:
        s = m.group(1)                            # x = 3 == 3
    return s.strip().rstrip(".").strip()


def _number(key: str) -> Decimal | None:
    """A plain decimal number, exactly: 27.0 == 27, 0.5 != 0.05, no float overflow on huge integers. The regex is
    unambiguous, so it is linear even on 1 MB of digits."""
    return Decimal(key) if re.fullmatch(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)", key) else None


def is_equiv(pred, gold) -> bool:
    """Is the predicted answer mathematically equal to the gold? Never raises; returns within TIMEOUT_S."""
    start = time.monotonic()
    try:
        pred, gold = [repr(x) if type(x) in (int, float) else x for x in (pred, gold)]  # AMC's 27.0
        if not isinstance(pred, str) or not isinstance(gold, str):
            return False
        if len(pred) > MAX_CHARS or len(gold) > MAX_CHARS:  # not an answer: no regex with backtracking, no sympy
            p, g = pred.strip(), gold.strip()
            return p == g or (_number(p) is not None and _number(p) == _number(g))
        p, g = _clean(pred), _clean(gold)
        pk, gk = re.sub(r"\s+", "", p), re.sub(r"\s+", "", g)
        if not pk or not gk:
            return False
        pn, gn = _number(pk), _number(gk)
        if pk == gk or (pn is not None and gn is not None):  # the fast paths: most calls end here
            return pk == gk or pn == gn
        return _ask(p, g, deadline=start + 0.9 * TIMEOUT_S)  # 10% margin for killing a stuck worker
    except Exception:
        return False


# ----------------------------------------------------------------------------- rewards

RULES = ("official", "lenient")


def correctness_reward(completion: str, gold, weight: float = 3.0, rule: str = "lenient") -> float:
    """weight if the completion's answer equals the gold, else 0. rule "official" (O's training reward): the
    answer is the first \\boxed{...}, and no box scores 0; "lenient": extract_answer's fallbacks (eval.py)."""
    if rule == "official":
        pred = first_boxed(completion) if isinstance(completion, str) else None
    else:
        pred = extract_answer(completion)
    return weight if is_equiv(pred, gold) else 0.0


def format_reward(completion: str, tag_weight: float = 0.125, boxed_weight: float = 0.25) -> float:
    """Official `count_xml`: tag_weight per tag that occurs exactly once, boxed_weight if `\\boxed{` occurs.
    With the `<reasoning>` prefill (data.REASONING_PREFILL) pass prefill + completion."""
    if not isinstance(completion, str):
        return 0.0
    tags = ["<reasoning>\n", "</reasoning>", "<answer>\n", "</answer>"]
    score = tag_weight * sum(completion.count(t) == 1 for t in tags)
    return score + (boxed_weight if "\\boxed{" in completion else 0.0)


# ----------------------------------------------------------------------------- the killable sympy worker

def _worker_main():
    """The subprocess: reads JSON [pred, gold] lines from stdin, answers one byte each: b"1" or b"0"."""
    import logging
    import resource
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business; EOF on stdin ends us
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # SLURM signals every process: the parent's last step still needs us
    resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEM_BYTES, WORKER_MEM_BYTES))
    logging.disable(logging.CRITICAL)  # math-verify warns that its timeout is off: we own the timeout
    from math_verify import parse, verify

    def equal(pred, gold):
        g = parse("\\boxed{" + gold + "}", parsing_timeout=None)
        q = parse("\\boxed{" + pred + "}", parsing_timeout=None)
        return bool(g) and bool(q) and verify(g, q, timeout_seconds=None)
    equal("(0.5, x)", "\\frac{1}{2}")  # the first parse builds the LaTeX grammar (~0.4 s): before "ready"
    os.write(1, b"R")  # ready; os.write on fd 1: unbuffered
    for line in sys.stdin.buffer:
        try:
            os.write(1, b"1" if equal(*json.loads(line)) else b"0")
        except Exception:  # RecursionError, MemoryError, sympy's own errors, bad input
            os.write(1, b"0")


class _Worker:
    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        self.poller = select.poll()  # not select.select: fds above 1024 are common in torchrun workers
        self.poller.register(self.proc.stdout.fileno(), select.POLLIN)
        self.ready, self.pid = False, os.getpid()

    def reply(self, deadline: float) -> bytes | None:
        """The worker's next one-byte message; None at the deadline, or b"" if it died."""
        left = max(0.0, deadline - time.monotonic())
        return os.read(self.proc.stdout.fileno(), 1) if self.poller.poll(left * 1000) else None

    def is_ready(self, deadline: float) -> bool:
        self.ready = self.ready or self.reply(deadline) == b"R"
        return self.ready


_LOCK = threading.Lock()
_WORKERS: list[_Worker] = []  # two: one answers, one waits warm to replace it without a 1 s import


def _refill():
    # workers of another pid were inherited through fork: their pipes belong to the parent
    _WORKERS[:] = [w for w in _WORKERS if w.pid == os.getpid() and w.proc.poll() is None]
    while len(_WORKERS) < 2:
        _WORKERS.append(_Worker())


def _ask(pred: str, gold: str, deadline: float) -> bool:
    if not _LOCK.acquire(timeout=max(0.0, deadline - time.monotonic())):
        return False
    try:
        _refill()
        w = next((w for w in _WORKERS if w.is_ready(time.monotonic())), _WORKERS[0])
        if not w.ready:  # first use, or two hangs in a row: wait for an import, then start the clock
            w.is_ready(time.monotonic() + STARTUP_TIMEOUT_S)
            deadline = time.monotonic() + 0.9 * TIMEOUT_S
        try:
            w.proc.stdin.write(json.dumps([pred, gold]).encode() + b"\n")  # < 8 kB: never blocks on the pipe
            answer = w.reply(deadline)
        except OSError:  # broken pipe: the worker died
            answer = None
        if answer not in (b"0", b"1"):  # too slow, or dead: kill it; the standby answers the next call
            w.proc.kill()
            w.proc.wait()
            _refill()
        return answer == b"1"
    finally:
        _LOCK.release()


def warmup():
    """Start both workers and wait for their imports (eval.py / igpo.py call this at start-up)."""
    with _LOCK:
        _refill()
        for w in _WORKERS:
            w.is_ready(time.monotonic() + STARTUP_TIMEOUT_S)


@atexit.register
def _close():
    for w in _WORKERS:
        if w.pid == os.getpid():
            w.proc.kill()


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        _worker_main()
    else:  # python reward.py PRED GOLD
        print(is_equiv(*sys.argv[1:3]) if len(sys.argv) == 3 else "usage: python reward.py PRED GOLD")
