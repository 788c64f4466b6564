"""textenv: reinforcement learning from human feedback on text.

Text generation as a Gymnasium environment (an action is the next token), rewards
from pluggable sources registered with pluggy, and a token-level PPO agent.
"""

import gymnasium as gym

from textenv.plugin_manager import (
    PluginError,
    get_plugin_manager,
    hookimpl,
    make_plugin_manager,
    reward,
    unregister_reward,
)
from textenv.prompts import PromptError, load_prompts
from textenv.rewards import (
    RewardBatch,
    RewardError,
    RewardPipeline,
    RewardSource,
    parse_reward_spec,
)

__version__ = "0.1.0"

ENV_IDS = ("textenv/TextGen-v0",)

if "textenv/TextGen-v0" not in gym.registry:
    gym.register(
        id="textenv/TextGen-v0",
        entry_point="textenv.envs.text_gen:TextGenEnv",
        vector_entry_point="textenv.envs.text_gen_vector:TextGenVectorEnv",
    )

__all__ = [
    "ENV_IDS",
    "PluginError",
    "PromptError",
    "RewardBatch",
    "RewardError",
    "RewardPipeline",
    "RewardSource",
    "get_plugin_manager",
    "hookimpl",
    "load_prompts",
    "make_plugin_manager",
    "parse_reward_spec",
    "reward",
    "unregister_reward",
]
