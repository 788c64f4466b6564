"""TRL's habits on the reward and prompt side: reward functions given as callables, prompts as a
``datasets.Dataset`` or as conversations rendered with the chat template."""

from __future__ import annotations

import copy
import functools
import json
import math

import datasets
import gymnasium as gym
import numpy as np
import pytest

import textenv
from textenv.envs import TextGenVectorEnv
from textenv.prompts import PromptError, load_prompts
from textenv.rewards import RewardError, RewardPipeline

TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Tell me"}],
]
RENDERED = ["user: Hi\nassistant:", "system: Be kind.\nuser: Tell me\nassistant:"]


@pytest.fixture
def chat_tokenizer(byte_tokenizer):
    """A copy of the byte tokenizer with a small chat template (ByT5 has none)."""
    tokenizer = copy.deepcopy(byte_tokenizer)
    tokenizer.chat_template = TEMPLATE
    return tokenizer


def _finish(env, text: str, byte_id) -> dict:
    """Step the single env through ``text`` and EOS; the last step's info."""
    env.reset(seed=0)
    for char in text:
        env.step(byte_id(char))
    *_, info = env.step(env.unwrapped.task.eos_ids[0])
    return info


# ------------------------------------------------------------------ reward functions


def test_reward_functions_with_trls_signature_or_a_plain_one_are_terms_named_by_their_names(tiny_options, byte_id):
    seen = {}

    def exclamations(prompts, completions, **kwargs):
        seen.update(prompts=prompts, kwargs=sorted(kwargs))
        return [float(c.count("!")) for c in completions]

    def shortness(completions):
        return [-float(len(c)) for c in completions]

    options = {**tiny_options, "prompts": ["hello"]}
    env = gym.make("textenv/TextGen-v0", **{**options, "reward": [exclamations, "sentiment", shortness]})
    info = _finish(env, "a!!", byte_id)
    assert list(info["reward_terms"]) == ["exclamations", "sentiment", "shortness"]
    assert info["reward_terms"]["exclamations"] == 2.0 and info["reward_terms"]["shortness"] == -3.0
    assert seen == {"prompts": ["hello"], "kwargs": ["completion_ids", "terminated"]}  # every context argument

    alone = gym.make("textenv/TextGen-v0", **{**options, "reward": exclamations})
    assert _finish(alone, "!", byte_id)["reward_terms"] == {"exclamations": 1.0}


def test_a_reward_function_takes_weights_and_normalization_from_a_dict(pm):
    def chars(completions):
        return [float(len(c)) for c in completions]

    pipeline = RewardPipeline.from_spec([{"source": chars, "weight": 0.5, "normalize": True}, chars], pm)
    assert pipeline.names == ["chars", "chars'"]
    batch = pipeline(["p", "p"], ["ab", "abcd"], [[1, 2], [1, 2, 3, 4]], [True, True])
    np.testing.assert_allclose(batch.terms["chars'"], [2.0, 4.0])
    np.testing.assert_allclose(batch.terms["chars"], [-0.5, 0.5], atol=1e-3)  # 0.5 * normalized [-1, 1]
    assert RewardPipeline.from_spec({chars: 2.0}, pm).terms[0].spec.weight == 2.0


@pytest.mark.parametrize("fn", [lambda completions: [0.0] * len(completions), functools.partial(len)])
def test_a_reward_function_without_a_name_is_refused_in_one_line(pm, fn):
    with pytest.raises(RewardError, match=r"^reward function .* has no name to key its term by: define it with def"):
        RewardPipeline.from_spec(["sentiment", fn], pm)


def test_a_failing_reward_function_is_named_with_where_it_was_defined(pm):
    def fragile(completions):
        return [1.0 / 0 for _ in completions]

    pipeline = RewardPipeline.from_spec(fragile, pm)
    with pytest.raises(RewardError, match=r"'fragile' \(function .*test_trl_habits.py:\d+\) raised ZeroDivisionError"):
        pipeline(["p"], ["x"], [[1]], [True])


def test_a_decorated_reward_function_keeps_its_registered_name(fresh_default_pm):
    @textenv.reward(name="bangs")
    def count_bangs(completions):
        return [float(c.count("!")) for c in completions]

    pipeline = RewardPipeline.from_spec([count_bangs, "bangs"])
    assert pipeline.names == ["bangs", "bangs'"]
    assert pipeline.terms[0].source.origin.startswith("script ")


# --------------------------------------------------------------------------- prompts


def test_a_dataset_gives_its_prompt_column(tiny_options):
    dataset = datasets.Dataset.from_dict({"prompt": ["hello", "the movie was"], "label": [1, 0]})
    env = TextGenVectorEnv(2, **{**tiny_options, "prompts": dataset})
    assert env.task.prompts == ["hello", "the movie was"]


