"""Reward specs, the pipeline's weights and normalization, and every error path of a source."""

from __future__ import annotations

import contextlib
import copy
import math
import signal
import threading
import time
import warnings

import numpy as np
import pytest
from patience import wait_until
from stable_baselines3.common.running_mean_std import RunningMeanStd

import textenv
from textenv import rewards
from textenv.envs import TextGenVectorEnv
from textenv.generation import generate_episodes
from textenv.models import build_tiny_model
from textenv.rewards import (
    RewardError,
    RewardInterrupted,
    RewardPipeline,
    RewardSource,
    TermSpec,
    parse_reward_spec,
)

CONTEXT = dict(
    prompts=["p0", "p1"],
    completions=["a great day", "awful awful awful"],
    completion_ids=[[1, 2, 3], [4, 5]],
    terminated=[True, False],
)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("sentiment", [TermSpec("sentiment")]),
        ("sentiment + 0.5*length", [TermSpec("sentiment"), TermSpec("length", 0.5)]),
        ("2 * sentiment - repetition", [TermSpec("sentiment", 2.0), TermSpec("repetition", -1.0)]),
        ("-length", [TermSpec("length", -1.0)]),
        ("length(target=20, unit=words)", [TermSpec("length", options={"target": 20, "unit": "words"})]),
        ("keyword(include=['a', 'b'], weight=3)", [TermSpec("keyword", 3.0, options={"include": ["a", "b"]})]),
        ("keyword(include=[good, great])", [TermSpec("keyword", options={"include": ["good", "great"]})]),
        ("sentiment(normalize=True, clip=2.5)", [TermSpec("sentiment", normalize=True, clip=2.5)]),
        ("human(db=runs/feedback-2.db, pace=4) + reward_model(path=/tmp/rm, batch_size=8)",
         [TermSpec("human", options={"db": "runs/feedback-2.db", "pace": 4}),
          TermSpec("reward_model", options={"path": "/tmp/rm", "batch_size": 8})]),
        ("human(db=feedback.db, min_delay=0.3)", [TermSpec("human", options={"db": "feedback.db", "min_delay": 0.3})]),
        ("python:my-pkg.mod:fn + length", [TermSpec("python:my-pkg.mod:fn"), TermSpec("length")]),
        ({"sentiment": 1.0, "length": {"weight": 0.5, "target": 9}},
         [TermSpec("sentiment"), TermSpec("length", 0.5, options={"target": 9})]),
        (["sentiment", {"source": "length", "weight": 0.25, "normalize": True}],
         [TermSpec("sentiment"), TermSpec("length", 0.25, normalize=True)]),
    ],
)
def test_parse_reward_spec(spec, expected):
    assert parse_reward_spec(spec) == expected


@pytest.mark.parametrize("spec, message", [
    ("", "empty reward spec"),
    ("0.5*", "cannot read reward term"),
    ("sentiment(3)", "key=value"),
    ("length(target=foo())", "must be a literal"),
    ({"length": "heavy"}, "expected a weight or a dict"),
    ([3], "names or dicts"),
    (3.5, "string, dict or list"),
])
def test_bad_specs_say_what_is_wrong(spec, message):
    with pytest.raises(RewardError, match=message):
        parse_reward_spec(spec)


@pytest.mark.parametrize("spec, normalize", [
    ("a(normalize=false)", False),
    ("a(normalize=FALSE)", False),
    ("a(normalize=False)", False),
    ("a(normalize=true)", True),
    ("a(normalize=True)", True),
    ({"a": {"normalize": "false"}}, False),
    ({"a": {"normalize": "True"}}, True),
    ({"a": {"normalize": False}}, False),
    ({"a": {"normalize": True}}, True),
])
def test_normalize_reads_true_and_false(spec, normalize):
    assert parse_reward_spec(spec) == [TermSpec("a", normalize=normalize)]


