"""Faults a long run meets: SIGKILL (pre-emption) and exact resume, SIGTERM (graceful stop; also to every process of
a torchrun job), resume at another world size, NaN steps, torn, stale or damaged checkpoints, a save on a full disk,
a changed --model, bad data, bad checkpoints, incompatible flags, a failing or hung rank, an evaluation killed
mid-way, and adversarial reward inputs. Kill tests run the real scripts in subprocesses and kill them at a seeded
random step. docs/faults.md has one row per fault."""
import errno
import glob
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

import data
import igpo
import launch
import model as M
import sft
from conftest import failure_log
from test_igpo import task_ckpt  # noqa: F401  (the tiny task checkpoint fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
IGPO = ["--steps", "12", "--mu", "2", "--prompts_per_step", "4", "--G", "4", "--gen_length", "16",
        "--block_length", "8", "--diffusion_steps", "8", "--micro_batch", "8", "--chunk", "2,3", "--reserve", "2",
        "--eval_limit", "0", "--warmup", "1", "--beta", "0.01", "--lr", "1e-3", "--save_every", "4", "--keep_last", "2"]
SFT = ["--max_samples=64", "--steps=16", "--global_batch=8", "--micro_batch=4", "--log_every=1", "--warmup=2",
       "--save_every=4"]


# ----------------------------------------------------------------------------------------- helpers

def _tree(pid):
    """pid and its descendants (torchrun workers run in their own sessions, so a process group would miss them)."""
    kids = []
    for task in os.listdir(f"/proc/{pid}/task") if os.path.exists(f"/proc/{pid}/task") else []:
        try:
            kids += open(f"/proc/{pid}/task/{task}/children").read().split()
        except OSError:
            continue
    return [pid] + [p for k in kids for p in _tree(int(k))]


def _run(cmd, log, progress=None, at=None, sig=None, timeout=240):
    """Run cmd (output to log); once progress() >= at, send sig to its whole process tree. Returns the exit code."""
    with open(log, "a") as f:
        p = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=f, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while sig is not None and progress() < at:
        assert p.poll() is None, f"finished before step {at}: " + failure_log(open(log).read())
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.01)
    for pid in _tree(p.pid) if sig is not None else []:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            continue
    return p.wait(timeout=timeout)


def _rows(out):
    """metrics.jsonl without the wall-clock fields."""
    path = os.path.join(out, "metrics.jsonl")
    rows = [json.loads(line) for line in open(path)] if os.path.exists(path) else []
    return [{k: v for k, v in r.items() if not k.startswith("t_")} for r in rows]


def _igpo(task_ckpt, out, world, *extra, **fault):
    cmd = (TORCHRUN if world == 2 else [sys.executable]) + ["igpo.py", "--model", task_ckpt, *IGPO, "--out_dir", out]
    progress = lambda: len(_rows(out))  # noqa: E731  (rows written = optimizer steps done)
    return _run(cmd + list(extra), out + ".log", progress, **fault)


def _same_params(a, b):
    pa, pb = load_file(os.path.join(a, "model.safetensors")), load_file(os.path.join(b, "model.safetensors"))
    return pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


@pytest.fixture(scope="module")
def igpo_runs(task_ckpt, tmp_path_factory):
    """Uninterrupted reference runs, {world: out_dir}, made on first use."""
    root, done = tmp_path_factory.mktemp("ref"), {}

    def get(world):
        if world not in done:
            done[world] = str(root / f"w{world}")
            assert _igpo(task_ckpt, done[world], world) == 0, failure_log(open(done[world] + ".log").read())
        return done[world]
    return get


# ------------------------------------------------------------------------------- SIGKILL, SIGTERM: igpo.py

@pytest.mark.parametrize("world", [1, 2])
def test_igpo_sigkill_at_a_random_step_then_resume_is_exact(task_ckpt, igpo_runs, tmp_path, world):
    ref = igpo_runs(world)
    out = str(tmp_path / "cut")
    at = random.Random(f"igpo-kill-{world}").randint(2, 9)  # the step after which the run is killed
    assert _igpo(task_ckpt, out, world, at=at, sig=signal.SIGKILL) == -signal.SIGKILL
    killed_at = len(_rows(out))
    assert _igpo(task_ckpt, out, world, "--resume", "on") == 0, failure_log(open(out + ".log").read())
    log = open(out + ".log").read()
    resumed = int(re.search(r"resumed from \S+ at step (\d+)", log)[1]) if "resumed from" in log else 0
    assert resumed <= killed_at and resumed % 4 == 0  # the latest complete checkpoint; the rest is recomputed
    assert _same_params(os.path.join(ref, "step-12"), os.path.join(out, "step-12"))  # bit for bit
    assert _rows(out) == _rows(ref)  # every row, those after the resumed step included
    assert sorted(d for d in os.listdir(out) if d.startswith("step-")) == ["step-12", "step-8"]  # keep_last 2
    assert open(os.path.join(out, "latest")).read().strip() == "step-12"


def test_igpo_sigterm_finishes_the_batch_saves_exits_0_and_resumes_exactly(task_ckpt, igpo_runs, tmp_path):
    ref = igpo_runs(1)
    out = str(tmp_path / "term")
    at = random.Random("igpo-term").randint(1, 9)
    assert _igpo(task_ckpt, out, 1, at=at, sig=signal.SIGTERM) == 0  # reward workers got SIGTERM too, as in SLURM
    stopped = json.load(open(os.path.join(out, open(os.path.join(out, "latest")).read().strip(),
                                          "trainer_state.json")))["step"]
    assert stopped >= at and stopped % 2 == 0 and len(_rows(out)) == stopped  # end of the rollout batch (mu = 2)
    assert _igpo(task_ckpt, out, 1, "--resume", "on") == 0
    assert _same_params(os.path.join(ref, "step-12"), os.path.join(out, "step-12"))
    assert _rows(out) == _rows(ref)