@pytest.mark.parametrize("source, message", [
    (datasets.Dataset.from_dict({"text": ["a"], "label": [1]}),
     r"^prompts: the dataset has no 'prompt' column; its columns are: text, label$"),
    (datasets.DatasetDict({"train": datasets.Dataset.from_dict({"prompt": ["a"]})}),
     r"^prompts: a DatasetDict; pick a split, e.g. dataset\['train'\] \(splits: train\)$"),
])
def test_a_dataset_without_prompts_says_what_it_has(source, message):
    with pytest.raises(PromptError, match=message):
        load_prompts(source)


@pytest.mark.parametrize("as_dataset", [False, True])
def test_conversations_are_rendered_with_the_chat_template(tiny_options, chat_tokenizer, as_dataset):
    prompts = datasets.Dataset.from_dict({"prompt": CONVERSATIONS}) if as_dataset else CONVERSATIONS
    env = TextGenVectorEnv(2, **{**tiny_options, "tokenizer": chat_tokenizer, "prompts": prompts})
    assert env.task.prompts == RENDERED
    _, info = env.reset(seed=0)
    assert set(info["prompt"]) <= set(RENDERED)
    for row, text in enumerate(env.task.prompts):  # the bank holds the rendered text's tokens, left-padded
        ids = chat_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert env.task.prompt_ids[row, -len(ids):].tolist() == ids


def test_rendered_conversations_are_not_wrapped_again_under_chat_template(tiny_options, chat_tokenizer):
    """chat_template=True wraps string prompts as a user turn; a conversation was rendered once already,
    also when an agent draws its text from the task and hands it back at reset."""
    env = TextGenVectorEnv(2, autoreset_mode="Disabled", **{**tiny_options, "tokenizer": chat_tokenizer,
                                                             "prompts": CONVERSATIONS, "chat_template": True})
    obs, _ = env.reset(options={"prompts": [RENDERED[1], "Yo"]})
    width = env.task.prompt_width
    texts = chat_tokenizer.batch_decode(obs["input_ids"][:, :width], skip_special_tokens=True)
    assert texts == [RENDERED[1], "user: Yo\nassistant:"]


def test_a_conversational_jsonl_file(tmp_path, chat_tokenizer, tiny_options):
    path = tmp_path / "chat.jsonl"
    path.write_text('{"prompt": [{"role": "user", "content": "Hi"}]}\n"plain"\n')
    env = TextGenVectorEnv(1, **{**tiny_options, "tokenizer": chat_tokenizer, "prompts": path})
    assert env.task.prompts == [RENDERED[0], "plain"]


@pytest.mark.parametrize("options, error, message", [
    ({"prompts": CONVERSATIONS}, PromptError,
     r"^prompts: 2 conversational prompt\(s\) need a chat template, and the tokenizer \(ByT5Tokenizer\) has none"),
    ({"chat_template": True}, ValueError, r"^chat_template=True needs a tokenizer with a chat template; ByT5Tokenizer"),
    ({"prompts": [[{"content": "no role"}]]}, PromptError,
     r"^prompt #0 message #0: expected \{'role': ..., 'content': ...\}, got \{'content': 'no role'\}$"),
])
def test_conversations_without_a_chat_template_or_a_role_fail_in_one_line(tiny_options, options, error, message):
    with pytest.raises(error, match=message):
        TextGenVectorEnv(1, **{**tiny_options, **options})


# ------------------------------------------------------------------ dataset columns and None, as TRL's GRPOTrainer


def accuracy(prompts, completions, solution, **kwargs):
    """TRL's habit: the answer comes from the dataset's ``solution`` column."""
    return [float(c.strip() == s) for c, s in zip(completions, solution)]


MATH_ROWS = [{"prompt": "2+2=", "solution": "4", "level": 1}, {"prompt": "3+3=", "solution": "6", "level": 2}]


def _answer_each_prompt(env, answer: str, byte_id) -> dict:
    """Reset both rows on the task's two prompts, write ``answer`` and EOS in each; the last step's info."""
    env.reset(seed=0, options={"prompts": env.task.prompts[:2]})
    for char in answer:
        env.step(np.full(2, byte_id(char)))
    *_, info = env.step(np.full(2, env.task.eos_ids[0]))
    return info


