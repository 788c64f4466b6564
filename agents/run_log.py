"""A training run's artefacts: TensorBoard scalars, sample completions, the reward-curve PNG."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter


class RunLog:
    """Writes a run directory: ``events.out.tfevents.*``, ``samples.jsonl``, ``reward_curve.png``."""

    def __init__(self, run_dir: str | Path, resumed_at: tuple[int, int] | None = None):
        """Open the run's log.

        Args:
            run_dir: the run directory.
            resumed_at: (iterations, episodes) of the checkpoint a resumed run continues from: what the run
                logged after it is dropped, since the resumed run does those iterations again (TensorBoard's
                ``purge_step`` hides their scalars; their ``samples.jsonl`` rows are removed).
        """
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        if resumed_at is not None:
            self._drop_samples_after(resumed_at[0])
        # Scalars are logged at the episodes seen after an iteration: a redone one logs past ``episodes``.
        self.writer = SummaryWriter(str(self.dir), purge_step=None if resumed_at is None else resumed_at[1] + 1)

    def _drop_samples_after(self, iteration: int) -> None:
        """Rewrite ``samples.jsonl`` without its rows of iterations past ``iteration`` (through a renamed copy)."""
        path = self.dir / "samples.jsonl"
        if not path.is_file():
            return
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [line for line in lines if _iteration_of_row(line) <= iteration]
        if len(kept) == len(lines):
            return
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        tmp.replace(path)

    def scalars(self, stats: dict[str, float], step: int) -> None:
        """Log each scalar at ``step`` (episodes seen, SB3-style x-axis)."""
        for key, value in stats.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def samples(self, iteration: int, prompts: Sequence[str], completions: Sequence[str],
                rewards: Sequence[float]) -> None:
        """Append sample completions to ``samples.jsonl`` and TensorBoard's text tab."""
        with open(self.dir / "samples.jsonl", "a", encoding="utf-8") as f:
            for p, c, r in zip(prompts, completions, rewards):
                f.write(json.dumps({"iteration": iteration, "prompt": p, "completion": c, "reward": float(r)}) + "\n")
        table = "\n".join(f"| {p} | {c} | {float(r):+.3f} |" for p, c, r in zip(prompts, completions, rewards))
        self.writer.add_text("samples", "| prompt | completion | reward |\n|---|---|---|\n" + table, iteration)

    def close(self) -> None:
        self.writer.close()


def plot_reward_curve(history: Sequence[dict[str, float]], path: str | Path) -> Path:
    """Plot mean episodic return and KL against episodes seen into a PNG.

    Args:
        history: one dict per iteration with ``episodes``, ``charts/episodic_return``
            and ``objective/kl``.
        path: the PNG file to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    episodes = [h["episodes"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(episodes, [h["charts/episodic_return"] for h in history], color="tab:blue", marker=".")
    ax.set_xlabel("episodes")
    ax.set_ylabel("mean episodic return", color="tab:blue")
    kl_ax = ax.twinx()
    kl_ax.plot(episodes, [h["objective/kl"] for h in history], color="tab:red", alpha=0.6, linestyle="--")
    kl_ax.set_ylabel("KL to reference (nats)", color="tab:red")
    ax.set_title("PPO training")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def _iteration_of_row(line: str) -> int:
    """A ``samples.jsonl`` row's iteration (0 for a row that is not one of ours: it is kept)."""
    try:
        return int(json.loads(line)["iteration"])
    except (ValueError, KeyError, TypeError):
        return 0
