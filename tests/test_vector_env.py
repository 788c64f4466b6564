"""The batched env: same episodes as single envs, Gymnasium 1.x autoreset modes, sampling a model."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from step_logits import sampled_logprobs, step_logits

from textenv.envs import TextGenEnv, TextGenVectorEnv
from textenv.generation import SamplingConfig, generate_episodes
from textenv.models import load_causal_lm


def scripted_action(input_ids: np.ndarray, step: int, vocab: int) -> int:
    """A deterministic policy of the observation that ends episodes at varied lengths."""
    action = int(input_ids.sum() * 31 + 7 * step) % 40 + 97  # mostly letters
    return 1 if action % 5 == 0 else action  # EOS (id 1) about one step in five


def test_vector_env_gives_the_same_episodes_as_single_envs(tiny_options):
    n, steps = 4, 30
    vec = TextGenVectorEnv(n, **tiny_options)
    singles = [TextGenEnv(**tiny_options) for _ in range(n)]
    obs, info = vec.reset(seed=123)
    single_obs = [env.reset(seed=123 + i)[0] for i, env in enumerate(singles)]
    assert [env.core.row_prompts[0] for env in singles] == list(info["prompt"])
    ended = [False] * n
    episodes = 0
    for t in range(steps):
        for i in range(n):
            for key in ("input_ids", "attention_mask"):
                np.testing.assert_array_equal(obs[key][i].numpy(), single_obs[i][key])
        actions = np.array([scripted_action(o["input_ids"], t, 384) for o in single_obs])
        obs, rewards, terminated, truncated, info = vec.step(torch.as_tensor(actions))
        for i, env in enumerate(singles):
            if ended[i]:  # next-step autoreset: the single env resets where the vector env did
                single_obs[i], _ = env.reset()
                r, te, tr, single_info = 0.0, False, False, {}
            else:
                single_obs[i], r, te, tr, single_info = env.step(actions[i])
            assert rewards[i].item() == pytest.approx(r)
            assert (terminated[i].item(), truncated[i].item()) == (te, tr)
            if te or tr:
                episodes += 1
                assert info["completion"][i] == single_info["completion"]
                assert info["reward_terms"]["length"][i] == pytest.approx(single_info["reward_terms"]["length"])
            ended[i] = te or tr
    assert episodes >= 2 * n


def test_next_step_autoreset_ignores_the_action_and_resets(tiny_options, byte_id):
    vec = TextGenVectorEnv(2, **tiny_options)
    vec.reset(seed=0)
    _, r, te, _, info = vec.step(torch.tensor([1, byte_id("x")]))  # row 0 ends on EOS
    assert te.tolist() == [True, False] and info["_completion"].tolist() == [True, False]
    obs, r, te, tr, info = vec.step(torch.tensor([byte_id("y"), byte_id("y")]))
    assert r[0] == 0 and not te[0] and not tr[0]
    width = vec.task.prompt_width
    assert obs["attention_mask"][0, width:].sum() == 0  # fresh episode, nothing generated
    assert obs["attention_mask"][1, width:].sum() == 2


def test_same_step_autoreset_returns_the_final_obs_in_info(tiny_options, byte_id):
    vec = TextGenVectorEnv(2, autoreset_mode="SameStep", **tiny_options)
    vec.reset(seed=0)
    vec.step(torch.tensor([byte_id("a"), byte_id("a")]))
    obs, r, te, _, info = vec.step(torch.tensor([1, byte_id("b")]))
    width = vec.task.prompt_width
    assert te.tolist() == [True, False] and info["_final_obs"].tolist() == [True, False]
    assert info["final_obs"][0]["attention_mask"][width:].sum() == 2  # "a" + EOS
    assert obs["attention_mask"][0, width:].sum() == 0  # already the next episode


def test_disabled_autoreset_freezes_rows_until_reset_mask(tiny_options, byte_id):
    vec = TextGenVectorEnv(2, autoreset_mode="Disabled", **tiny_options)
    vec.reset(seed=0)
    vec.step(torch.tensor([1, byte_id("a")]))
    frozen = vec.completion_tokens()[0][0].clone()
    obs, r, te, tr, _ = vec.step(torch.tensor([byte_id("q"), byte_id("b")]))
    assert torch.equal(vec.completion_tokens()[0][0], frozen) and r[0] == 0 and not te[0]
    obs, info = vec.reset(options={"reset_mask": np.array([True, False]), "prompts": ["hello"]})
    assert info["prompt"][0] == "hello" and not info["_prompt"][1]
    assert vec.completions()[1] == "ab"


def test_vector_env_runs_on_the_requested_device(tiny_options):
    vec = gym.make_vec("textenv/TextGen-v0", num_envs=2, vectorization_mode="vector_entry_point",
                       device="cpu", **tiny_options)
    obs, _ = vec.reset(seed=0)
    assert obs["input_ids"].device.type == "cpu" and obs["input_ids"].dtype == torch.int64
    assert vec.unwrapped.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP


def test_generate_episodes_matches_a_step_by_step_recomputation(tiny_options):
    """The KV-cache loop picks the same greedy tokens as a full forward of each prefix."""
    model = load_causal_lm("tiny-random")
    vec = TextGenVectorEnv(3, autoreset_mode="Disabled", **{**tiny_options, "max_new_tokens": 5})
    episodes = generate_episodes(model, vec, sampling=SamplingConfig(temperature=0.0), seed=3)
    width = vec.task.prompt_width
    for i, prompt in enumerate(episodes.prompts):
        prompt_ids = vec.task.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt_ids])
        n = int(episodes.completion_mask[i].sum())
        for t in range(n):
            expected = model(input_ids=ids).logits[0, -1].argmax()
            assert episodes.completion_ids[i, t] == expected
            ids = torch.cat([ids, expected.view(1, 1)], dim=1)
    assert np.isfinite(episodes.rewards).all()
    assert set(episodes.reward_terms) == {"sentiment", "length"}
    assert width == vec.task.prompt_width


class _CountingLM(torch.nn.Module):
    """A causal LM that counts its forwards (the steps of the token loop)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config, self.forwards = model, model.config, 0

    def forward(self, **kwargs):
        self.forwards += 1
        return self.model(**kwargs)