def test_igpo_sigterm_with_a_start_eval_and_no_final_one_still_exits_0(task_ckpt, tmp_path):
    """The task preset evaluates the start; a stop before the last step has no final score to print beside it (the
    closing summary once raised there, after the checkpoint, and the run exited 1)."""
    out = str(tmp_path / "term-eval")
    assert _igpo(task_ckpt, out, 1, "--eval_limit", "4", at=3, sig=signal.SIGTERM) == 0, \
        failure_log(open(out + ".log").read())
    log = open(out + ".log").read()
    assert "step 0: test pass@1" in log and "SIGTERM: stopped after step" in log and "Traceback" not in log


# --------------------------------------------------------------------------------- SIGKILL, SIGTERM: sft.py

def _sft(out, world, *extra, **fault):
    cmd = (TORCHRUN if world == 2 else [sys.executable]) + ["sft.py", *SFT, f"--out_dir={out}"]
    progress = lambda: open(out + ".log").read().count(" loss ") if os.path.exists(out + ".log") else 0  # noqa
    return _run(cmd + list(extra), out + ".log", progress, **fault)


def _sft_lines(log, after=0):
    """{step: its log line without the wall time} for steps > after."""
    lines = [ln for ln in open(log).read().splitlines() if ln.startswith("step ") and " loss " in ln]
    return {int(ln.split()[1].split("/")[0]): ln.rsplit(" ", 1)[0] for ln in lines
            if int(ln.split()[1].split("/")[0]) > after}


@pytest.fixture(scope="module")
def sft_runs(tmp_path_factory):
    """Uninterrupted reference runs, {world: out_dir}, made on first use."""
    root, done = tmp_path_factory.mktemp("sft-ref"), {}

    def get(world):
        if world not in done:
            done[world] = str(root / f"w{world}")
            assert _sft(done[world], world) == 0, failure_log(open(done[world] + ".log").read())
        return done[world]
    return get


@pytest.mark.parametrize("world", [1, 2])
def test_sft_sigkill_at_a_random_step_then_resume_is_exact(sft_runs, tmp_path, world):
    ref, out = sft_runs(world), str(tmp_path / "cut")
    at = random.Random(f"sft-kill-{world}").randint(3, 12)
    assert _sft(out, world, at=at, sig=signal.SIGKILL) == -signal.SIGKILL
    assert _sft(out, world, "--resume=on") == 0, failure_log(open(out + ".log").read())
    resumed = int(re.search(r"resumed from \S+ at step (\d+)", open(out + ".log").read())[1])
    assert resumed % 4 == 0 and resumed <= at + 4
    assert _same_params(ref, out)
    assert _sft_lines(out + ".log", after=resumed + 0) == _sft_lines(ref + ".log", after=resumed)
    assert json.load(open(os.path.join(out, "trainer_state.json")))["step"] == 16


def test_sft_sigterm_saves_that_step_and_resume_is_exact(sft_runs, tmp_path):
    ref, out = sft_runs(1), str(tmp_path / "term")
    at = random.Random("sft-term").randint(2, 12)
    assert _sft(out, 1, at=at, sig=signal.SIGTERM) == 0
    stopped = json.load(open(os.path.join(out, "trainer_state.json")))["step"]
    assert at <= stopped < 16 and "(SIGTERM)" in open(out + ".log").read()
    assert _sft(out, 1, "--resume=on") == 0
    assert _same_params(ref, out)
    assert _sft_lines(out + ".log", after=stopped) == _sft_lines(ref + ".log", after=stopped)


# ------------------------------------------------------------------------------------------- numerics

def test_igpo_non_finite_steps_are_skipped_and_a_streak_stops_the_run(task_ckpt, tmp_path, monkeypatch):
    """Gradients are poisoned with NaN at steps 3, 5, 6, 7: 3 is skipped (no update: parameters and Adam state
    equal step 2's), 5-7 are three in a row: the run stops before saving step 7; step 6 holds step 4's state."""
    bad, calls, real = {3, 5, 6, 7}, [], igpo.update

    def update(policy, *a, **k):
        stats = real(policy, *a, **k)
        calls.append(1)
        if len(calls) in bad:
            next(policy.parameters()).grad[0, 0] = float("nan")
        return stats
    monkeypatch.setattr(igpo, "update", update)
    out = tmp_path / "nan"
    cfg = launch.parse_config(igpo.Config, igpo.PRESETS, ["--model", task_ckpt, *IGPO, "--mu", "1", "--save_every", "1",
                                                          "--keep_last", "0", "--steps", "8", "--out_dir", str(out)])
    with pytest.raises(FloatingPointError, match="3 optimizer steps in a row"):
        igpo.train(cfg)
    assert [r["skipped"] for r in _rows(out)] == [0, 0, 1, 0, 1, 1]
    assert _same_params(out / "step-3", out / "step-2") and not _same_params(out / "step-4", out / "step-3")
    assert _same_params(out / "step-6", out / "step-4") and not (out / "step-7").exists()
    o2, o3 = torch.load(out / "step-2" / "optim.pt"), torch.load(out / "step-3" / "optim.pt")
    assert all(torch.equal(o2["state"][k][n], o3["state"][k][n]) for k in o2["state"] for n in o2["state"][k])
    assert open(out / "latest").read().strip() == "step-6"


