"""Reward models: Bradley-Terry loss, rankings, Elo, data errors, tiny real models, the plugin."""

from __future__ import annotations

import json
import math
import random
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch

from textenv.agents import PPO
from textenv.envs import TextGenVectorEnv
from textenv.plugins.reward_model import (
    PreferenceDataError,
    PreferencePair,
    RewardModelConfig,
    RewardModelError,
    TruncationWarning,
    bradley_terry_loss,
    elo_ratings,
    elo_to_rewards,
    evaluate_reward_model,
    load_preferences,
    load_reward_model,
    pairs_from_ratings,
    pairwise_accuracy,
    ranking_to_pairs,
    read_preferences,
    split_pairs,
    train_reward_model,
)

WORDS = ["movie", "film", "plot", "actor", "scene", "story", "music", "ending", "cast", "script"]
TINY = {"backbone": "tiny-random", "lr": 3e-3, "batch_size": 8, "epochs": 2, "device": "cpu"}


def separable_pairs(n: int, seed: int) -> list[PreferencePair]:
    """People prefer a completion that says "good" to one that says "bad"."""
    rng = random.Random(seed)
    return [
        PreferencePair(
            f"the {rng.choice(WORDS)} was",
            f" good {rng.choice(WORDS)}",
            f" bad {rng.choice(WORDS)}",
        )
        for _ in range(n)
    ]


