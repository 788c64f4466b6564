"""Agents: the learners that train the policy in textenv environments.

Token-level PPO (:class:`PPO`, :class:`PPOConfig`; ``ppo``, ``ppo_math``, ``policy``, ``run_log``),
supervised fine-tuning on demonstrations (``sft``), and their commands ``textenv train`` (``train``)
and ``textenv sft`` (``sft_cli``), built-in plugins of the ``textenv`` command line.
"""

from textenv.agents.checkpoint import CheckpointError, DiskFullError
from textenv.agents.ppo import PPO, TrainingError
from textenv.agents.ppo_config import PPOConfig
from textenv.agents.run_dir import RunDirError

__all__ = ["PPO", "CheckpointError", "DiskFullError", "PPOConfig", "RunDirError", "TrainingError"]