def test_sft_nan_streak_stops_with_the_last_good_checkpoint(tmp_path):
    # lr 1e30: step 1 blows the parameters up (finite), every later loss is NaN: step 2 is skipped and saved
    # (the same weights), step 3 is the second bad step in a row and stops the run before any save
    args = [f"--out_dir={tmp_path / 'ck'}", "--max_samples=32", "--steps=4", "--global_batch=8", "--micro_batch=2",
            "--lr=1e30", "--warmup=1", "--save_every=1", "--max_bad_steps=2"]
    with pytest.raises(FloatingPointError, match="2 optimizer steps in a row"):
        sft.train(sft.parse_config(args))
    state = json.load(open(tmp_path / "ck" / "trainer_state.json"))
    assert state["step"] == 2 and state["bad_steps"] == 1
    assert all(torch.isfinite(v).all() for v in load_file(tmp_path / "ck" / "model.safetensors").values())


# ------------------------------------------------------------------------------- checkpoints and resume

def _fake_checkpoint(path, step):
    """The files launch.broken checks, tiny and intact."""
    from safetensors.torch import save_file
    path.mkdir()
    (path / "trainer_state.json").write_text(json.dumps({"step": step}))
    (path / "config.json").write_text("{}")
    torch.save({"state": {}}, path / "optim.pt")
    save_file({"w": torch.zeros(2)}, path / "model.safetensors")


def test_latest_ignores_torn_and_unnamed_checkpoints_and_keep_last_prunes(tmp_path):
    for d in ("step-2", "step-4", "step-6", "step-8.saving", ".tmp-step-8abc"):
        _fake_checkpoint(tmp_path / d, 0)
    launch.write_latest(str(tmp_path), "step-4", keep_last=2)
    assert not (tmp_path / "step-2").exists() and (tmp_path / "step-6").exists()
    with pytest.warns(UserWarning) as seen:
        assert launch.latest_checkpoint(str(tmp_path)) == str(tmp_path / "step-4")
    assert sorted(str(w.message).split(": ")[0].rsplit("/", 1)[1] for w in seen) == [
        ".tmp-step-8abc", "step-6", "step-8.saving"]  # step-6 was renamed into place, but `latest` never named it
    assert launch.latest_checkpoint(str(tmp_path / "none")) is None


def test_sft_recovers_a_checkpoint_caught_between_its_two_renames(tmp_path):
    (tmp_path / "ck.old").mkdir()
    (tmp_path / "ck.old" / "trainer_state.json").write_text('{"step": 5}')
    (tmp_path / "ck.saving").mkdir()  # half-written
    with pytest.warns(UserWarning):
        launch.recover(str(tmp_path / "ck"))
    assert json.load(open(tmp_path / "ck" / "trainer_state.json")) == {"step": 5}