def write_jsonl(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory):
    """A two-member ensemble of tiny Llama reward models trained on the separable preference."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures start before the autouse one-thread fixture
    try:
        path = tmp_path_factory.mktemp("rm")
        config = RewardModelConfig(ensemble_size=2, **TINY)
        result = train_reward_model(separable_pairs(120, seed=0), path, config, progress=False)
    finally:
        torch.set_num_threads(threads)
    return result


# ------------------------------------------------------------------------- the loss


def test_bradley_terry_loss_on_hand_values():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0])
    # -log sigmoid(2) = log(1 + e^-2) = 0.126928; -log sigmoid(0) = log 2 = 0.693147
    assert float(bradley_terry_loss(chosen, rejected)) == pytest.approx(
        (0.126928 + 0.693147) / 2, abs=1e-6
    )
    # a margin of 1 on the first pair: -log sigmoid(1) = 0.313262
    margin = torch.tensor([1.0, 0.0])
    assert float(bradley_terry_loss(chosen, rejected, margin)) == pytest.approx(
        (0.313262 + 0.693147) / 2, abs=1e-6
    )
    # centering adds 0.5 * mean((2 + 0)^2, (0 + 0)^2) = 1.0
    centered = bradley_terry_loss(chosen, rejected, center_rewards_coefficient=0.5)
    assert float(centered) == pytest.approx((0.126928 + 0.693147) / 2 + 1.0, abs=1e-6)


def test_pairwise_accuracy_counts_a_tie_as_half():
    assert pairwise_accuracy(
        torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 1.0, 2.0])
    ) == pytest.approx(0.5)


# ---------------------------------------------------------------- rankings and Elo


def test_a_ranking_expands_to_every_better_worse_pair():
    pairs = ranking_to_pairs("p", ["a", "b", "c"], [2, 0, 1])  # c > a > b
    assert [(p.chosen, p.rejected) for p in pairs] == [("c", "a"), ("c", "b"), ("a", "b")]
    assert all(p.prompt == "p" for p in pairs)
    with pytest.raises(ValueError, match="each of the 3 completion indices"):
        ranking_to_pairs("p", ["a", "b", "c"], [0, 0, 1])


def test_elo_updates_by_hand():
    # equal ratings: expected 0.5, the winner gains 32 * 0.5
    assert elo_ratings([("a", "b")]) == {"a": 1016.0, "b": 984.0}
    # then b (984) beats c (1000): expected 1 / (1 + 10^(16/400)) = 0.476990, gain 32 * 0.523010
    ratings = elo_ratings([("a", "b"), ("b", "c")])
    assert ratings["b"] == pytest.approx(984 + 16.73631, abs=1e-4)
    assert ratings["c"] == pytest.approx(1000 - 16.73631, abs=1e-4)
    assert elo_ratings([("a", "b", 0.5)]) == {"a": 1000.0, "b": 1000.0}  # a draw between equals


def test_elo_orders_a_consistent_tournament():
    games = [("a", "b"), ("b", "c"), ("a", "c")] * 20
    ratings = elo_ratings(games, passes=3)
    assert ratings["a"] > ratings["b"] > ratings["c"]
    assert sum(ratings.values()) == pytest.approx(3000.0)  # Elo moves points, never makes them
    assert ratings["a"] - ratings["c"] > 400  # a wins every game against c: odds well over 10:1


def test_elo_ratings_become_bradley_terry_rewards_and_pairs():
    rewards = elo_to_rewards({"x": 1400.0, "y": 1000.0})
    # 400 Elo points = odds of 10: sigmoid(r_x - r_y) = 10 / 11
    assert 1 / (1 + math.exp(-(rewards["x"] - rewards["y"]))) == pytest.approx(10 / 11)
    assert rewards["x"] + rewards["y"] == pytest.approx(0.0)
    pairs = pairs_from_ratings("p", {"lo": 900.0, "hi": 1100.0, "mid": 1000.0}, with_margin=True)
    assert [(p.chosen, p.rejected) for p in pairs] == [("hi", "mid"), ("hi", "lo"), ("mid", "lo")]
    assert pairs[1].margin == pytest.approx(200 * math.log(10) / 400)
    assert len(pairs_from_ratings("p", {"a": 1000.0, "b": 1005.0}, min_gap=10)) == 0


# ------------------------------------------------------------------------- loading


def test_jsonl_pairs_and_rankings_load(tmp_path):
    path = write_jsonl(
        tmp_path / "prefs.jsonl",
        [
            {"prompt": "p", "chosen": "yes", "rejected": "no", "margin": 0.5},
            "",
            {"chosen": "up", "rejected": "down"},
            {"prompt": "q", "completions": ["a", "b", "c"], "ranking": [1, 2, 0]},
        ],
    )
    pairs = load_preferences(path)
    assert pairs[0] == PreferencePair("p", "yes", "no", 0.5)
    assert pairs[1] == PreferencePair("", "up", "down")
    assert [(p.chosen, p.rejected) for p in pairs[2:]] == [("b", "c"), ("b", "a"), ("c", "a")]


def test_a_datasets_dataset_is_read_row_by_row():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list(
        [
            {"prompt": "p", "chosen": "good", "rejected": "bad"},
            {"prompt": "q", "chosen": "fine", "rejected": "awful"},
        ]
    )
    assert load_preferences(ds) == [
        PreferencePair("p", "good", "bad"),
        PreferencePair("q", "fine", "awful"),
    ]
    bad = datasets.Dataset.from_list([{"prompt": "p", "chosen": "good", "rejected": None}])
    with pytest.raises(PreferenceDataError, match="dataset row 0: missing field 'rejected'"):
        load_preferences(bad)
    with pytest.raises(PreferenceDataError, match=r"DatasetDict\? pass one split"):
        load_preferences(datasets.DatasetDict({"train": ds}))


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            ['{"prompt": "p", "chosen": "a", "rejected": "b"}', '{"prompt": "p", "chosen": "a",'],
            r"prefs.jsonl:2: not valid JSON",
        ),
        (['{"prompt": "p", "chosen": "a"}'], r"prefs.jsonl:1: missing field 'rejected'"),
        (['["a", "b"]'], r"prefs.jsonl:1: expected a JSON object, got list"),
        (['{"chosen": "a", "rejected": 3}'], r"prefs.jsonl:1: 'rejected' must be a str, got int"),
        (
            ['{"chosen": "a", "rejected": "b", "margin": "big"}'],
            r"prefs.jsonl:1: 'margin' must be a finite",
        ),
        (
            ['{"completions": ["a", "b"], "ranking": [0, 2]}'],
            r"prefs.jsonl:1: 'ranking' must list each",
        ),
        (
            ['{"completions": ["a", 5], "ranking": [0, 1]}'],
            r"prefs.jsonl:1: completion 1 must be a string",
        ),
        ([], r"prefs.jsonl: no usable preference pairs \(0 records\)"),
        (
            ['{"chosen": "same", "rejected": "same"}'],
            r"all 1 pairs have chosen identical to rejected",
        ),
    ],
)
def test_bad_preference_files_name_the_line(tmp_path, lines, message):
    path = write_jsonl(tmp_path / "prefs.jsonl", lines)
    with pytest.raises(PreferenceDataError, match=message):
        load_preferences(path)


def test_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(PreferenceDataError, match="no such file"):
        load_preferences(tmp_path / "nope.jsonl")


def test_identical_chosen_and_rejected_are_skipped_and_counted(tmp_path):
    path = write_jsonl(
        tmp_path / "prefs.jsonl",
        [
            {"chosen": "a", "rejected": "b"},
            {"chosen": "same", "rejected": "same"},
            {"completions": ["x", "x", "y"], "ranking": [0, 1, 2]},  # x = x is skipped, x > y twice
        ],
    )
    data = read_preferences(path)
    assert data.skipped_identical == 2 and len(data.pairs) == 3 and data.records == 3
    with pytest.warns(
        UserWarning, match=r"3 preference pairs .* \(2 skipped: chosen identical to rejected\)"
    ):
        load_preferences(path)


def test_the_held_out_split_keeps_whole_prompts_apart():
    pairs = separable_pairs(100, seed=3)
    train, held, how = split_pairs(pairs, 0.2, seed=0)
    assert how == "prompt" and 15 <= len(held) <= 40 and len(train) + len(held) == 100
    assert not {p.prompt for p in train} & {p.prompt for p in held}
    train, held, how = split_pairs([PreferencePair("", "a", "b")] * 4, 0.1)
    assert how == "pair" and len(held) == 1
    with pytest.raises(RewardModelError, match="cannot be split"):
        split_pairs([PreferencePair("", "a", "b")], 0.1)


# ------------------------------------------------------------------------ training


def test_a_tiny_ensemble_learns_a_separable_preference(tiny_rm, tmp_path):
    assert tiny_rm.eval_accuracy > 0.9
    assert all(losses[-1] < losses[0] for losses in tiny_rm.losses)
    held_out = separable_pairs(60, seed=99)
    metrics = evaluate_reward_model(tiny_rm.model, held_out)
    assert (
        metrics["accuracy"] > 0.9
        and metrics["n_pairs"] == 60
        and len(metrics["member_accuracy"]) == 2
    )
    # the saved directory: members (safetensors), metadata, loss curve; it scores the same reloaded
    path = tiny_rm.path
    assert (path / "member-1" / "model.safetensors").is_file() and (
        path / "loss_curve.png"
    ).stat().st_size
    meta = json.loads((path / "reward_model.json").read_text())
    assert (
        meta["ensemble_size"] == 2
        and meta["data"]["pairs"] == 120
        and meta["eval"]["accuracy"] > 0.9
    )
    assert meta["normalization"]["std"] > 0
    loaded = load_reward_model(path, device="cpu")
    prompts, completions = ["the plot was"] * 2, [" good music", " bad music"]
    mean, std = loaded.score_with_disagreement(prompts, completions)
    np.testing.assert_allclose(mean, tiny_rm.model.score(prompts, completions), atol=1e-5)
    assert mean[0] > mean[1] and std.shape == (2,) and (std > 0).all()


def test_an_encoder_backbone_from_a_directory_learns_too(tmp_path, byte_tokenizer):
    """Any AutoModelForSequenceClassification directory works: here a tiny BERT over bytes."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=384,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        pad_token_id=0,
        num_labels=1,
    )
    BertForSequenceClassification(config).save_pretrained(tmp_path / "bert")
    byte_tokenizer.save_pretrained(tmp_path / "bert")
    result = train_reward_model(
        separable_pairs(100, seed=1),
        tmp_path / "rm",
        RewardModelConfig(**{**TINY, "backbone": str(tmp_path / "bert"), "lr": 2e-3}),
        progress=False,
    )
    assert result.eval_accuracy > 0.9
    assert result.model.max_length == 128  # the backbone's limit caps the default 512