@pytest.mark.parametrize("spec, clip", [
    ("a(clip=2)", 2.0),
    ("a(clip=None)", None),
    ({"a": {"clip": None}}, None),
    ({"a": {"clip": "0.5"}}, 0.5),
])
def test_clip_is_a_number_or_none(spec, clip):
    assert parse_reward_spec(spec) == [TermSpec("a", clip=clip)]


@pytest.mark.parametrize("spec, message", [
    ("a(normalize=no)", "'a': normalize= must be true or false, got 'no'"),
    ("b + a(normalize=None)", "'a': normalize= must be true or false, got None"),
    ({"a": {"normalize": 1}}, "'a': normalize= must be true or false, got 1"),
    ("a(clip=none)", "'a': clip= must be a number >= 0 .*, got 'none'"),
    ("a(clip=abc)", "'a': clip= must be a number >= 0 .*, got 'abc'"),
    ("a(clip=True)", "'a': clip= must be a number >= 0 .*, got True"),
    ("a(clip=-1)", "'a': clip= must be a number >= 0 .*, got -1"),
    ({"a": {"clip": "abc"}}, "'a': clip= must be a number >= 0 .*, got 'abc'"),
    ({"a": {"clip": [1]}}, r"'a': clip= must be a number >= 0 .*, got \[1\]"),
    ("a(weight=abc)", "'a': weight= must be a finite number, got 'abc'"),
    ({"a": {"weight": "nan"}}, "'a': weight= must be a finite number, got 'nan'"),
])
def test_bad_normalize_or_clip_names_the_term(spec, message):
    with pytest.raises(RewardError, match=message):
        parse_reward_spec(spec)


@pytest.mark.parametrize("spec, value", [
    ("keyword(include=':)') + length", ":)"),
    ("keyword(include='(') + length", "("),
    ('keyword(include="] - [") + length', "] - ["),
    ("keyword(include='a + b') + length", "a + b"),
    ("keyword(include=\"it's (\") + length", "it's ("),
    ("keyword(include='it\\'s (') + length", "it's ("),
])
def test_quotes_hide_brackets_and_signs_from_the_term_splitter(spec, value):
    assert parse_reward_spec(spec) == [TermSpec("keyword", options={"include": value}), TermSpec("length")]


def test_weights_sum_into_the_total(pm):
    pipeline = RewardPipeline.from_spec("2*sentiment - 0.5*length(target=2)", pm)
    batch = pipeline(**CONTEXT)
    raw_sent = np.array(batch.raw_terms["sentiment"])
    assert raw_sent[0] > 0.5 > -0.5 > raw_sent[1]  # VADER: "great" vs "awful"
    np.testing.assert_allclose(batch.terms["sentiment"], 2 * raw_sent)
    # lengths in tokens, EOS (terminated) not counted: 2 and 2 tokens vs target 2
    np.testing.assert_allclose(batch.raw_terms["length"], [0.0, 0.0])
    np.testing.assert_allclose(batch.total, batch.terms["sentiment"] + batch.terms["length"])
    assert batch.token_rewards is None


def test_running_normalization_and_clipping(pm):
    source = RewardSource("value", lambda completions: [float(len(c)) for c in completions])
    pm.register_plugin(_plugin(source), "values", "test")
    pipeline = RewardPipeline.from_spec("value(normalize=True, clip=0.9)", pm)
    first = pipeline(**CONTEXT)
    # two values [11, 17]: after normalization they are -1 and +1, clipped to 0.9
    np.testing.assert_allclose(first.terms["value"], [-0.9, 0.9], atol=1e-3)
    state = pipeline.state_dict()
    restored = RewardPipeline.from_spec("value(normalize=True)", pm)
    restored.load_state_dict(state)
    assert restored.terms[0].stats.mean == pytest.approx(14.0, rel=1e-3)


