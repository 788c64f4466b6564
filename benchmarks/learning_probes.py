"""One-off probes of the default task's reward-against-KL line, beyond PPOConfig's options.

Trains the default setting of docs/BENCHMARKS.md's learning curve (lr 5e-5 annealed to 0 at 960 episodes,
lambda 0.8, KL weight 0.085, 64 episodes per iteration, mini-batches of 16, 2 epochs, reward
``sentiment_dense + repetition``) with one change that is not an agent option, then
measures the final policy on fresh samples as ``learning_curve.py`` does. The changes
patch the agent from outside, for this script only:

- ``--freeze-embeddings``: no updates to the (tied) input embedding and output head.
- ``--clip-high X``: DAPO's asymmetric clip, the ratio clipped to [1 - 0.2, 1 + X].
- ``--warmup-episodes N``: both learning rates ramped up per iteration over N episodes.
- ``--critic-warmup-episodes N``: for the first N episodes only the value head learns (the
  policy's learning rate is 0), so the first policy steps see a fitted critic's advantages.
- ``--expected-future-kl``: in each token's GAE advantage, the KL penalties of the tokens
  after it enter as their expectations, the exact KL over the vocabulary at those
  positions, in place of their sampled k1 values; the token's own penalty stays k1, so
  the pull on its own choice stays. The same expectation, with less noise (costs a
  second policy forward per iteration).
- ``--kl-to-go``: the KL part of each advantage without the critic. The critic learns the
  reward alone, and GAE (lambda 0.8) gives the reward's part of the advantage; the KL's
  part is minus beta times the KL still to come: the token's own k1 plus the exact KLs
  at the positions after it, less that sum's batch mean at the same position. So the KL
  pull on each token has no lambda bias, and (exact KLs) little noise.
- ``--interpolate A [A ...]``: after training, the final policy moved back towards its
  initial weights (WARP's interpolation towards the initialization), theta_0 + a (theta - theta_0),
  each a measured on the same samples' random numbers.
- ``--anatomy``: where the final policy's KL goes: the exact KL and both entropies per
  position, and the tokens that carry the most of the sampled (k1) KL.

Run, one at a time (about 3.5 minutes each on 2 cores)::

    .venv/bin/python benchmarks/learning_probes.py --freeze-embeddings
    .venv/bin/python benchmarks/learning_probes.py --anatomy --interpolate 1.0 0.9 0.8
"""

from __future__ import annotations

import argparse
import collections
import copy
import os
import time

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from learning_curve import evaluate_final_policy, print_windows

import textenv  # noqa: F401  (registers the env)
import textenv.agents.ppo as ppo_module
from textenv.agents import PPO
from textenv.agents.ppo_math import compute_gae, masked_mean, masked_whiten, without_left_padding
from textenv.devices import autocast
from textenv.generation import position_ids