def test_resume_refuses_a_model_whose_weights_changed(task_ckpt, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(task_ckpt, model)
    out = tmp_path / "run"
    args = ["--model", str(model), *IGPO, "--steps", "2", "--save_every", "2", "--out_dir", str(out)]
    igpo.train(launch.parse_config(igpo.Config, igpo.PRESETS, args))
    m, tok = M.load(str(model))
    with torch.no_grad():
        m.model.transformer.wte.weight[0, 0] += 1.0
    M.save(m, tok, str(model))
    with pytest.raises(SystemExit, match="not the weights .* resuming would change the reference"):
        igpo.train(launch.parse_config(igpo.Config, igpo.PRESETS, args + ["--steps", "4", "--resume", "on"]))


# ---------------------------------------------------------------------------------------------- bad input

BAD_ROWS = {"malformed JSON": b'{"question": "q", "answer": "1"}\n{"question": "q", "answ\n',
            "missing field(s) ['answer']": b'{"question": "q", "answer": "1"}\n{"question": "q"}\n',
            "not UTF-8 (byte 0xff": b'{"question": "q", "answer": "1"}\n{"question": "q\xff", "answer": "1"}\n'}


@pytest.mark.parametrize("what", list(BAD_ROWS))
def test_bad_data_names_file_line_and_field_before_any_model_loads(tmp_path, what):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(BAD_ROWS[what].replace(b'"answer": "1"}', b'"answer": "1", "solution": "s"}'))
    nowhere = str(tmp_path / "no-model")  # a model load would fail differently: the data error comes first
    with pytest.raises(SystemExit, match=re.escape(f"{path}:2: {what}")):
        igpo.train(launch.parse_config(igpo.Config, igpo.PRESETS, ["--data", str(path), "--model", nowhere]))
    with pytest.raises(SystemExit, match=f"{path}:2: "):
        sft.train(sft.parse_config([f"--data={path}", f"--model={nowhere}"]))


def _broken(task_ckpt, tmp_path, how):
    path = tmp_path / how
    if how == "missing":
        return str(path)
    shutil.copytree(task_ckpt, path)
    if how == "truncated":
        st = path / "model.safetensors"
        st.write_bytes(st.read_bytes()[:st.stat().st_size // 2])
    else:
        cfg = json.load(open(path / "config.json"))
        json.dump({**cfg, "model_type": "llama", "architectures": ["LlamaForCausalLM"]}, open(path / "config.json", "w"))
    return str(path)


@pytest.mark.parametrize("how,why", [("missing", "no such directory"), ("truncated", "incomplete metadata"),
                                     ("other-arch", "'model_type'='llama' is not supported")])
def test_bad_model_is_one_line_naming_the_path(task_ckpt, tmp_path, how, why):
    path = _broken(task_ckpt, tmp_path, how)
    for run in (lambda: igpo.train(launch.parse_config(igpo.Config, igpo.PRESETS, ["--model", path, *IGPO])),
                lambda: sft.train(sft.parse_config([f"--model={path}", "--max_samples=8", "--steps=1"]))):
        with pytest.raises(SystemExit) as e:
            run()
        msg = str(e.value.code)
        if how == "missing" and "no such directory" not in msg:  # sft: the hub path's own error
            why = "Repo id must be"
        assert path in msg and why in msg and "\n" not in msg, msg


@pytest.mark.parametrize("flags,world,why", [(["--prompts_per_step", "3"], 2, "not divisible by world 2"),
                                             (["--steps", "5"], 1, "not a multiple of --mu"),
                                             (["--save_every", "3"], 1, "--save_every 3 not a multiple of --mu"),
                                             (["--gen_length", "20"], 1, "not a multiple of --block_length"),
                                             (["--diffusion_steps", "5"], 1, "not divisible by 2 blocks"),
                                             (["--eta", "0.6,0.2"], 1, "two values lo,hi with lo <= hi"),
                                             (["--chunk", "8,4"], 1, "two sizes lo,hi with lo <= hi")])
def test_incompatible_flags_are_usage_errors_before_loading(tmp_path, capsys, flags, world, why):
    cfg = launch.parse_config(igpo.Config, igpo.PRESETS, ["--model", str(tmp_path / "no-model"), *IGPO, *flags])
    with pytest.raises(SystemExit) as e:
        igpo.train(cfg) if world == 1 else igpo.check_config(cfg, world)
    assert e.value.code == 2 and why in capsys.readouterr().err


def test_sft_batch_not_divisible_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        sft.train(sft.parse_config(["--global_batch=6", "--micro_batch=4", f"--model={tmp_path / 'none'}"]))
    assert e.value.code == 2 and "--global_batch 6 not divisible" in capsys.readouterr().err


def test_items_without_a_reference_trace_are_not_inpainted_and_counted(task_ckpt):
    cfg = launch.parse_config(igpo.Config, igpo.PRESETS, ["--model", task_ckpt, *IGPO])
    pol, tok = M.load(task_ckpt)
    items = [dict(it) for it in data.task_level("task", "rl")[:4]]
    items[1]["solution"] = items[3]["solution"] = None
    b = igpo.make_batch(pol, None, tok, items, data.task_messages, cfg, 0, 0, torch.device("cpu"), {})
    wrong = igpo.all_wrong(b.correct_policy, cfg.G)
    assert wrong[1] and wrong[3]  # a random tiny model: every group is all wrong
    assert not b.replaced.view(4, -1)[[1, 3]].any() and not b.hint.view(4, 4, -1)[[1, 3]].any()


# ------------------------------------------------------------------------------------- distributed faults

@pytest.mark.parametrize("fault", ["raise", "hang"])
def test_a_failing_or_hung_rank_ends_every_rank_non_zero(task_ckpt, tmp_path, fault):
    """Rank 1 raises (or hangs) inside step 3 while rank 0 waits in the step's first collective: both processes
    end non-zero. Launched as two bare processes (as srun would), no torchrun agent to clean up: rank 0 gets out
    by gloo's error on a dead peer or by the process-group timeout (5 s here) on a hung one."""
    env = {**ENV, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(29600 + random.Random(fault).randint(0, 300)),
           "WORLD_SIZE": "2"}
    cmd = [sys.executable, "tests/faulty.py", fault, "3", "1", "--model", task_ckpt, *IGPO, "--dist_timeout", "5",
           "--out_dir", str(tmp_path / "run")]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    out0 = procs[0].communicate(timeout=120)[0]  # bounded: the test fails if rank 0 hangs
    assert procs[0].returncode != 0, out0[-2000:]
    if fault == "hang":  # a hung process cannot end itself; its launcher (torchrun, srun) kills it
        procs[1].kill()
    assert procs[1].wait(timeout=60) != 0
    assert "injected" in procs[1].stdout.read()


def test_a_native_crash_prints_the_python_stack():
    """A segfault after launch.setup_dist (as a rank that dies inside a collective) leaves a Python traceback in
    the log, not only torchrun's 'Signal 11'. PYTHONFAULTHANDLER is cleared, so the stack comes from setup_dist."""
    env = {k: v for k, v in ENV.items() if k != "PYTHONFAULTHANDLER"}
    code = "import ctypes, launch\nlaunch.setup_dist()\nctypes.string_at(0)  # reads address 0\n"
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == -signal.SIGSEGV
    assert "Fatal Python error: Segmentation fault" in p.stderr and 'File "<string>", line 3' in p.stderr


@pytest.mark.parametrize("world", ["1", "2"])
def test_exit_worker_skips_finalization_only_under_torchrun(world):
    """Under torchrun (WORLD_SIZE > 1) a finished script leaves with exit code 0, its printed output intact, and no
    interpreter finalization (an atexit handler never runs); a plain process exits normally."""
    code = ("import atexit, launch\natexit.register(lambda: print('finalized'))\nprint('done', end='')\n"
            "launch.exit_worker()\nprint(' after')\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**ENV, "WORLD_SIZE": world}, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout == ("done" if world == "2" else "done after\nfinalized\n")


# ----------------------------------------------------------------------------------------- rewards fuzz

@pytest.mark.parametrize("launcher", ["python", "torchrun"])
def test_rewards_never_raise_and_every_call_is_bounded_under_fuzz(tmp_path, launcher):
    """2,000 seeded adversarial strings (1,000 in a plain process, 1,000 over two torchrun workers) plus 1 MB
    inputs. The bound only catches hangs: the sympy worker's start-up wait plus its deadline."""
    import reward
    first, cmd = (0, [sys.executable]) if launcher == "python" else (1000, TORCHRUN)
    r = subprocess.run(cmd + ["tests/fuzz_reward.py", str(first), "1000", str(tmp_path / "fz")], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    results = [json.load(open(p)) for p in sorted(tmp_path.glob("fz.rank*.json"))]
    assert len(results) == (1 if launcher == "python" else 2)
    assert sum(x["inputs"] for x in results) >= 1000
    assert [e for x in results for e in x["errors"]] == []
    assert max(x["slowest_s"] for x in results) < reward.STARTUP_TIMEOUT_S + 2 * reward.TIMEOUT_S


def test_igpo_lora_resume_reloads_the_base_and_the_adapter_exactly(task_ckpt, tmp_path, monkeypatch):
    """LoRA with dropout: resuming from step-2's merged weights would be wrong; the base comes from --model and the
    adapter from the checkpoint, and the dropout masks are a function of the step: step 4 is bit-identical."""
    # a random tiny model gets every reward 0, so no gradient: give every row a fixed non-zero advantage instead
    monkeypatch.setattr(igpo, "group_advantages", lambda total, *a, **k: torch.linspace(-1, 1, len(total)))
    args = ["--model", task_ckpt, *IGPO, "--steps", "4", "--save_every", "2", "--keep_last", "0", "--lora_rank", "4",
            "--lora_dropout", "0.3", "--lr", "1e-2"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    igpo.train(launch.parse_config(igpo.Config, igpo.PRESETS, args + ["--out_dir", str(full)]))
    cut.mkdir()
    shutil.copytree(full / "step-2", cut / "step-2")
    (cut / "latest").write_text("step-2\n")
    igpo.train(launch.parse_config(igpo.Config, igpo.PRESETS, args + ["--out_dir", str(cut), "--resume", "on"]))
    assert _same_params(full / "step-4", cut / "step-4") and not _same_params(full / "step-4", full / "step-2")
    a, b = (load_file(d / "step-4" / "adapter" / "adapter_model.safetensors") for d in (full, cut))
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------- pre-emption, damaged checkpoints, a full disk: helpers

def _codes(path):
    """{rank: exit code} that tests/rank_exit.py recorded."""
    return dict(tuple(map(int, line.split())) for line in open(path)) if os.path.exists(path) else {}


def _step_of(ckpt):
    return json.load(open(os.path.join(ckpt, "trainer_state.json")))["step"]


def _max_gap(a, b):
    """The largest absolute difference between the parameters of two checkpoints."""
    pa, pb = load_file(os.path.join(a, "model.safetensors")), load_file(os.path.join(b, "model.safetensors"))
    assert pa.keys() == pb.keys()
    return max(float((pa[k] - pb[k]).abs().max()) for k in pa)


# ----------------------------------------------------------------------------------------- damaged checkpoints

def _damage(path, how):
    data = path.read_bytes()
    path.write_bytes({"cut in its header": data[:100], "cut in half": data[:len(data) // 2], "empty": b""}[how])


@pytest.mark.parametrize("file,how,why", [
    ("model.safetensors", "cut in its header", "invalid header length"),
    ("model.safetensors", "cut in half", "incomplete metadata"),
    ("optim.pt", "cut in half", "BadZipFile"),
    ("trainer_state.json", "empty", "JSONDecodeError")])
def test_igpo_resume_skips_a_damaged_newest_checkpoint_naming_the_file(task_ckpt, igpo_runs, tmp_path, capsys,
                                                                       file, how, why):
    """The newest checkpoint (step-12, named by `latest`) is damaged: --resume on warns naming the bad file and why,
    continues from the newest intact older one (step-8), recomputes steps 9-12 and ends bit-identical to the
    uninterrupted run (parameters and every metrics row), replacing the damaged step-12. Continuing rather than
    refusing: resume is exact, so an older checkpoint costs only the recomputed steps, and a requeued job keeps
    running instead of failing until someone looks."""
    ref, out = igpo_runs(1), tmp_path / "run"
    shutil.copytree(ref, out)
    _damage(out / "step-12" / file, how)
    bad = str(out / "step-12" / file)
    with pytest.warns(UserWarning, match=re.escape(bad) + ".*" + why):
        igpo.train(launch.parse_config(igpo.Config, igpo.PRESETS, ["--model", task_ckpt, *IGPO, "--out_dir", str(out),
                                                                  "--resume", "on"]))
    assert f"resumed from {out / 'step-8'} at step 8" in capsys.readouterr().out
    assert _same_params(os.path.join(ref, "step-12"), out / "step-12") and launch.broken(str(out / "step-12")) is None
    assert _rows(str(out)) == _rows(ref)


def test_igpo_resume_refuses_when_no_checkpoint_is_intact(task_ckpt, igpo_runs, tmp_path):
    """step-12 cut in half, step-8 without its optim.pt: nothing intact is left, so --resume on exits with one line
    naming the newest checkpoint's bad file (a fresh start would silently drop the run)."""
    ref, out = igpo_runs(1), tmp_path / "run"
    shutil.copytree(ref, out)
    _damage(out / "step-12" / "model.safetensors", "cut in half")
    (out / "step-8" / "optim.pt").unlink()
    args = ["--model", task_ckpt, *IGPO, "--out_dir", str(out), "--resume", "on"]
    with pytest.warns(UserWarning), pytest.raises(SystemExit) as e:
        igpo.train(launch.parse_config(igpo.Config, igpo.PRESETS, args))
    msg = str(e.value.code)
    assert "no intact checkpoint" in msg and str(out / "step-12" / "model.safetensors") in msg and "\n" not in msg


def test_sft_resume_refuses_a_damaged_checkpoint_naming_the_file(sft_runs, tmp_path):
    """sft.py keeps a single checkpoint: with nothing older to fall back to, --resume on refuses in one line naming the
    bad file (starting afresh silently would drop the whole run)."""
    out = tmp_path / "ck"
    shutil.copytree(sft_runs(1), out)
    _damage(out / "model.safetensors", "cut in its header")
    with pytest.raises(SystemExit) as e:
        sft.train(sft.parse_config([*SFT, f"--out_dir={out}", "--resume=on"]))
    msg = str(e.value.code)
    assert msg.startswith(str(out / "model.safetensors")) and "invalid header length" in msg and "\n" not in msg


# ----------------------------------------------------------------------------------------------- a full disk

# What a full disk raises (measured on a full tmpfs): torch.save and safetensors raise their own types, not OSError
TORCH_FULL = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
SAFETENSORS_FULL = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
OS_FULL = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # open().write of the JSON and tokenizer files


def _half_then_fail(real, fails, error):
    """A writer like `real` (safetensors' save_file or torch.save) that, at a path where fails(path), writes half of
    what `real` writes there and then raises `error`."""
    def fake(obj, path, *args, **kwargs):
        if not fails(str(path)):
            return real(obj, path, *args, **kwargs)
        real(obj, str(path) + ".whole", *args, **kwargs)
        data = open(str(path) + ".whole", "rb").read()
        os.remove(str(path) + ".whole")
        open(path, "wb").write(data[:len(data) // 2])
        raise error
    return fake


@pytest.mark.parametrize("write", ["model.safetensors", "optim.pt"])
def test_igpo_a_failed_save_stops_naming_the_last_good_checkpoint(task_ckpt, igpo_runs, tmp_path, monkeypatch, write):
    """The disk fills up half-way through step-8's model.safetensors (or optim.pt): the run stops with one line naming
    step-4, the last good checkpoint; `latest` still names it, nothing of step-8 is left on disk (the space is
    freed), step-4 passes launch.broken, and --resume on from it ends bit-identical to the uninterrupted run."""
    import safetensors.torch
    ref, out = igpo_runs(1), tmp_path / "run"
    module = safetensors.torch if write == "model.safetensors" else torch
    name = "save_file" if write == "model.safetensors" else "save"
    with monkeypatch.context() as m:
        m.setattr(module, name, _half_then_fail(getattr(module, name), lambda path: "step-8" in path,
                                                SAFETENSORS_FULL if write == "model.safetensors" else TORCH_FULL))
        with pytest.raises(SystemExit) as e:
            igpo.train(launch.parse_config(igpo.Config, igpo.PRESETS, ["--model", task_ckpt, *IGPO, "--out_dir",
                                                                      str(out)]))
    msg = str(e.value.code)
    assert msg.startswith(f"{out / 'step-8'}: not saved (") and "\n" not in msg
    assert msg.endswith(f"the last good checkpoint is {out / 'step-4'}")
    assert ("SafetensorError: Error while serializing" if write == "model.safetensors" else "RuntimeError") in msg
    assert sorted(os.listdir(out)) == ["config.json", "latest", "metrics.jsonl", "step-4"]
    assert open(out / "latest").read().strip() == "step-4" and launch.broken(str(out / "step-4")) is None
    igpo.train(launch.parse_config(igpo.Config, igpo.PRESETS, ["--model", task_ckpt, *IGPO, "--out_dir", str(out),
                                                              "--resume", "on"]))
    assert _same_params(os.path.join(ref, "step-12"), out / "step-12")
    assert _rows(str(out)) == _rows(ref)


def test_sft_a_failed_save_stops_naming_the_last_good_checkpoint(sft_runs, tmp_path, monkeypatch):
    """sft.py's single checkpoint directory: its second save (step 8) fails half-way through optim.pt with an OSError
    (ENOSPC; EIO or a quota read the same); the run stops with one line naming the directory, which still holds
    step 4, intact; resuming ends bit-identical."""
    out = tmp_path / "ck"
    saves = []
    with monkeypatch.context() as m:
        # the second torch.save (step 8's optim.pt) fails
        m.setattr(torch, "save", _half_then_fail(torch.save, lambda path: saves.append(path) or len(saves) == 2,
                                                 OS_FULL))
        with pytest.raises(SystemExit) as e:
            sft.train(sft.parse_config([*SFT, f"--out_dir={out}"]))
    msg = str(e.value.code)
    assert msg.startswith(f"{out}: not saved (OSError: [Errno 28] No space left on device") and msg.endswith(f"the last good checkpoint is {out}")
    assert _step_of(out) == 4 and launch.broken(str(out)) is None
    assert sorted(os.listdir(tmp_path)) == ["ck"]  # no ck.saving, no .tmp-ck.saving*
    sft.train(sft.parse_config([*SFT, f"--out_dir={out}", "--resume=on"]))
    assert _same_params(sft_runs(1), out)


def _can_mount_tmpfs():
    """Can this user mount a private tmpfs (a user and mount namespace: root, or unprivileged user namespaces)?"""
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        try:
            return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "mount", "-t", "tmpfs", "-o",
                                   "size=64k", "tmpfs", d], capture_output=True, timeout=30).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs `unshare --user --mount` (a private tmpfs)")
def test_igpo_a_really_full_disk_under_torchrun_stops_every_rank_naming_the_last_good_checkpoint(
        task_ckpt, igpo_runs, tmp_path):
    """A real ENOSPC: the 2-process run writes its checkpoints to a private tmpfs (unshare: a user and mount namespace,
    no root needed where user namespaces are allowed) with room for 2.5 checkpoints. step-4 and step-8 fit; step-12's
    torch.save of optim.pt hits the full disk (torch raises RuntimeError, safetensors SafetensorError: neither is an
    OSError). Rank 0 frees the half-written step-12 and broadcasts one line naming step-8; every rank exits non-zero
    by itself at once (no hang until the process-group timeout, no kill by torchrun). Copied off the tmpfs, step-8
    resumes (at 2 processes) to a step-12 bit-identical to the uninterrupted run's."""
    ref, disk, out = igpo_runs(2), tmp_path / "disk", tmp_path / "run"
    disk.mkdir()
    ckpt_bytes = sum(-(-os.path.getsize(f) // 4096) * 4096
                     for f in glob.glob(os.path.join(ref, "step-8", "**", "*"), recursive=True) if os.path.isfile(f))
    flags = " ".join(["--model", task_ckpt, *IGPO, "--out_dir", f"{disk}/run"])
    torchrun = " ".join(TORCHRUN + ["tests/rank_exit.py", f"{out}.codes", sys.executable, "igpo.py"])
    script = (f"mount -t tmpfs -o size={int(2.5 * ckpt_bytes) + 65536} tmpfs {disk} || exit 99; {torchrun} {flags}; "
              f"rc=$?; cp -a {disk}/run {out}; exit $rc")
    with open(f"{out}.log", "w") as f:
        rc = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script], cwd=ROOT, env=ENV,
                            stdout=f, stderr=subprocess.STDOUT, timeout=240).returncode
    log = open(f"{out}.log").read()
    assert rc not in (0, 99), failure_log(log)
    codes = _codes(f"{out}.codes")
    assert sorted(codes) == [0, 1] and all(c != 0 for c in codes.values()), failure_log(log)
    line = f"{disk}/run/step-12: not saved (RuntimeError"
    assert log.count(line) == 2 and log.count(f"the last good checkpoint is {disk}/run/step-8") == 2, failure_log(log)
    assert "forcefully exiting" not in log
    assert sorted(os.listdir(out)) == ["config.json", "latest", "metrics.jsonl", "step-4", "step-8"]
    assert open(out / "latest").read().strip() == "step-8" and launch.broken(str(out / "step-8")) is None
    assert _igpo(task_ckpt, str(out), 2, "--resume", "on") == 0, failure_log(open(f"{out}.log").read())
    assert _same_params(os.path.join(ref, "step-12"), out / "step-12") and _rows(str(out)) == _rows(ref)


# ---------------------------------------------------- pre-emption on a cluster: every rank, other world sizes

def test_igpo_sigterm_to_every_process_under_torchrun_exits_0_on_every_rank_and_resumes_exactly(
        task_ckpt, igpo_runs, tmp_path):
    """SLURM's pre-emption signals every process of the job: torchrun and both ranks get SIGTERM at a seeded random
    step. Both ranks finish the rollout batch, save it and exit 0 (recorded by tests/rank_exit.py, since torchrun
    itself then ends with its own SignalException, exit 1, and reports no rank's code), within torchrun's shutdown
    wait (no SIGKILL). --resume on at 2 processes ends bit-identical to an uninterrupted 2-process run."""
    ref, out = igpo_runs(2), str(tmp_path / "term")
    at = random.Random("igpo-term-torchrun").randint(1, 9)
    cmd = TORCHRUN + ["tests/rank_exit.py", out + ".codes", sys.executable, "igpo.py", "--model", task_ckpt, *IGPO,
                      "--out_dir", out]
    _run(cmd, out + ".log", lambda: len(_rows(out)), at=at, sig=signal.SIGTERM)
    log = open(out + ".log").read()
    assert _codes(out + ".codes") == {0: 0, 1: 0}, failure_log(log)
    assert "forcefully exiting" not in log and "SIGTERM: stopped after step" in log
    stopped = _step_of(launch.latest_checkpoint(out))
    assert stopped >= at and stopped % 2 == 0 and len(_rows(out)) == stopped  # the end of the rollout batch (mu 2)
    assert _igpo(task_ckpt, out, 2, "--resume", "on") == 0, failure_log(open(out + ".log").read())
    assert _same_params(os.path.join(ref, "step-12"), os.path.join(out, "step-12"))
    assert _rows(out) == _rows(ref)


def test_sft_sigterm_to_every_process_under_torchrun_exits_0_on_every_rank_and_resumes_exactly(sft_runs, tmp_path):
    """As the igpo test above, for sft.py: both ranks finish the step, save it and exit 0; the resumed 2-process run
    ends bit-identical to an uninterrupted one, with the same log lines."""
    ref, out = sft_runs(2), str(tmp_path / "term")
    at = random.Random("sft-term-torchrun").randint(2, 12)
    cmd = TORCHRUN + ["tests/rank_exit.py", out + ".codes", sys.executable, "sft.py", *SFT, f"--out_dir={out}"]
    _run(cmd, out + ".log", lambda: open(out + ".log").read().count(" loss "), at=at, sig=signal.SIGTERM)
    log = open(out + ".log").read()
    assert _codes(out + ".codes") == {0: 0, 1: 0}, failure_log(log)
    assert "forcefully exiting" not in log and "(SIGTERM)" in log
    stopped = _step_of(out)
    assert at <= stopped < 16
    assert _sft(out, 2, "--resume=on") == 0, failure_log(open(out + ".log").read())
    assert _same_params(ref, out)
    assert _sft_lines(out + ".log", after=stopped) == _sft_lines(ref + ".log", after=stopped)


# Cross-world-size resume: a checkpoint holds full (gathered) tensors, so it loads at any world size, and every draw
# is keyed by global indices, so the resumed run makes the same draws. It is not bit-identical to an uninterrupted
# run at the new world size because the steps before the checkpoint ran at the old one, which rounds differently
# (measured on these tiny runs; the reasons are in the docstrings). Tolerances: igpo's is 33x its measured gap (8x the
# gap between its two uninterrupted runs), sft's 9x; both far below what resuming without the optimizer state does
# (measured: igpo 1.5e-3, sft 7.9e-3).
IGPO_WORLD_TOL = 1e-6  # measured: 3.0e-8 (2 -> 1 and 1 -> 2); the two uninterrupted runs: 1.2e-7 apart
SFT_WORLD_TOL = 1e-5   # measured: 1.14e-6 (2 -> 1 and 1 -> 2); the two uninterrupted runs: 1.11e-6 apart


@pytest.mark.parametrize("old,new", [(2, 1), (1, 2)])
def test_igpo_checkpoint_resumes_at_another_world_size_within_rounding(task_ckpt, igpo_runs, tmp_path, old, new):
    """step-8 of an uninterrupted run at `old` processes, resumed at `new`, ends (step 12) within IGPO_WORLD_TOL of an
    uninterrupted run at `new`; the same tokens are sampled (rewards, accuracy, lengths equal) and the losses agree
    to 1e-4. Why not 0: each rank left-pads its own prompts to its longest, so a row carries a different amount of
    padding at 1 and 2 processes; a padded row sits at shifted RoPE positions over a longer (masked) key axis, so it
    equals its unpadded self only up to float rounding (logits move by ~1e-6 on this model). The log-probs, hence the
    updates, differ in their last bits over steps 1-8 (the grad-norm clip never binds here: norms ~0.02 < 1).
    A sampled token could flip if two candidates tied within that rounding; not on this run (checked: equal rows)."""
    ref_old, ref_new, out = igpo_runs(old), igpo_runs(new), tmp_path / "moved"
    out.mkdir()
    shutil.copytree(os.path.join(ref_old, "step-8"), out / "step-8")
    (out / "latest").write_text("step-8\n")
    assert _igpo(task_ckpt, str(out), new, "--resume", "on") == 0, failure_log(open(str(out) + ".log").read())
    assert _max_gap(os.path.join(ref_new, "step-12"), out / "step-12") <= IGPO_WORLD_TOL
    got, want = _rows(str(out)), _rows(ref_new)[8:]
    assert [r["step"] for r in got] == [9, 10, 11, 12]
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        assert {k: g[k] for k in g if k in ("acc", "reward", "comp_len", "format", "all_wrong_before")} == \
               {k: w[k] for k in w if k in ("acc", "reward", "comp_len", "format", "all_wrong_before")}
        assert g == pytest.approx(w, rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("old,new", [(2, 1), (1, 2)])
def test_sft_checkpoint_resumes_at_another_world_size_within_rounding(sft_runs, tmp_path, old, new):
    """sft.py stopped at step 8 (--stop_at) at `old` processes and resumed at `new` ends (step 16) within SFT_WORLD_TOL
    of an uninterrupted run at `new`, and prints the same log lines (4 decimals). Why not 0: the gradient-norm clip
    (--grad_clip 1; the norm is ~10 at the start, so it binds) computes its norm from whole tensors in one process and,
    under FSDP2, from each rank's shard (sum of squares, all-reduced): the clip coefficient differs in its last bit
    and scales every gradient; AdamW carries that on. With --grad_clip 1e9 the two world sizes stay bit-identical
    (checked by hand over 2 steps: a rank's micro-batch is the 1-process run's micro-batch, padding included)."""
    ref_new, out = sft_runs(new), str(tmp_path / "moved")
    assert _sft(out, old, "--stop_at=8") == 0, failure_log(open(out + ".log").read())
    assert _step_of(out) == 8
    assert _sft(out, new, "--resume=on") == 0, failure_log(open(out + ".log").read())
    assert "resumed from" in open(out + ".log").read() and _step_of(out) == 16
    assert _max_gap(ref_new, out) <= SFT_WORLD_TOL
    assert _sft_lines(out + ".log", after=8) == _sft_lines(ref_new + ".log", after=8)


# ------------------------------------------------------------------------------------- eval.py killed mid-way

EVAL = ["--bench", "task", "--limit", "24", "--samples", "2", "--temperature", "1.2", "--batch_size", "4"]
TASK_MODEL = os.path.join(ROOT, "checkpoints", "task-sft")  # the committed task model: it scores ~0.3, not 0


@pytest.fixture(scope="module")
def eval_ref(tmp_path_factory):
    """An uninterrupted evaluation (in this process; rows do not depend on the world size): its folder."""
    import eval as E
    out = str(tmp_path_factory.mktemp("eval-ref") / "ref")
    E.main(["--model", TASK_MODEL, *EVAL, "--out_dir", out])
    return out


@pytest.mark.skipif(not os.path.exists(os.path.join(TASK_MODEL, "model.safetensors")), reason="no task model")
@pytest.mark.parametrize("world", [1, 2])
def test_eval_sigkill_mid_way_then_the_same_command_skips_finished_rows_and_scores_the_same(eval_ref, tmp_path,
                                                                                            world):
    """eval.py (avg@2 at T 1.2 on 24 task problems: 48 rows, batches of 4 per rank) is SIGKILLed once 8 rows are in
    its .rank*.part files; the same command again generates only the rest (it says how many rows it found) and
    writes the same rows (every field, same order) and the same summary as an uninterrupted run."""
    out = str(tmp_path / "ev")
    cmd = (TORCHRUN if world == 2 else [sys.executable]) + ["eval.py", "--model", TASK_MODEL, *EVAL, "--out_dir", out]
    parts = lambda: sum(len(open(f).readlines()) for f in glob.glob(out + "/task.jsonl.rank*.part"))  # noqa: E731
    assert _run(cmd, out + ".log", parts, at=8, sig=signal.SIGKILL) == -signal.SIGKILL
    assert not os.path.exists(os.path.join(out, "task.jsonl")) and 8 <= parts() < 48
    done = parts()
    assert _run(cmd, out + ".log") == 0, failure_log(open(out + ".log").read())
    log = open(out + ".log").read()
    found = re.search(r"task: (\d+) rows already in .*; rank 0 generates (\d+)", log)
    assert found and int(found[1]) >= done - world  # a torn last line per rank is dropped and redone
    if world == 1:
        assert int(found[1]) + int(found[2]) == 48
    rows = lambda d: [json.loads(line) for line in open(os.path.join(d, "task.jsonl"))]  # noqa: E731
    assert rows(out) == rows(eval_ref) and not glob.glob(out + "/*.part")
    summary = lambda d: {k: v for k, v in json.load(open(os.path.join(d, "task.summary.json"))).items()  # noqa: E731
                         if k not in ("seconds", "config", "world")}
    assert summary(out) == summary(eval_ref) and summary(out)["accuracy"] > 0
