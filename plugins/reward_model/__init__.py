"""The ``reward_model`` plugin: reward models learned from human preferences (data, Bradley-Terry training,
ensembles, scoring), the reward sources that score with one (``source``), and ``textenv rm`` (``cli``).

Example::

    from textenv.plugins.reward_model import RewardModelConfig, load_preferences, train_reward_model

    pairs = load_preferences("prefs.jsonl")  # {"prompt", "chosen", "rejected"} per line
    result = train_reward_model(pairs, "runs/rm", RewardModelConfig(ensemble_size=3))
    print(result.eval_accuracy)
    mean, disagreement = result.model.score_with_disagreement(["Hi"], [" hello!"])

The trained directory is a reward source: ``reward="reward_model:runs/rm"``.
"""

from textenv.plugins.reward_model.config import DEFAULT_BACKBONE, RewardModelConfig, RewardModelError
from textenv.plugins.reward_model.data import (
    PreferenceData,
    PreferenceDataError,
    PreferencePair,
    elo_ratings,
    elo_to_rewards,
    load_preferences,
    pairs_from_ratings,
    ranking_to_pairs,
    read_preferences,
)
from textenv.plugins.reward_model.encoding import TruncationWarning
from textenv.plugins.reward_model.loss import bradley_terry_loss, pairwise_accuracy
from textenv.plugins.reward_model.model import (
    RewardModel,
    evaluate_reward_model,
    load_backbone,
    load_reward_model,
)
from textenv.plugins.reward_model.pooling import MeanPooledScorer, backbone_pooling
from textenv.plugins.reward_model.source import get_reward_model
from textenv.plugins.reward_model.trainer import TrainResult, split_pairs, train_reward_model

__all__ = [
    "DEFAULT_BACKBONE",
    "MeanPooledScorer",
    "PreferenceData",
    "PreferenceDataError",
    "PreferencePair",
    "RewardModel",
    "RewardModelConfig",
    "RewardModelError",
    "TrainResult",
    "TruncationWarning",
    "backbone_pooling",
    "bradley_terry_loss",
    "elo_ratings",
    "elo_to_rewards",
    "evaluate_reward_model",
    "get_reward_model",
    "load_backbone",
    "load_preferences",
    "load_reward_model",
    "pairs_from_ratings",
    "pairwise_accuracy",
    "ranking_to_pairs",
    "read_preferences",
    "split_pairs",
    "train_reward_model",
]