VADER = "reward/sentiment_dense"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="smollm2-135m", help="the policy's model (tiny-random: a smoke run)")
    parser.add_argument("--episodes", type=int, default=1000, help="budget: whole iterations of 64 up to this many")
    parser.add_argument("--adam-eps", type=float, default=1e-8)
    parser.add_argument("--freeze-embeddings", action="store_true")
    parser.add_argument("--clip-high", type=float, default=None)
    parser.add_argument("--warmup-episodes", type=int, default=0)
    parser.add_argument("--critic-warmup-episodes", type=int, default=0)
    parser.add_argument("--expected-future-kl", action="store_true")
    parser.add_argument("--kl-to-go", action="store_true")
    parser.add_argument("--interpolate", type=float, nargs="*", default=[])
    parser.add_argument("--anatomy", action="store_true")
    parser.add_argument("--eval-batches", type=int, default=4)
    args = parser.parse_args()

    env = gym.make("textenv/TextGen-v0", model=args.model, prompts="movie-reviews",
                   reward="sentiment_dense + repetition", max_new_tokens=32)
    agent = PPO(env, learning_rate=5e-5, lr_decay_episodes=960, seed=args.seed, batch_size=64, mini_batch_size=16,
                ppo_epochs=2, vf_coef=0.5, lam=0.8, init_kl_coef=0.085, adam_eps=args.adam_eps, progress=False)
    print(f"load average {os.getloadavg()[0]:.2f}; {vars(args)}", flush=True)
    if args.freeze_embeddings:
        agent.policy.lm.get_input_embeddings().weight.requires_grad_(False)  # tied: the output head too
        # the same optimizer, its groups (and their learning rates) without the frozen weight
        groups = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in agent.optimizer.param_groups]
        agent.optimizer = type(agent.optimizer)(groups)
    if args.clip_high is not None:
        ppo_module.policy_loss = asymmetric_clip(ppo_module.policy_loss, args.clip_high)
    if args.warmup_episodes:
        with_warmup(agent, args.warmup_episodes)
    if args.critic_warmup_episodes:
        with_critic_warmup(agent, args.critic_warmup_episodes)
    cfg = agent.config
    if args.expected_future_kl:
        recompute_advantages(agent, expected_future_kl(cfg.gamma, cfg.lam))
    if args.kl_to_go:
        recompute_advantages(agent, kl_to_go(cfg.gamma, cfg.lam))
    initial = {k: v.detach().clone() for k, v in agent.policy.lm.state_dict().items()}

    start = time.perf_counter()
    print(f"{'episodes':>8} {'vader':>7} {'kl':>6} {'clipfrac':>8} {'entropy':>7}", flush=True)
    while agent.num_episodes + agent.config.batch_size <= args.episodes:
        stats = agent.train_iteration()
        print(f"{agent.num_episodes:>8} {stats[VADER]:>+7.3f} {stats['objective/kl']:>6.2f} "
              f"{stats['losses/clipfrac']:>8.3f} {stats['losses/entropy']:>7.3f}", flush=True)
    print(f"trained in {time.perf_counter() - start:.0f} s", flush=True)
    print_windows(agent.history, VADER, agent.config.batch_size)
    vader, kl = evaluate_final_policy(agent, VADER, args.eval_batches)
    print(f"final policy, {args.eval_batches * 64} fresh samples: mean VADER {vader:+.3f}, KL {kl:.2f} nats",
          flush=True)
    if args.anatomy:
        kl_anatomy(agent, args.eval_batches)
    if args.interpolate:
        interpolate_towards_initial(agent, initial, args.interpolate, args.eval_batches)


def asymmetric_clip(policy_loss, clip_high: float):
    """``policy_loss`` with the ratio clipped to [1 - clip_range, 1 + clip_high] (its stats unchanged)."""

    def clipped(new_logprobs, old_logprobs, advantages, mask, clip_range):
        _, stats = policy_loss(new_logprobs, old_logprobs, advantages, mask, clip_range)
        ratio = torch.where(mask.bool(), new_logprobs - old_logprobs, 0.0).exp()  # (B, T)
        clipped_ratio = ratio.clamp(1.0 - clip_range, 1.0 + clip_high)  # (B, T)
        return masked_mean(torch.max(-advantages * ratio, -advantages * clipped_ratio), mask), stats

    return clipped


def with_warmup(agent: PPO, episodes: int) -> None:
    """Scale the annealed learning rates by (episodes seen + this batch) / ``episodes`` until it reaches 1."""
    anneal = agent._anneal_learning_rates

    def anneal_with_warmup() -> None:
        anneal()
        scale = min(1.0, (agent.num_episodes + agent.config.batch_size) / episodes)
        for group in agent.optimizer.param_groups:
            group["lr"] *= scale

    agent._anneal_learning_rates = anneal_with_warmup


def with_critic_warmup(agent: PPO, episodes: int) -> None:
    """Hold the policy's learning rate (the first parameter group) at 0 for the first ``episodes``."""
    anneal = agent._anneal_learning_rates

    def anneal_after_warmup() -> None:
        anneal()
        if agent.num_episodes < episodes:
            agent.optimizer.param_groups[0]["lr"] = 0.0

    agent._anneal_learning_rates = anneal_after_warmup