def test_one_batch_normalizes_every_call_with_the_entry_statistics_and_updates_once(pm):
    source = RewardSource("value", lambda completions: [float(len(c)) for c in completions])
    pm.register_plugin(_plugin(source), "values", "test")
    pipeline = RewardPipeline.from_spec("value(normalize=True)", pm)
    pipeline(**CONTEXT)  # statistics of [11, 17]
    entry = copy.deepcopy(pipeline.terms[0].stats)
    batches = [dict(CONTEXT, completions=texts) for texts in (["abc", "abcdef"], ["abc"], ["abcdefghij"])]
    with pipeline.one_batch():
        with pipeline.one_batch():  # a nested entry joins the outer batch
            scored = [pipeline(**batch).terms["value"] for batch in batches[:2]]
        scored.append(pipeline(**batches[2]).terms["value"])
        assert pipeline.terms[0].stats.count == entry.count  # nothing moves before the exit
    raw = np.array([3.0, 6.0, 3.0, 10.0])
    np.testing.assert_allclose(np.concatenate(scored), (raw - entry.mean) / np.sqrt(entry.var + 1e-8))
    entry.update(raw)  # one update with the whole batch
    assert pipeline.state_dict()["value"] == {"mean": entry.mean.tolist(), "var": entry.var.tolist(),
                                              "count": entry.count}


def test_a_failed_batch_leaves_the_statistics_alone(pm):
    source = RewardSource("value", lambda completions: [float(len(c)) for c in completions])
    pm.register_plugin(_plugin(source), "values", "test")
    pipeline = RewardPipeline.from_spec("value(normalize=True)", pm)
    before = pipeline.state_dict()
    with pytest.raises(KeyboardInterrupt), pipeline.one_batch():
        pipeline(**CONTEXT)
        raise KeyboardInterrupt
    assert pipeline.state_dict() == before
    pipeline(**CONTEXT)  # outside the context again: each call updates, as before
    assert pipeline.terms[0].stats.mean == pytest.approx(14.0, rel=1e-3)


def test_fresh_statistics_take_the_first_call_of_a_batch_in_before_normalizing(pm):
    """A term of 1000 + 10*len on fresh statistics (mean 0, variance 1) came out of the first batch nearly raw; now the
    batch's first call sets the statistics every call of the batch normalizes with, and the exit keeps one update
    with the whole batch, as before."""
    source = RewardSource("big", lambda completions: [1000.0 + 10 * len(c) for c in completions])
    pm.register_plugin(_plugin(source), "big", "test")
    pipeline = RewardPipeline.from_spec("big(normalize=True)", pm)
    batches = [dict(CONTEXT, completions=texts) for texts in (["abc", "abcdef"], ["abcdefghij", "abcd"])]
    with pipeline.one_batch():
        scored = np.concatenate([pipeline(**batch).terms["big"] for batch in batches])
    first = RunningMeanStd()
    first.update(np.array([1030.0, 1060.0]))
    raw = np.array([1030.0, 1060.0, 1100.0, 1040.0])
    np.testing.assert_allclose(scored, (raw - first.mean) / np.sqrt(first.var + 1e-8))
    assert np.abs(scored).max() < 5  # not ~1000
    whole = RunningMeanStd()
    whole.update(raw)
    assert pipeline.state_dict()["big"] == {"mean": whole.mean.tolist(), "var": whole.var.tolist(),
                                            "count": whole.count}


def test_fresh_statistics_of_a_failed_batch_stay_fresh(pm):
    pm.register_plugin(_plugin(RewardSource("big", lambda completions: [1000.0] * len(completions))), "big", "test")
    pipeline = RewardPipeline.from_spec("big(normalize=True)", pm)
    before = pipeline.state_dict()
    with pytest.raises(KeyboardInterrupt), pipeline.one_batch():
        pipeline(**CONTEXT)
        raise KeyboardInterrupt
    assert pipeline.state_dict() == before


