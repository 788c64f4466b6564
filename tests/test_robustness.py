"""Hostile inputs of issue 16: prompts past the context, reward sources that hang or return the wrong thing,
broken plugins and the autoload switch, non-UTF-8 preference data, an SFT output directory in use."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest
import torch
from installed_plugins import POLITENESS_PLUGIN, make_distribution
from patience import communicate, cpu_seconds, wait_until

import textenv
from textenv import cli, plugin_manager
from textenv.envs.task import TextTask, tail_token_ids
from textenv.models import context_length, tiny_config
from textenv.plugin_manager import PluginError, make_plugin_manager
from textenv.rewards import (
    MAX_ABS_REWARD,
    RewardError,
    RewardInterrupted,
    RewardPipeline,
    RewardSource,
    RewardTimeout,
    parse_reward_spec,
)

# ------------------------------------------------------------------ prompts past the context


def test_a_megabyte_prompt_line_is_cut_to_the_context_in_seconds_with_one_warning(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a short prompt\n" + "x" * 1_000_000 + " THE END\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        task = TextTask.build(model="tiny-random", prompts=str(path), reward="length", max_new_tokens=6)
    read = []  # the lengths of the texts the tokenizer is given

    def tokenizer(pieces, **kwargs):
        read.extend(len(p) for p in pieces)
        return task.tokenizer(pieces, **kwargs)

    assert tail_token_ids(tokenizer, [path.read_text().splitlines()[1]], 506)[1] == [True]
    assert sum(read) < 20_000  # only the kept end is tokenized, not the megabyte
    messages = [str(w.message) for w in caught if "prompt(s)" in str(w.message)]
    assert messages == ["1 prompt(s) longer than 506 tokens keep only their last 506 tokens "
                        "(the model's context of 512 tokens less max_new_tokens=6)"]
    assert task.prompt_width == 506 and task.seq_len == 512  # never past tiny-random's 512 positions
    assert task.tokenizer.decode(task.prompt_ids[1, -8:]) == " THE END"
    assert int(task.prompt_mask[0].sum()) == len("a short prompt")  # the short one is whole


def test_prompt_options_past_the_context_are_refused():
    with pytest.raises(ValueError, match=r"max_prompt_tokens=600 \+ max_new_tokens=6 is past the model's context "
                                         r"of 512 tokens; give max_prompt_tokens <= 506"):
        TextTask.build(model="tiny-random", prompts=["hi"], reward="length", max_new_tokens=6, max_prompt_tokens=600)
    with pytest.raises(ValueError, match=r"max_new_tokens=512 leaves no room for a prompt in the model's context "
                                         r"of 512 tokens"):
        TextTask.build(model="tiny-random", prompts=["hi"], reward="length", max_new_tokens=512)


def test_a_prompt_drawn_later_is_cut_to_the_bank_width(byte_tokenizer):
    task = TextTask.build(model="tiny-random", prompts=["abcd", "ab"], reward="length", max_new_tokens=4)
    with pytest.warns(UserWarning, match="1 prompt.s. longer than 4 tokens keep only their last 4 tokens"):
        ids, mask = task.encode(["y" * 100_000 + "wxyz"])
    assert byte_tokenizer.decode(ids[0]) == "wxyz" and mask.sum() == 4


def test_context_length_comes_from_the_config_or_the_tokenizer(tmp_path, byte_tokenizer):
    tiny_config().save_pretrained(tmp_path / "llama")
    from transformers import GPT2Config

    GPT2Config(n_positions=96, n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path / "gpt2")
    assert context_length("tiny-random") == 512
    assert context_length(str(tmp_path / "llama")) == 512
    assert context_length(str(tmp_path / "gpt2")) == 96
    assert context_length(None, byte_tokenizer) is None  # ByT5's model_max_length is "unbounded"
    limited = type(byte_tokenizer)(model_max_length=300)
    assert context_length(str(tmp_path / "llama"), limited) == 300  # the smaller one wins
    assert context_length(str(tmp_path / "missing")) is None


@pytest.mark.parametrize("limit", [None, 1, 5, 64])
def test_tail_token_ids_keep_the_end_of_the_whole_tokenization(byte_tokenizer, limit):
    texts = ["", "short", "a b c " * 50, "é" * 300 + "end", "z" * 10_000]
    ids, cut = tail_token_ids(byte_tokenizer, texts, limit)
    whole = byte_tokenizer(texts, add_special_tokens=False)["input_ids"]
    assert ids == [w if limit is None else w[-limit:] for w in whole]
    assert cut == [limit is not None and len(w) > limit for w in whole]


# ------------------------------------------------------------------ reward sources: wrong results


CONTEXT = dict(prompts=["p", "q"], completions=["a great day", "awful"], completion_ids=[[5, 6], [7]],
               terminated=[True, False])
ONE_TOKEN = dict(CONTEXT, completion_ids=[[5], [7]])


def _pipeline(pm, fn, spec="broken", **kwargs):
    class Plugin:
        @textenv.hookimpl
        def textenv_reward_sources(self):
            return [RewardSource("broken", fn)]

    pm.register_plugin(Plugin(), "broken-plugin", "test")
    return RewardPipeline.from_spec(spec, pm, **kwargs)


@pytest.mark.parametrize("context", [CONTEXT, ONE_TOKEN], ids=["tokens", "max_new_tokens=1"])
@pytest.mark.parametrize("result, message", [
    ({"a": 1.0, "b": 2.0}, r"must return a sequence of 2 floats .*got dict"),
    (["0.5", "0.2"], r"returned '0.5' for completion #0 'a great day', a str; expected a list of 2 floats"),
    ([b"1", b"2"], r"returned b'1' for completion #0 .*, a bytes; expected"),
    ([[[0.1]], [[0.2]]], r"returned \[\[0.1\]\] for completion #0 .*, a list; expected"),
    (np.ones((2, 1)), r"returned an array of shape \(2, 1\) and dtype float64; expected shape \(2,\)"),
    (torch.ones(2, 1), r"returned an array of shape \(2, 1\) and dtype float32; expected shape \(2,\)"),
    (np.array(["1", "2"]), r"returned an array of shape \(2,\) and dtype <U1"),
    ([0.5, [0.1]], r"returned a float for completion #0 .* and a list for completion #1"),
    (0.5, r"must return a sequence of 2 floats .*got float 0.5"),
    ("0.5", r"must return a sequence of 2 floats .*got str"),
    ((x for x in [1.0, 2.0]), r"must return a sequence of 2 floats .*got generator"),
    ([[0.1, 0.2, 0.3], [0.1]], r"returned 3 per-token rewards for completion #0 .* which has [12] tokens"),
])
def test_a_wrong_result_type_names_the_source_and_what_was_expected(pm, result, message, context):
    pipeline = _pipeline(pm, lambda completions: result)
    with pytest.raises(RewardError, match=rf"reward source 'broken' {message}"):
        pipeline(**context)


@pytest.mark.parametrize("result", [
    [0.5, 1], np.array([0.5, 1.0]), torch.tensor([0.5, 1.0], dtype=torch.bfloat16), [np.float32(0.5), True],
    [torch.tensor(0.5), np.array(1.0)],
])
def test_one_number_per_completion_in_any_form_is_accepted(pm, result):
    assert _pipeline(pm, lambda completions: result)(**CONTEXT).total.tolist() == [0.5, 1.0]


def test_per_token_rows_as_lists_or_arrays_are_accepted(pm):
    batch = _pipeline(pm, lambda completions: [np.array([0.25, 0.25]), [1.0]])(**CONTEXT)
    assert batch.total.tolist() == [0.5, 1.0] and [t.tolist() for t in batch.token_rewards] == [[0.25, 0.25], [1.0]]


@pytest.mark.parametrize("result, where", [
    ([1e300, 0.0], r"returned 1e\+300 for completion #0 'a great day'"),
    ([0.0, -2e6], r"returned -2e\+06 for completion #1 'awful'"),
    ([[0.0, 0.0], [1e7]], r"returned 1e\+07 at token 0 of completion #1 'awful'"),
])
def test_a_reward_so_large_the_loss_would_overflow_names_the_source(pm, result, where):
    pipeline = _pipeline(pm, lambda completions: result)
    with pytest.raises(RewardError, match=rf"reward source 'broken' \(test\) {where}: a term past ±1e\+06 would "
                                          r"make the PPO loss overflow; scale it with a weight"):
        pipeline(**CONTEXT)


def test_a_large_raw_reward_scaled_by_its_weight_or_clip_is_accepted(pm):
    assert MAX_ABS_REWARD == 1e6
    assert _pipeline(pm, lambda completions: [5e6, 0.0], "1e-3*broken")(**CONTEXT).total.tolist() == [5e3, 0.0]
    assert _pipeline(pm, lambda completions: [5e6, 0.0], "broken(clip=10)")(**CONTEXT).total.tolist() == [10.0, 0.0]


def test_a_huge_reward_in_training_names_the_source_not_a_nan_loss():
    import gymnasium as gym

    from textenv.agents import PPO, TrainingError

    env = gym.make("textenv/TextGen-v0", model="tiny-random", prompts=["hi", "a"], max_new_tokens=4, reward=[huge])
    agent = PPO(env, batch_size=2, mini_batch_size=2, ppo_epochs=1, precision="fp32", progress=False, seed=0)
    with pytest.raises(TrainingError, match=r"reward source 'huge' .* returned 1e\+300 .* PPO loss overflow"):
        agent.learn(2)


def huge(completions):
    return [1e300] * len(completions)


# ------------------------------------------------------------------ reward sources: hangs and Ctrl-C


@pytest.fixture
def hang():
    """A source that waits until the test ends (its abandoned thread then returns)."""
    release = threading.Event()

    def waits(completions):
        release.wait(60)
        waits.returned.set()
        return [0.0] * len(completions)

    waits.returned = threading.Event()
    yield waits
    release.set()


def test_timeout_is_a_term_option_checked_like_the_others():
    assert parse_reward_spec("a(timeout=2.5) + b")[0].timeout == 2.5
    assert parse_reward_spec({"a": {"timeout": 3}})[0].timeout == 3.0
    for bad in ("0", "-1", "soon", "True"):
        with pytest.raises(RewardError, match=r"'a': timeout= must be a number of seconds > 0, got"):
            parse_reward_spec(f"a(timeout={bad})")


@pytest.mark.parametrize("how", ["term option", "pipeline default", "environment", "term over default"])
def test_a_source_past_its_timeout_is_an_error_that_names_it(pm, hang, monkeypatch, how):
    spec, kwargs = "broken", {}
    if how == "term option":
        spec = "broken(timeout=0.2)"
    elif how == "pipeline default":
        kwargs = {"timeout": 0.2}
    elif how == "environment":
        monkeypatch.setenv("TEXTENV_REWARD_TIMEOUT", "0.2")
    else:
        spec, kwargs = "broken(timeout=0.2)", {"timeout": 600}
    pipeline = _pipeline(pm, hang, spec, **kwargs)
    with pytest.raises(RewardTimeout, match=r"reward source 'broken' \(test\) did not return within its timeout "
                                            r"of 0.2 s on 2 completion\(s\); the call is abandoned"):
        pipeline(**CONTEXT)
    assert not hang.returned.is_set()  # abandoned while it still ran, not waited for


def test_a_bad_timeout_in_the_environment_is_named(pm, monkeypatch):
    monkeypatch.setenv("TEXTENV_REWARD_TIMEOUT", "soon")
    with pytest.raises(RewardError, match=r"TEXTENV_REWARD_TIMEOUT='soon': expected a number of seconds > 0"):
        RewardPipeline.from_spec("length", pm)


def test_a_source_with_a_timeout_still_sees_the_grad_mode_and_returns_its_values(pm):
    def grad_mode(completions):
        return [float(torch.is_grad_enabled())] * len(completions)

    pipeline = _pipeline(pm, grad_mode, "broken(timeout=30)")
    with torch.no_grad():
        assert pipeline(**CONTEXT).total.tolist() == [0.0, 0.0]
    assert pipeline(**CONTEXT).total.tolist() == [1.0, 1.0]
    raising = _pipeline(pm, lambda completions: 1 / 0, "broken(timeout=30)")
    with pytest.raises(RewardError, match="'broken' .* raised ZeroDivisionError"):
        raising(**CONTEXT)


@pytest.fixture
def ctrl_c_raises():
    """Python's own SIGINT handler for the test: a shell starts a background job (``cmd &``) with SIGINT ignored,
    and Python then keeps it ignored, so a Ctrl-C the test sends itself would be lost."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("spec", ["broken", "broken(timeout=60)"], ids=["no timeout", "timeout"])