def rewards_without_kl(episodes, mask: torch.Tensor) -> torch.Tensor:
    """(B, T) the sources' per-token rewards, with each episode's score added at its last token
    (as ``make_batch`` builds them when reward normalization and clipping are off, as here)."""
    rewards = episodes.token_rewards * mask  # (B, T)
    last = (mask.sum(1).long() - 1).clamp(min=0)  # (B,)
    rewards[torch.arange(len(rewards), device=mask.device), last] += torch.as_tensor(
        episodes.scores, dtype=torch.float32, device=mask.device)
    return rewards


def recompute_advantages(agent: PPO, advantages_of) -> None:
    """Replace each batch's advantages and critic targets by
    ``advantages_of(rewards, values, mask, beta, exact, sampled)``: the rewards without the KL,
    the rollout's values, the mask, the KL weight, and the exact and sampled (k1) KLs, each
    (B, T)."""
    make_batch = agent.make_batch

    def make_batch_again(episodes):
        batch, stats = make_batch(episodes)
        beta, mask = stats["objective/kl_coef"], batch.mask  # (B, T)
        exact = exact_kl(agent, batch.input_ids, batch.attention_mask, batch.tokens.shape[1]) * mask  # (B, T)
        sampled = (batch.logprobs - batch.ref_logprobs) * mask  # (B, T) k1
        advantages, returns = advantages_of(rewards_without_kl(episodes, mask), batch.values, mask, beta, exact,
                                            sampled)  # (B, T) each
        batch.advantages, batch.returns = masked_whiten(advantages, mask), returns
        return batch, stats

    agent.make_batch = make_batch_again


def expected_future_kl(gamma: float, lam: float):
    """GAE with the later tokens' KL penalties as their exact KLs, the token's own as k1."""
    def advantages_of(rewards, values, mask, beta, exact, sampled):
        advantages, returns = compute_gae(rewards - beta * exact, values, mask, gamma, lam)  # (B, T) each
        return advantages - beta * (sampled - exact), returns  # the token's own penalty back to k1

    return advantages_of


def kl_to_go(gamma: float, lam: float):
    """The reward's GAE with a reward-only critic, less beta times the KL still to come."""
    def advantages_of(rewards, values, mask, beta, exact, sampled):
        advantages, returns = compute_gae(rewards, values, mask, gamma, lam)  # (B, T) each
        later = exact.flip(1).cumsum(1).flip(1) - exact  # (B, T) the exact KLs after each position
        to_go = (sampled + later) * mask  # (B, T)
        baseline = to_go.sum(0) / mask.sum(0).clamp(min=1)  # (T,) its mean at each position
        return advantages - beta * (to_go - baseline) * mask, returns

    return advantages_of


@torch.no_grad()
def policy_and_reference_logprobs(agent: PPO, input_ids: torch.Tensor, attention_mask: torch.Tensor, t: int):
    """Yield each mini-batch's rows and the log-distributions (b, T, V) of the policy and the reference
    at its completion positions."""
    vocab = agent.task.vocab_size
    for rows in torch.arange(len(input_ids)).split(agent.config.mini_batch_size):
        i, a = without_left_padding(input_ids[rows], attention_mask[rows])
        with autocast(agent.device, agent.bf16):
            policy_logits, _ = agent.policy(i, a, t, values=False)  # (b, T, V')
            ref_logits = agent.reference(input_ids=i, attention_mask=a, logits_to_keep=t + 1, use_cache=False,
                                         position_ids=position_ids(a)).logits[:, :-1]
        yield (rows, F.log_softmax(policy_logits.float()[..., :vocab], -1),  # (b, T, V)
               F.log_softmax(ref_logits.float()[..., :vocab], -1))  # (b, T, V)