def test_a_sentence_encoder_is_mean_pooled_and_a_frozen_backbone_trains_its_head_only(tmp_path, byte_tokenizer):
    """A backbone that declares sentence-transformers mean pooling is read by the masked mean of its
    token states (not its [CLS] pooler); ``freeze_backbone`` moves the head alone."""
    from transformers import BertConfig, BertModel

    from textenv.plugins.reward_model.pooling import HEAD_FILENAME, MeanPooledScorer

    torch.manual_seed(0)
    config = BertConfig(vocab_size=384, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, pad_token_id=0)
    folder = tmp_path / "encoder"
    BertModel(config).save_pretrained(folder)
    byte_tokenizer.save_pretrained(folder)
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    before = BertModel.from_pretrained(folder).state_dict()

    config = RewardModelConfig(**{**TINY, "backbone": str(folder), "lr": None, "epochs": 8}, freeze_backbone=True)
    result = train_reward_model(separable_pairs(100, seed=1), tmp_path / "rm", config, progress=False)
    member = result.model.members[0]
    assert isinstance(member, MeanPooledScorer) and result.eval_accuracy > 0.9
    after = member.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the backbone never moved
    assert json.loads((tmp_path / "rm" / "reward_model.json").read_text())["pooling"] == "mean"
    assert (tmp_path / "rm" / "member-0" / HEAD_FILENAME).is_file()

    loaded = load_reward_model(tmp_path / "rm", device="cpu")
    prompts, completions = ["the plot was", "a"], [" good music", " bad music and a long tail of padding"]
    batched = loaded.score(prompts, completions)
    np.testing.assert_allclose(batched, result.model.score(prompts, completions), atol=1e-5)
    one_by_one = [loaded.score([p], [c])[0] for p, c in zip(prompts, completions)]
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)  # padding is outside the mean


