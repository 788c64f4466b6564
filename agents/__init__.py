"""Agents that train language models in textenv environments: token-level PPO."""

from textenv.agents.ppo import PPO, TrainingError
from textenv.agents.ppo_config import PPOConfig

__all__ = ["PPO", "PPOConfig", "TrainingError"]