def test_fresh_statistics_under_several_processes_end_as_the_whole_batch_s_in_each(pm):
    """Each process's first call sets its own statistics for its rows; the exit starts again from the fresh ones and
    takes in every process's values (the gather), so the statistics kept are the same in every process."""
    source = RewardSource("big", lambda completions: [1000.0 + 10 * len(c) for c in completions])
    pm.register_plugin(_plugin(source), "big", "test")
    other_process = np.array([1200.0, 1300.0])
    pipeline = RewardPipeline.from_spec("big(normalize=True)", pm)
    with pipeline.one_batch(gather=lambda values: np.concatenate([values, other_process])):
        pipeline(**dict(CONTEXT, completions=["abc", "abcdef"]))
    whole = RunningMeanStd()
    whole.update(np.array([1030.0, 1060.0, 1200.0, 1300.0]))
    np.testing.assert_allclose([pipeline.terms[0].stats.mean, pipeline.terms[0].stats.var],
                               [whole.mean, whole.var])
    assert pipeline.terms[0].stats.count == whole.count


def test_a_rollout_normalizes_rows_that_end_at_different_steps_with_one_set_of_statistics(pm, byte_tokenizer):
    """Rows with the same raw value get the same normalized value though their episodes end at
    different steps, and the statistics afterwards are those of one update with every row."""
    pm.register_plugin(_plugin(RewardSource("prompt_length", lambda prompts: [float(len(p)) for p in prompts])),
                       "prompt-length", "test")
    env = TextGenVectorEnv(
        8, autoreset_mode="Disabled", tokenizer=byte_tokenizer, model=None, prompts=["ab", "abcdefgh"],
        max_new_tokens=6,
        eos_token_ids=list(range(3, 200)),  # about half the vocabulary ends an episode: rows end at steps 1-6
        reward="prompt_length(normalize=True)", plugin_manager=pm,
    )
    stats = env.task.rewards.terms[0].stats
    env.task.rewards.load_state_dict({"prompt_length": {"mean": 4.0, "var": 9.0, "count": 10.0}})
    entry = copy.deepcopy(stats)
    prompts = ["ab", "abcdefgh"] * 4  # raw values 2 and 8
    episodes = generate_episodes(build_tiny_model(), env, seed=0, prompts=prompts)

    lengths = episodes.completion_mask.sum(1).numpy()
    assert len(set(lengths[0::2])) > 1 and len(set(lengths[1::2])) > 1  # each raw value ends at several steps
    raw = np.array([2.0, 8.0] * 4)
    np.testing.assert_allclose(episodes.reward_terms["prompt_length"], (raw - 4.0) / 3.0, rtol=1e-6)
    entry.update(raw)
    np.testing.assert_allclose([stats.mean, stats.var, stats.count], [entry.mean, entry.var, entry.count])


def test_per_token_rewards_are_summed_and_kept(pm):
    def shaping(completion_ids):
        return [[0.1 * (t + 1) for t in range(len(ids))] for ids in completion_ids]

    pm.register_plugin(_plugin(RewardSource("shaping", shaping)), "shaping", "test")
    batch = RewardPipeline.from_spec("sentiment + 2*shaping", pm)(**CONTEXT)
    np.testing.assert_allclose(batch.token_rewards[0], [0.2, 0.4, 0.6])
    np.testing.assert_allclose(batch.token_rewards[1], [0.2, 0.4])
    np.testing.assert_allclose(batch.terms["shaping"], [1.2, 0.6])
    np.testing.assert_allclose(batch.total, batch.terms["sentiment"] + [1.2, 0.6])


def _plugin(source):
    class Plugin:
        @textenv.hookimpl
        def textenv_reward_sources(self):
            return [source]

    return Plugin()