@pytest.mark.parametrize("form", ["dataset", "rows", "jsonl"])
def test_a_reward_function_reads_the_prompts_other_dataset_columns(tiny_options, byte_id, tmp_path, form):
    seen = {}

    def levels(completions, level):  # a named column, no **kwargs
        seen["level"] = list(level)
        return [float(x) for x in level]

    if form == "dataset":
        prompts = datasets.Dataset.from_list(MATH_ROWS)
    elif form == "rows":
        prompts = MATH_ROWS
    else:
        prompts = tmp_path / "math.jsonl"
        prompts.write_text("".join(json.dumps(row) + "\n" for row in MATH_ROWS))
    env = TextGenVectorEnv(2, autoreset_mode="Disabled", **{**tiny_options, "prompts": prompts,
                                                            "reward": [accuracy, levels, "length(target=3)"]})
    info = _answer_each_prompt(env, "4", byte_id)
    np.testing.assert_allclose(info["reward_terms"]["accuracy"], [1.0, 0.0])  # "4" answers 2+2, not 3+3
    np.testing.assert_allclose(info["reward_terms"]["levels"], [1.0, 2.0])
    assert seen["level"] == [1, 2]


def test_a_prompt_outside_the_dataset_gets_none_in_its_columns(tiny_options, byte_id):
    env = TextGenVectorEnv(1, autoreset_mode="Disabled", **{**tiny_options, "prompts": MATH_ROWS,
                                                            "reward": accuracy})
    seen = {}

    def solution_seen(completions, solution):
        seen["solution"] = list(solution)
        return [0.0] * len(completions)

    env.task.rewards = RewardPipeline.from_spec(solution_seen)
    env.reset(options={"prompts": ["5+5="]})
    env.step(np.array([env.task.eos_ids[0]]))
    assert seen["solution"] == [None]


def test_a_column_named_like_a_reward_argument_is_refused_in_one_line(tiny_options):
    rows = [{"prompt": "a", "completions": "x"}]
    with pytest.raises(PromptError, match=r"^prompts: the column 'completions' has the name of an argument every "
                                          r"reward source is given .*; rename it$"):
        TextGenVectorEnv(1, **{**tiny_options, "prompts": rows})


def test_none_from_a_reward_function_means_not_applicable(pm):
    """TRL turns None into NaN and leaves it out (nansum); here that term adds 0 to that completion, its raw
    value is NaN, and the normalization statistics never see it."""
    def only_long(completions):
        return [float(len(c)) if len(c) > 2 else None for c in completions]

    pipeline = RewardPipeline.from_spec([{"source": only_long, "normalize": True}, "length(target=2)"], pm)
    batch = pipeline(["p"] * 3, ["ab", "abcd", "abcdef"], [[1, 2], [1, 2, 3, 4], [1] * 6], [False] * 3)
    assert batch.terms["only_long"][0] == 0.0
    np.testing.assert_allclose(batch.terms["only_long"][1:], [-1.0, 1.0], atol=1e-3)  # normalized over 4 and 6 only
    assert math.isnan(batch.raw_terms["only_long"][0]) and batch.raw_terms["only_long"][1] == 4.0
    stats = pipeline.terms[0].stats
    assert stats.mean == pytest.approx(5.0, rel=1e-3) and stats.count == pytest.approx(2.0, abs=1e-3)
    np.testing.assert_allclose(batch.total, batch.terms["only_long"] + batch.terms["length"])

    nothing = RewardPipeline.from_spec(lambda_free_none, pm)(["p"], ["x"], [[1]], [True])
    assert nothing.total.tolist() == [0.0] and math.isnan(nothing.raw_terms["lambda_free_none"][0])


def lambda_free_none(completions):
    return [None for _ in completions]


def test_none_for_a_completion_s_per_token_rewards_adds_nothing_to_it(pm):
    def shaping(completion_ids):
        return [None if len(ids) == 1 else [0.5] * len(ids) for ids in completion_ids]

    batch = RewardPipeline.from_spec(shaping, pm)(["p", "p"], ["x", "yz"], [[1], [1, 2]], [True, True])
    np.testing.assert_allclose(batch.token_rewards[0], [0.0])
    np.testing.assert_allclose(batch.token_rewards[1], [0.5, 0.5])
    assert batch.total.tolist() == [0.0, 1.0]


def test_an_iterable_dataset_is_refused_in_one_line_that_says_how_to_take_part_of_it():
    streamed = datasets.Dataset.from_list(MATH_ROWS).to_iterable_dataset()
    with pytest.raises(PromptError, match=r"^prompts: an IterableDataset is read as a stream, never whole; take a "
                                          r"finite part as a list of rows: prompts=list\(dataset.take\(N\)\)$"):
        load_prompts(streamed)
    assert load_prompts(list(streamed.take(2))) == ["2+2=", "3+3="]  # its rows, as the message says
