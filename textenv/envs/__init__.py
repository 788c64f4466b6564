"""Gymnasium environments of textenv."""

from textenv.envs.task import TextTask
from textenv.envs.text_gen import TextGenEnv
from textenv.envs.text_gen_vector import TextGenVectorEnv
from textenv.envs.torch_to_numpy import TorchToNumpy

__all__ = ["TextGenEnv", "TextGenVectorEnv", "TextTask", "TorchToNumpy"]