def exact_kl(agent: PPO, input_ids: torch.Tensor, attention_mask: torch.Tensor, t: int) -> torch.Tensor:
    """(B, T) KL(policy || reference) over the vocabulary at each completion position."""
    return torch.cat([(logp.exp() * (logp - logq)).sum(-1)
                      for _, logp, logq in policy_and_reference_logprobs(agent, input_ids, attention_mask, t)])


def interpolate_towards_initial(agent: PPO, initial: dict, alphas: list[float], batches: int) -> None:
    """Measure theta_0 + a (theta - theta_0) for each a, all on the same random numbers."""
    final = {k: v.detach().clone() for k, v in agent.policy.lm.state_dict().items()}
    sampling, prompts = agent.sample_generator.get_state(), copy.deepcopy(agent.prompt_rng.bit_generator.state)
    for alpha in alphas:
        with torch.no_grad():
            for name, weight in agent.policy.lm.state_dict().items():
                if weight.is_floating_point():
                    weight.copy_(initial[name] + alpha * (final[name] - initial[name]))
        agent.sample_generator.set_state(sampling)
        agent.prompt_rng.bit_generator.state = copy.deepcopy(prompts)
        vader, kl = evaluate_final_policy(agent, VADER, batches)
        print(f"interpolated a = {alpha}: mean VADER {vader:+.3f}, KL {kl:.2f} nats", flush=True)


@torch.no_grad()
def kl_anatomy(agent: PPO, batches: int) -> None:
    """Print the exact KL and both entropies per position, and the tokens carrying the most k1 KL."""
    exact, k1, h_policy, h_reference = [], [], [], []
    by_token, count = collections.Counter(), collections.Counter()
    for _ in range(batches):
        episodes = agent.rollout()
        tokens, mask = episodes.completion_ids, episodes.completion_mask.float()  # (B, T) each
        ids = torch.cat([episodes.prompt_ids, tokens], 1)  # (B, L)
        attention = torch.cat([episodes.prompt_mask, episodes.completion_mask], 1)  # (B, L)
        for rows, logp, logq in policy_and_reference_logprobs(agent, ids, attention, tokens.shape[1]):
            m = mask[rows]  # (b, T)
            exact.append(((logp.exp() * (logp - logq)).sum(-1) * m).numpy())
            h_policy.append((-(logp.exp() * logp).sum(-1) * m).numpy())
            h_reference.append((-(logq.exp() * logq).sum(-1) * m).numpy())
            taken = tokens[rows, :, None]  # (b, T, 1) the sampled tokens
            sampled = (logp.gather(-1, taken)[..., 0] - logq.gather(-1, taken)[..., 0]) * m  # (b, T) k1
            k1.append(sampled.numpy())
            for token, value, real in zip(tokens[rows].flatten().tolist(), sampled.flatten().tolist(),
                                          m.flatten().tolist()):
                if real:
                    by_token[token] += value
                    count[token] += 1
    exact, k1 = np.concatenate(exact), np.concatenate(k1)  # (N, T) each
    print(f"KL per episode: exact {exact.sum(1).mean():.2f} nats, k1 {k1.sum(1).mean():.2f}")
    print("position      " + " ".join(f"{p:>5}" for p in range(exact.shape[1])))
    print("exact KL      " + " ".join(f"{v:>5.2f}" for v in exact.mean(0)))
    print("H(policy)     " + " ".join(f"{v:>5.2f}" for v in np.concatenate(h_policy).mean(0)))
    print("H(reference)  " + " ".join(f"{v:>5.2f}" for v in np.concatenate(h_reference).mean(0)))
    print("tokens carrying the most k1 KL: token, nats per episode, times sampled, nats each")
    for token, total in by_token.most_common(20):
        piece = agent.task.tokenizer.decode([token])
        print(f"  {piece!r:>14} {total / len(k1):6.3f} {count[token]:6d} {total / count[token]:6.2f}")


if __name__ == "__main__":
    main()