def test_the_default_minilm_declares_mean_pooling():
    from textenv.plugins.reward_model import DEFAULT_BACKBONE
    from textenv.plugins.reward_model.model import resolve_backbone
    from textenv.plugins.reward_model.pooling import backbone_pooling

    assert backbone_pooling(resolve_backbone(DEFAULT_BACKBONE)) == "mean"
    assert backbone_pooling("sentence-transformers/all-MiniLM-L6-v2") == "head"  # a hub id: not read here


def test_long_texts_are_truncated_with_one_warning(tmp_path):
    pairs = [PreferencePair("x" * 40, f" good {w}", f" bad {w}") for w in WORDS]
    with pytest.warns(
        TruncationWarning, match=r"(\d+) of \1 reward-model inputs are longer than 16"
    ) as caught:
        result = train_reward_model(
            pairs,
            tmp_path / "rm",
            RewardModelConfig(**{**TINY, "max_length": 16, "epochs": 1}),
            progress=False,
        )
    assert sum(issubclass(w.category, TruncationWarning) for w in caught) == 1
    features = result.model.tokenizer("x" * 40, " good plot")
    assert len(features["input_ids"]) > 16 and result.model.max_length == 16


def test_the_output_directory_is_never_written_over_by_accident(tmp_path, tiny_rm):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RewardModelError, match="not empty and holds no reward model"):
        train_reward_model(
            separable_pairs(10, seed=0), tmp_path, RewardModelConfig(**TINY), progress=False
        )
    assert (tmp_path / "notes.txt").read_text() == "mine"
    with pytest.raises(RewardModelError, match="already holds a reward model"):
        train_reward_model(
            separable_pairs(10, seed=0), tiny_rm.path, RewardModelConfig(**TINY), progress=False
        )
    # overwrite replaces the members: a one-member model leaves no member-1 behind
    again = tmp_path / "again"
    (again / "member-1").mkdir(parents=True)
    (again / "reward_model.json").write_text("{}")
    config = RewardModelConfig(**{**TINY, "epochs": 1})
    train_reward_model(separable_pairs(10, seed=0), again, config, overwrite=True, progress=False)
    names = sorted(p.name for p in again.iterdir())
    assert names == ["loss_curve.png", "member-0", "reward_model.json"]


def test_bad_options_and_backbones_are_clear_errors(tmp_path):
    with pytest.raises(RewardModelError, match="ensemble_size must be at least 1"):
        RewardModelConfig(ensemble_size=0)
    with pytest.raises(RewardModelError, match="pooling must be one of auto, mean, head"):
        RewardModelConfig(pooling="max")
    with pytest.raises(RewardModelError, match="cannot load backbone"):
        train_reward_model(
            separable_pairs(10, seed=0),
            tmp_path / "rm",
            RewardModelConfig(backbone=str(tmp_path / "missing")),
            progress=False,
        )
    with pytest.raises(RewardModelError, match="not a saved reward model"):
        load_reward_model(tmp_path)


# -------------------------------------------------------------------------- plugin


def test_the_env_scores_completions_with_the_reward_model(tiny_rm, byte_tokenizer, byte_id, pm):
    spec = f"reward_model:{tiny_rm.path}"
    env = TextGenVectorEnv(
        4,
        tokenizer=byte_tokenizer,
        model=None,
        prompts=["the plot was"],
        max_new_tokens=5,
        reward=spec,
        autoreset_mode="Disabled",
    )
    env.reset(seed=0)
    words = [" good", " bad ", " good", " bad "]
    for t in range(5):
        _, rewards, _terminated, truncated, info = env.step(
            torch.tensor([byte_id(w[t]) for w in words])
        )
    assert truncated.all() and list(info["completion"]) == words
    expected = tiny_rm.model.score(["the plot was"] * 4, words)
    np.testing.assert_allclose(info["reward_terms"][spec], expected, rtol=1e-4, atol=1e-5)
    assert rewards[0] > rewards[1] and rewards[2] > rewards[3]