@pytest.mark.parametrize("eos", [list(range(0, 384, 3)), list(range(384))], ids=["rows-end-apart", "all-end-at-once"])
def test_the_token_loop_stops_at_the_step_the_last_row_ends(tiny_options, eos):
    """The loop counts the rows still running from the env's info (no device read per token)."""
    model = _CountingLM(load_causal_lm("tiny-random"))
    vec = TextGenVectorEnv(6, autoreset_mode="Disabled", **{**tiny_options, "max_new_tokens": 16, "eos_token_ids": eos})
    episodes = generate_episodes(model, vec, seed=5)
    lengths = episodes.completion_mask.sum(1)  # (N,)
    assert model.forwards == int(lengths.max())
    if len(eos) == 384:
        assert model.forwards == 1
    else:  # some rows ended before others, and the last one before the length limit
        assert len(set(lengths.tolist())) > 1 and model.forwards < 16
    assert all(isinstance(text, str) for text in episodes.completions) and np.isfinite(episodes.rewards).all()


def test_a_preallocated_static_cache_gives_the_same_episodes_as_a_growing_one(tiny_options):
    """Left-padded prompts of different lengths, rows ending at different steps, sampled."""
    model = load_causal_lm("tiny-random")
    vec = TextGenVectorEnv(6, autoreset_mode="Disabled", **{**tiny_options, "max_new_tokens": 10,
                                                             "eos_token_ids": list(range(0, 384, 8))})
    runs, logprobs = [], []
    for static in (False, True):
        with step_logits(model) as seen:
            runs.append(generate_episodes(model, vec, seed=11, static_cache=static))
        logprobs.append(sampled_logprobs(seen, runs[-1].completion_ids, runs[-1].completion_mask, 384))
    growing, static = runs
    assert len(set(growing.completion_mask.sum(1).tolist())) > 1  # the rows ended at different steps
    assert (growing.prompt_mask == 0).any()  # some prompts were left-padded
    assert torch.equal(growing.completion_ids, static.completion_ids)
    torch.testing.assert_close(logprobs[1], logprobs[0], rtol=0, atol=1e-5)
    assert growing.completions == static.completions


def test_sampling_is_reproducible_under_a_seed(tiny_options):
    model = load_causal_lm("tiny-random")
    vec = TextGenVectorEnv(4, autoreset_mode="Disabled", **tiny_options)
    sampling = SamplingConfig(temperature=1.0, top_k=50, top_p=0.9)
    a = generate_episodes(model, vec, sampling=sampling, seed=7)
    b = generate_episodes(model, vec, sampling=sampling, seed=7)
    assert torch.equal(a.completion_ids, b.completion_ids) and a.completions == b.completions


def test_sampling_follows_the_distribution_and_never_draws_a_filtered_token():
    from textenv.generation import sample_tokens

    probs = torch.tensor([0.1, 0.0, 0.6, 0.3])
    logits = probs.log().expand(20_000, 4)  # (N, V): token 1 filtered out (-inf)
    draws = sample_tokens(logits, SamplingConfig(), torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=4).float() / len(draws)
    torch.testing.assert_close(freq, probs, atol=0.01, rtol=0)
    assert (draws != 1).all()


def test_the_temperature_divides_the_logits_once_before_top_k_filters_the_draw():
    """At temperature 0.5 the draws follow softmax(2 * logits); top-k then keeps the two likeliest of it."""
    from textenv.generation import next_tokens

    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    logits = probs.log().expand(40_000, 4)  # (N, V)
    tempered = probs**2 / (probs**2).sum()  # softmax(log p / 0.5)
    for sampling, law in [
        (SamplingConfig(temperature=0.5), tempered),
        (SamplingConfig(temperature=0.5, top_k=2), torch.tensor([0, 0, 0.09, 0.16]) / 0.25),
    ]:
        draws = next_tokens(logits, sampling, sampling.warpers(), torch.Generator().manual_seed(0))
        freq = torch.bincount(draws, minlength=4).float() / len(draws)
        torch.testing.assert_close(freq, law, atol=0.01, rtol=0)