@pytest.mark.parametrize("fn, message", [
    (lambda completions: [0.0, math.nan], r"returned nan for completion #1 'awful awful awful'"),
    (lambda completions: [math.inf, 0.0], r"returned inf for completion #0 'a great day'"),
    (lambda completions: [1.0], r"returned 1 values for 2 completions"),
    (lambda completions: None, r"must return a sequence of 2 floats"),
    (lambda completions: ["x", "y"], r"returned 'x' for completion #0"),
    (lambda completion_ids: [[0.0] * len(i) for i in completion_ids][:1] + [[0.0]],
     r"returned 1 per-token rewards for completion #1 .* which has 2 tokens"),
    (lambda completion_ids: [[0.0, math.nan, 0.0], [0.0, 0.0]], r"returned nan at token 1 of completion #0"),
])
def test_a_bad_result_names_the_source_and_the_item(pm, fn, message):
    pm.register_plugin(_plugin(RewardSource("broken", fn)), "broken-plugin", "test")
    pipeline = RewardPipeline.from_spec("sentiment + broken", pm)
    with pytest.raises(RewardError, match=rf"reward source 'broken'.*{message}"):
        pipeline(**CONTEXT)


def test_a_source_that_raises_is_named_with_the_failing_completion(pm):
    def fragile(completions):
        return [1.0 / (len(c) - len("a great day")) if c != "a great day" else 1 / 0 for c in completions]

    pm.register_plugin(_plugin(RewardSource("fragile", fragile)), "fragile-plugin", "script x.py")
    pipeline = RewardPipeline.from_spec("fragile", pm)
    with pytest.raises(RewardError, match=r"'fragile' \(script x.py\) raised ZeroDivisionError.*#0 'a great day'"):
        pipeline(**CONTEXT)


def test_unknown_source_lists_the_known_ones_and_a_close_match(pm):
    with pytest.raises(RewardError, match=r"unknown reward source 'sentimnet' \(did you mean 'sentiment'\?\)"
                                          r".*human, keyword, length, repetition, reward_model, "
                                          r"reward_model_disagreement, sentiment"):
        RewardPipeline.from_spec("sentimnet", pm)


def test_unknown_option_lists_the_options(pm):
    with pytest.raises(RewardError, match=r"'length' has no option 'tagret'; its options are: target, unit"):
        RewardPipeline.from_spec("length(tagret=3)", pm)


def test_the_same_source_twice_gets_two_keys(pm):
    pipeline = RewardPipeline.from_spec("sentiment + sentiment(target=negative)", pm)
    batch = pipeline(**CONTEXT)
    assert pipeline.names == ["sentiment", "sentiment'"]
    np.testing.assert_allclose(batch.total, 0.0, atol=1e-12)


def test_an_empty_batch_scores_to_nothing(pm):
    batch = RewardPipeline.from_spec("sentiment + length", pm)([], [], [], [])
    assert batch.total.shape == (0,) and batch.terms["length"].shape == (0,)


@pytest.mark.parametrize("spec, message", [
    ("1e400*length", r"reward term 'length': the weight 1e400 is not a finite number"),
    ("sentiment - 1e400*length(target=3)", r"reward term 'length': the weight 1e400 is not a finite number"),
    ({"length": float("1e400")}, r"reward term 'length': weight= must be a finite number, got inf"),
    ("length(weight=1e400)", r"reward term 'length': weight= must be a finite number, got inf"),
])
def test_an_infinite_weight_is_refused_when_the_spec_is_read(spec, message):
    with pytest.raises(RewardError, match=message):
        parse_reward_spec(spec)


@pytest.mark.parametrize("spec, message", [
    ("length(target=-1)", r"reward term 'length': target= must be a number > 0, got -1"),
    ("length(target=0)", r"reward term 'length': target= must be a number > 0, got 0"),
    ("length(target=abc)", r"reward term 'length': target= must be a number > 0, got 'abc'"),
    ("length(unit=chars)", r"reward term 'length': unit= must be 'tokens' or 'words', got 'chars'"),
    ("repetition(n=0)", r"reward term 'repetition': n= must be a whole number >= 1, got 0"),
    ("sentiment_dense(target=happy)", r"reward term 'sentiment_dense': target= must be 'positive' or 'negative', "
                                      r"got 'happy'"),
])
def test_a_bad_option_of_a_builtin_source_is_refused_when_the_pipeline_is_built(pm, spec, message):
    with pytest.raises(RewardError, match=message):
        RewardPipeline.from_spec(spec, pm)