def test_reward_model_spec_standardizes_and_reports_disagreement(tiny_rm, pm):
    from textenv.rewards import RewardPipeline

    path = str(tiny_rm.path)
    spec = (
        f"reward_model(path='{path}', standardize=True, device=cpu)"
        f" + reward_model_disagreement(path='{path}')"
    )
    pipeline = RewardPipeline.from_spec(spec, pm)
    prompts, completions = ["the film was"] * 2, [" good cast", " bad cast"]
    batch = pipeline(prompts, completions, [[1]] * 2, [True] * 2)
    mean, std = tiny_rm.model.normalization
    np.testing.assert_allclose(
        batch.terms["reward_model"],
        (tiny_rm.model.score(prompts, completions) - mean) / std,
        rtol=1e-4,
    )
    _, disagreement = tiny_rm.model.score_with_disagreement(prompts, completions)
    np.testing.assert_allclose(
        batch.terms["reward_model_disagreement"], disagreement, rtol=1e-4, atol=1e-6
    )


def test_a_wrong_reward_model_path_is_a_clear_error(tmp_path, pm):
    from textenv.rewards import RewardError, RewardPipeline

    with pytest.raises(RewardError, match="is not a reward model directory"):
        RewardPipeline.from_spec(f"reward_model:{tmp_path}", pm)
    pipeline = RewardPipeline.from_spec("reward_model", pm)
    with pytest.raises(RewardError, match="reward_model needs path=DIR"):
        pipeline(["p"], ["c"], [[1]], [True])


def test_ppo_trains_against_the_reward_model(tiny_rm):
    env = gym.make(
        "textenv/TextGen-v0",
        model="tiny-random",
        prompts=["the plot was"],
        max_new_tokens=6,
        reward=f"reward_model:{tiny_rm.path}",
    )
    agent = PPO(
        env, batch_size=8, mini_batch_size=4, ppo_epochs=1, precision="fp32", progress=False, seed=0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", TruncationWarning)
        agent.learn(total_episodes=8)
    assert agent.num_iterations == 1 and np.isfinite(agent.history[-1]["charts/episodic_return"])


# ---------------------------------------------------------------- packaged backbones


@pytest.fixture
def one_thread():
    """Slow tests keep all threads by default; these small runs are faster on one (and on a busy
    2-core machine, 2-thread OpenMP regions wait for the busy core: 16 s instead of 1 s here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_the_default_minilm_backbone_trains_saves_and_reloads(tmp_path, one_thread):
    pairs = separable_pairs(24, seed=5)
    config = RewardModelConfig(epochs=1, batch_size=8, lr=1e-4, device="cpu")  # default backbone
    result = train_reward_model(pairs, tmp_path / "rm", config, progress=False)
    assert type(result.model.members[0]).__name__ == "MeanPooledScorer"  # MiniLM declares mean pooling
    assert result.model.max_length == 512 and np.isfinite(result.eval_loss)
    loaded = load_reward_model(tmp_path / "rm", device="cpu")
    prompts, completions = ["the plot was"] * 2, [" good music", " bad music"]
    np.testing.assert_allclose(
        loaded.score(prompts, completions), result.model.score(prompts, completions), atol=1e-5
    )


@pytest.mark.slow
def test_the_policy_lm_gets_a_scalar_head(one_thread):
    """smollm2-135m as a backbone: Llama with a score head on the last non-pad token."""
    from textenv.plugins.reward_model import load_backbone
    from textenv.plugins.reward_model.model import RewardModel

    model, tokenizer = load_backbone("smollm2-135m")
    assert type(model).__name__ == "LlamaForSequenceClassification"
    assert model.config.pad_token_id is not None
    rm = RewardModel([model], tokenizer, device="cpu")
    prompts, completions = ["Hi", "Hello there"], [" friend", " how are you today?"]
    batched = rm.score(prompts, completions)
    one_by_one = [rm.score([p], [c])[0] for p, c in zip(prompts, completions)]
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-4, atol=1e-4)  # padding changes nothing