def test_dense_sentiment_sums_to_the_sentiment_of_an_episode_that_ends_at_eos(byte_tokenizer):
    """EOS decodes to no text: its piece adds nothing, where "good</s>" used to cancel the last word."""
    vec = TextGenVectorEnv(1, tokenizer=byte_tokenizer, model=None, prompts=["the movie was"], max_new_tokens=8,
                           reward="sentiment + sentiment_dense")
    vec.reset(seed=0)
    for char in " good":
        vec.step(torch.tensor([byte_tokenizer.convert_tokens_to_ids(char)]))
    _, _, terminated, _, info = vec.step(torch.tensor([byte_tokenizer.eos_token_id]))
    assert bool(terminated[0]) and info["completion"][0] == " good"
    terms = info["reward_terms"]
    assert terms["sentiment"][0] > 0.4 and terms["sentiment_dense"][0] == pytest.approx(terms["sentiment"][0])
    assert info["token_rewards"][0][-1] == 0.0  # the EOS token's own reward


def test_an_action_outside_the_vocabulary_is_refused_and_changes_nothing(tiny_options):
    vec, fresh = TextGenVectorEnv(2, **tiny_options), TextGenVectorEnv(2, **tiny_options)
    vec.reset(seed=0)
    fresh.reset(seed=0)
    with pytest.raises(ValueError, match="action 999 of env 1 is outside the vocabulary"):
        vec.step(torch.tensor([100, 999]))
    obs, *_ = vec.step(torch.tensor([100, 101]))
    expected, *_ = fresh.step(torch.tensor([100, 101]))
    for key in ("input_ids", "attention_mask"):
        torch.testing.assert_close(obs[key], expected[key])


def test_same_step_human_rendering_shows_each_finished_episode_with_its_own_prompt(tiny_options, capsys):
    options = {**tiny_options, "prompts": ["hello", "the movie was", "abc", "zzz top"]}
    vec = TextGenVectorEnv(3, autoreset_mode="SameStep", render_mode="human", **options)
    _, reset_info = vec.reset(seed=5)
    vec.step(torch.tensor([1, 1, 1]))  # EOS everywhere: every episode ends and restarts at once
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\u27e6")[0] for line in lines] == [f"[env {i}] {p}" for i, p in enumerate(reset_info["prompt"])]


def test_an_unknown_reset_option_is_refused_before_any_row_changes(tiny_options):
    """Neither the rows nor their random streams move: later resets match a twin that never saw it."""
    vec, twin = TextGenVectorEnv(2, **tiny_options), TextGenVectorEnv(2, **tiny_options)
    vec.reset(seed=0)
    twin.reset(seed=0)
    with pytest.raises(ValueError, match="unknown reset options: promtps"):
        vec.reset(seed=99, options={"promtps": ["x"]})
    for _ in range(5):
        assert vec.reset()[1]["prompt"].tolist() == twin.reset()[1]["prompt"].tolist()


@pytest.mark.parametrize("mode", ["NextStep", "SameStep"])
def test_info_is_laid_out_as_gymnasium_sync_vector_env_lays_it_out(tiny_options, mode):
    """Against SyncVectorEnv over single envs: the same prompts, completions and masks, with the reset's
    info at an autoreset (NextStep) and the ended episodes' under final_info (SameStep)."""
    n = 3
    vec = TextGenVectorEnv(n, autoreset_mode=mode, **tiny_options)
    sync = gym.vector.SyncVectorEnv([lambda: TextGenEnv(**tiny_options)] * n,
                                    autoreset_mode=gym.vector.AutoresetMode(mode))
    obs, info = vec.reset(seed=11)
    sync_obs, sync_info = sync.reset(seed=11)
    checked = set()
    for t in range(30):
        for got, expected in [(info, sync_info), (info.get("final_info"), sync_info.get("final_info"))]:
            if expected is None:
                assert got is None
                continue
            for key in ("prompt", "completion"):
                assert (key in got) == (key in expected), (t, key)
                if key in expected:
                    np.testing.assert_array_equal(got[f"_{key}"], expected[f"_{key}"])
                    mask = expected[f"_{key}"]
                    assert got[key][mask].tolist() == expected[key][mask].tolist()
                    checked.add(key)
        np.testing.assert_array_equal(obs["input_ids"].numpy(), sync_obs["input_ids"])
        actions = np.array([scripted_action(o, t, 384) for o in sync_obs["input_ids"]])
        obs, _, _, _, info = vec.step(torch.as_tensor(actions))
        sync_obs, _, _, _, sync_info = sync.step(actions)
    assert checked == {"prompt", "completion"}


def test_human_rendering_shortens_a_megabyte_prompt_and_says_its_length(tiny_options, capsys):
    huge = "x" * 1_000_000 + " the end"
    vec = TextGenVectorEnv(1, render_mode="human", **{**tiny_options, "prompts": [huge]})
    vec.reset(seed=0)
    vec.step(torch.tensor([1]))  # EOS: the episode ends and is printed
    vec.render()
    out = capsys.readouterr().out
    assert len(out) < 2_000 and out.count("(1,000,008 characters)") == 2
