"""Agents that train language models in textenv environments (token-level PPO: next issue)."""