def test_ctrl_c_interrupts_a_reward_call_and_names_the_source(pm, hang, ctrl_c_raises, spec):
    pipeline = _pipeline(pm, hang, spec)
    # At the main thread: a process-wide os.kill may be taken by another thread, and the source's wait in the main
    # thread then runs on to its end (the test once waited the 60 s).
    timer = threading.Timer(0.3, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(RewardInterrupted, match=r"Ctrl-C while reward source 'broken' \(test\) was scoring "
                                                    r"2 completion\(s\), after"):
            pipeline(**CONTEXT)
    finally:
        timer.cancel()
    assert issubclass(RewardInterrupted, KeyboardInterrupt)


HANGING_SOURCE = """
import os, threading

def hangs_second(completions):
    calls = os.path.join(os.path.dirname(__file__), "calls")
    with open(calls, "a") as f:
        f.write("x")
    if os.path.getsize(calls) > 1:
        threading.Event().wait()
    return [0.0] * len(completions)
"""


def test_ctrl_c_in_a_hanging_reward_saves_the_last_good_state_and_exits_130(tmp_path):
    (tmp_path / "source.py").write_text(HANGING_SOURCE)
    run = tmp_path / "run"
    child = subprocess.Popen(
        [sys.executable, "-m", "textenv.cli", "train", "--model", "tiny-random",
         "--reward", f"python:{tmp_path / 'source.py'}:hangs_second", "--iterations", "3", "--batch-size", "2",
         "--mini-batch-size", "2", "--max-new-tokens", "4", "--eval-prompts", "0", "--output-dir", str(run),
         "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        calls = tmp_path / "calls"
        wait_until(lambda: child.poll() is not None or (calls.exists() and calls.stat().st_size > 1),
                   what="the second reward call", progress=[lambda: cpu_seconds(child.pid)])
        assert child.poll() is None, child.communicate()
        time.sleep(0.3)
        child.send_signal(signal.SIGINT)  # PPO's first Ctrl-C: finish the iteration (it cannot: the source hangs)
        time.sleep(0.5)
        child.send_signal(signal.SIGINT)  # the second interrupts the reward call
        out, err = communicate(child)
    finally:
        child.kill()
    assert child.returncode == 130, err
    assert "checkpoint of iteration 1 in" in out
    assert (run / "checkpoints" / "iter_000001").is_dir()
    assert err.strip().splitlines()[-1].startswith(
        f"textenv: interrupted: Ctrl-C while reward source 'python:{tmp_path / 'source.py'}:hangs_second'")


# ------------------------------------------------------------------ plugins


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """A good plugin (entry point ``polite``) and a broken one (``demo``) on sys.path; no environment switches."""
    make_distribution(tmp_path, body=POLITENESS_PLUGIN, name="textenv-polite-plugin", entry="polite")
    make_distribution(tmp_path, body="import no_such_dependency\n", name="textenv-broken-plugin")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("TEXTENV_DISABLE_PLUGIN_AUTOLOAD", "TEXTENV_DISABLE_PLUGINS"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_a_broken_plugin_says_how_to_run_without_it(installed, monkeypatch):
    with pytest.raises(PluginError, match=r"plugin 'demo' from textenv-broken-plugin 1.0 failed to load .*"
                                          r"ModuleNotFoundError.*; to run without it: textenv -p no:demo \.\.\. "
                                          r"\(or TEXTENV_DISABLE_PLUGINS=demo; TEXTENV_DISABLE_PLUGIN_AUTOLOAD=1"):
        make_plugin_manager(autoload=True)
    assert "politeness" in make_plugin_manager(autoload=True, disabled=["demo"]).reward_sources()
    assert "politeness" in make_plugin_manager(autoload=True, disabled=["textenv-broken-plugin:demo"]).reward_sources()
    monkeypatch.setenv("TEXTENV_DISABLE_PLUGINS", " other , demo")
    assert "politeness" in make_plugin_manager(autoload=True).reward_sources()


def test_one_plugin_is_blocked_by_name_and_others_still_load(installed):
    pm = make_plugin_manager(autoload=True, disabled=["demo", "polite", "sentiment"])
    assert {"politeness", "sentiment", "sentiment_dense"}.isdisjoint(pm.reward_sources())
    with pytest.raises(RewardError, match=r"unknown reward source 'politeness'.*Blocked plugins: demo, polite, "
                                          r"sentiment"):
        pm.get_reward_source("politeness")
    assert "length" in pm.reward_sources()


def test_a_plugin_failing_in_a_hook_says_how_to_block_it(tmp_path, monkeypatch):
    make_distribution(tmp_path, name="textenv-moody-plugin", body="""
        import textenv

        @textenv.hookimpl
        def textenv_reward_sources():
            raise RuntimeError("moody")
    """)
    monkeypatch.syspath_prepend(str(tmp_path))
    pm = make_plugin_manager(autoload=True)
    with pytest.raises(PluginError, match=r"failed in textenv_reward_sources: RuntimeError: moody; to run without it: "
                                          r"textenv -p no:demo"):
        pm.reward_sources()


@pytest.mark.parametrize("value, autoload", [
    (None, True), ("", True), ("1", False), ("0", False), ("false", False), ("no", False), ("true", False),
])
def test_the_autoload_switch_reads_as_pytest_reads_its_own(installed, monkeypatch, value, autoload):
    """pytest: ``os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD")`` for truth, so any non-empty value disables."""
    monkeypatch.setenv("TEXTENV_DISABLE_PLUGINS", "demo")
    if value is not None:
        monkeypatch.setenv("TEXTENV_DISABLE_PLUGIN_AUTOLOAD", value)
    pm = make_plugin_manager()
    assert ("politeness" in pm.reward_sources()) is autoload
    if not autoload:
        with pytest.raises(RewardError, match=rf"unknown reward source 'politeness'.*Installed plugins are not "
                                              rf"loaded: autoload is off \(TEXTENV_DISABLE_PLUGIN_AUTOLOAD={value!r} "
                                              r"is set; any non-empty value turns it off, as pytest's"):
            pm.get_reward_source("politeness")


def test_with_autoload_off_a_plugin_named_with_p_still_loads(installed):
    pm = make_plugin_manager(autoload=False, load=["polite"])
    assert pm.reward_sources()["politeness"].origin == "entry point 'polite' (textenv-polite-plugin 1.0)"
    with pytest.raises(PluginError, match=r"-p nosuch: no installed plugin of that name"):
        make_plugin_manager(autoload=False, load=["nosuch"])


def test_plugin_switches_are_read_before_the_command():
    argv = ["-p", "no:a", "-pb", "-p=no:c", "--disable-plugin-autoload", "train", "-p", "no:x"]
    assert cli.plugin_switches(argv) == (["a", "c"], ["b"], True)
    assert cli.plugin_switches(["plugins"]) == ([], [], False)


@pytest.mark.parametrize("argv, env, status, shown", [
    (["plugins"], {}, 2, None),
    (["-p", "no:demo", "plugins"], {}, 0, True),
    (["plugins"], {"TEXTENV_DISABLE_PLUGINS": "demo"}, 0, True),
    (["--disable-plugin-autoload", "-p", "polite", "plugins"], {}, 0, True),
    (["plugins"], {"TEXTENV_DISABLE_PLUGIN_AUTOLOAD": "0"}, 0, False),
])
def test_the_command_line_runs_past_a_broken_plugin(installed, monkeypatch, capsys, argv, env, status, shown):
    monkeypatch.setattr(plugin_manager, "_default", None)  # made by main(), as in a fresh process
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli.main(argv) == status
    out, err = capsys.readouterr()
    if status:
        assert err.count("\n") == 1 and "to run without it: textenv -p no:demo ..." in err
    else:
        assert ("politeness" in out) is shown


def test_p_no_blocks_a_plugin_of_the_process_wide_manager(fresh_default_pm, capsys):
    class Broken:
        @textenv.hookimpl
        def textenv_add_commands(self, subparsers):
            raise RuntimeError("no parser for you")

    fresh_default_pm.register_plugin(Broken(), "broken", "test")
    assert cli.main(["-p", "no:broken", "plugins"]) == 0
    assert "sentiment" in capsys.readouterr().out
    assert plugin_manager.get_plugin_manager().is_blocked("broken")


# ------------------------------------------------------------------ one line owed: RM data, SFT output


def test_non_utf8_preference_data_names_the_path_and_line(tmp_path, capsys):
    from textenv.plugins.reward_model.data import PreferenceDataError, read_preferences

    path = tmp_path / "prefs.jsonl"
    good = json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}).encode()
    path.write_bytes(b"\xef\xbb\xbf" + good + b"\n" + good[:-2] + b"\xff\xfe\"}\n")
    with pytest.raises(PreferenceDataError, match=rf"{path}:2: not UTF-8 text \(invalid start byte at byte"):
        read_preferences(path)
    assert cli.main(["rm", "train", str(path), "--output", str(tmp_path / "rm"), "--backbone", "tiny-random"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path}:2: not UTF-8 text" in err


@pytest.fixture
def demos(tmp_path):
    path = tmp_path / "demos.jsonl"
    path.write_text(json.dumps({"prompt": "p", "completion": " c"}) + "\n")
    return str(path)


@pytest.mark.parametrize("content, message", [
    ({"textenv-rm.json": "{}", "member_0/model.safetensors": ""}, "the directory is not empty and holds no "
                                                                  "fine-tuned model .*; choose another directory"),
    ({"textenv-sft.json": "{}"}, "already holds a fine-tuned model; pass --overwrite to replace it"),
    (None, "exists and is not a directory"),
])
def test_sft_refuses_an_output_directory_that_holds_something_else(tmp_path, demos, capsys, content, message):
    out = tmp_path / "out"
    if content is None:
        out.write_text("a file")
    else:
        for name, text in content.items():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_text(text)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert cli.main(["sft", demos, "--output", str(out), "--model", "tiny-random"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert __import__("re").search(rf"textenv: error: --output {out}: {message}", err), err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written


def test_sft_overwrite_replaces_its_own_model(tmp_path, demos):
    from textenv.agents.sft import SFTConfig, train_sft

    out = tmp_path / "sft"
    config = SFTConfig(epochs=1, batch_size=1, max_length=16, device="cpu")
    train_sft(demos, out, model="tiny-random", config=config, progress=False)
    result = train_sft(demos, out, model="tiny-random", config=config, progress=False, overwrite=True)
    assert result.path == out and (out / "textenv-sft.json").is_file()
    assert not math.isnan(result.final_loss)