# ------------------------------------------------------------------ slow and stuck reward calls


@contextlib.contextmanager
def graceful_handler():
    """A SIGINT handler as PPO's learn() installs: the first Ctrl-C only asks to stop later, the second raises."""
    pressed = []

    def handler(signum, frame):
        if pressed:
            raise KeyboardInterrupt
        pressed.append(time.monotonic())

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield pressed, handler
    finally:
        signal.signal(signal.SIGINT, previous)


def ctrl_c_in(seconds: float) -> threading.Timer:
    """A Ctrl-C at the main thread after ``seconds`` (a process-wide kill may be taken by another thread)."""
    timer = threading.Timer(seconds, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT))
    timer.start()
    return timer


def test_a_slow_reward_call_warns_once_and_says_how_to_set_a_timeout(pm, monkeypatch):
    monkeypatch.setattr(rewards, "SLOW_CALL_SECONDS", 0.05)

    def slow(completions):
        started = time.monotonic()
        # past SLOW_CALL_SECONDS, and until the warning's timer thread has had its turn, however busy the machine
        wait_until(lambda: caught and time.monotonic() - started >= 0.4, what="the slow call's warning")
        return [0.0] * len(completions)

    pm.register_plugin(_plugin(RewardSource("slow", slow)), "slow", "test")
    pipeline = RewardPipeline.from_spec("slow + length", pm)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipeline(**CONTEXT)
        pipeline(**CONTEXT)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages
    assert messages[0].startswith("reward source 'slow' (test) has been scoring 2 completion(s) for 0.05 s")
    assert "slow(timeout=SECONDS)" in messages[0] and rewards.TIMEOUT_ENV in messages[0]


def test_a_first_ctrl_c_under_a_graceful_handler_does_not_wait_for_a_stuck_reward_call(pm, monkeypatch):
    """PPO's handler only notes a first Ctrl-C, which a call that never returns would never see: the call is
    interrupted when it has not returned INTERRUPT_GRACE_SECONDS later, and the handler has noted the press."""
    monkeypatch.setattr(rewards, "INTERRUPT_GRACE_SECONDS", 0.3)
    returned = threading.Event()

    def stuck(completions):
        threading.Event().wait(20)
        returned.set()
        return [0.0] * len(completions)

    pm.register_plugin(_plugin(RewardSource("stuck", stuck)), "stuck", "test")
    pipeline = RewardPipeline.from_spec("stuck", pm)
    with graceful_handler() as (pressed, handler):
        timer = ctrl_c_in(0.2)
        try:
            with pytest.raises(RewardInterrupted, match=r"Ctrl-C while reward source 'stuck' \(test\)"):
                pipeline(**CONTEXT)
        finally:
            timer.cancel()
        assert not returned.is_set()  # interrupted while the call was stuck, not waited for
        assert len(pressed) == 1  # the loop was told too: it stops, as after any first Ctrl-C
        assert signal.getsignal(signal.SIGINT) is handler  # restored


def test_a_first_ctrl_c_during_a_reward_call_that_returns_is_left_to_the_graceful_handler(pm, monkeypatch):
    monkeypatch.setattr(rewards, "INTERRUPT_GRACE_SECONDS", 5.0)

    def presses_ctrl_c(completions):
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        time.sleep(0.1)
        return [1.0] * len(completions)

    pm.register_plugin(_plugin(RewardSource("presses", presses_ctrl_c)), "presses", "test")
    pipeline = RewardPipeline.from_spec("presses", pm)
    with graceful_handler() as (pressed, handler):
        assert pipeline(**CONTEXT).total.tolist() == [1.0, 1.0]
        time.sleep(0.2)
        assert len(pressed) == 1
        assert signal.getsignal(signal.SIGINT) is handler
