"""Baseline: trl 0.11.4's classic value-head ``PPOTrainer`` on the textenv default workload.

Runs in its own venv (``bash benchmarks/baselines/setup_trl011.sh``), never the project's:
trl 0.11.4 needs transformers 4.46, textenv needs transformers 5.x.

Workload (one PPO step): 16 movie-review openings -> 32 sampled tokens each
(min_new_tokens = max_new_tokens = 32, do_sample, top_k=0, top_p=1.0 as in trl's
sentiment example) -> VADER compound of each completion -> ``PPOTrainer.step``
(batch_size 16, mini_batch_size 8, ppo_epochs 4, trl's other defaults: Adam lr 1.41e-5,
adaptive KL from 0.2, its default reference model = a frozen full copy of the policy).

Per step it times: generation, reward, ``step``'s no-grad forward passes (old log-probs
and values from the policy, ref log-probs: trl's ``time/ppo/forward_pass``), the PPO
update (``time/ppo/optimize_step``) and the rest of ``step`` (KL rewards, GAE, stats).
One warm-up step, then ``--steps`` timed steps; prints ONE JSON line of medians.

    benchmarks/baselines/.venv-trl011/bin/python benchmarks/baselines/trl011_ppo.py \
        --precision fp32 --steps 3
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
import warnings
from pathlib import Path

from baseline_common import common_parser, cpu_seconds, log_step, print_summary, read_prompts, require_trl


def parse_args(argv=None):
    p = common_parser(__doc__.split("\n")[0], precision="fp32", step="PPO step",
                      precision_help="fp32, or bf16 mixed precision through accelerate (autocast)")
    p.add_argument("--batch-size", type=int, default=16, help="prompts per PPO step")
    p.add_argument("--mini-batch-size", type=int, default=8)
    p.add_argument("--ppo-epochs", type=int, default=4)
    p.add_argument("--gen-batch-size", type=int, default=16,
                   help="sequences per generate() call (trl's own default is 4; 16 = whole batch)")
    return p.parse_args(argv)


def load_policy(model_dir: Path):
    """Load the converted SmolLM2 under transformers 4.46, fixing what 4.46 misreads.

    The directory was written by transformers 5.x: its config keeps rope_theta inside
    ``rope_parameters`` (4.46 ignores that key and falls back to rope_theta=10000) and
    its tokenizer_config names the 5.x class ``TokenizersBackend`` (unknown to 4.46).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    config = AutoConfig.from_pretrained(model_dir)
    rope = getattr(config, "rope_parameters", None) or {}
    if "rope_theta" in rope and config.rope_theta != rope["rope_theta"]:
        print(
            f"[trl011] config: rope_theta {config.rope_theta} -> {rope['rope_theta']} "
            "(from the 5.x rope_parameters)",
            file=sys.stderr,
        )
        config.rope_theta = rope["rope_theta"]
    model = AutoModelForCausalLM.from_pretrained(model_dir, config=config, torch_dtype="float32")

    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    if head is emb:
        print("[trl011] lm_head is tied to embed_tokens after loading", file=sys.stderr)
    else:
        print(
            "[trl011] lm_head was NOT tied to embed_tokens after loading: tying it now",
            file=sys.stderr,
        )
        model.config.tie_word_embeddings = True
        model.tie_weights()
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight

    tok_cfg = json.loads((model_dir / "tokenizer_config.json").read_text())
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(model_dir / "tokenizer.json"),
        **{
            k: tok_cfg[k]
            for k in ("bos_token", "eos_token", "pad_token", "unk_token")
            if k in tok_cfg
        },
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def main(argv=None) -> None:
    args = parse_args(argv)
    require_trl("0.11.4", "trl011")
    warnings.filterwarnings("ignore")
    import numpy as np
    import torch
    import transformers
    import trl
    from trl import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    transformers.logging.set_verbosity_error()
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    base, tokenizer = load_policy(args.model_dir)
    model = AutoModelForCausalLMWithValueHead.from_pretrained(base)

    accelerator_kwargs = {"cpu": True}
    if args.precision == "bf16":
        accelerator_kwargs["mixed_precision"] = "bf16"
    config = PPOConfig(
        batch_size=args.batch_size,
        mini_batch_size=args.mini_batch_size,
        ppo_epochs=args.ppo_epochs,
        seed=args.seed,
        accelerator_kwargs=accelerator_kwargs,
    )
    # ref_model=None: trl's default reference model (create_reference_model, a frozen copy).
    trainer = PPOTrainer(config=config, model=model, ref_model=None, tokenizer=tokenizer)
    mp = trainer.accelerator.mixed_precision
    assert mp == ("bf16" if args.precision == "bf16" else "no"), mp

    prompts = read_prompts(args.prompts)
    rng = random.Random(args.seed)
    analyzer = SentimentIntensityAnalyzer()
    gen_kwargs = {
        "min_new_tokens": args.new_tokens,
        "max_new_tokens": args.new_tokens,
        "do_sample": True,
        "top_k": 0,
        "top_p": 1.0,
        "pad_token_id": tokenizer.pad_token_id,
    }

    rows = []
    for i in range(args.warmup + args.steps):
        batch = [rng.choice(prompts) for _ in range(args.batch_size)]
        load0, cpu0 = os.getloadavg()[0], cpu_seconds()
        t0 = time.perf_counter()
        queries = [tokenizer(p, return_tensors="pt").input_ids[0] for p in batch]
        responses = trainer.generate(
            queries, return_prompt=False, batch_size=args.gen_batch_size, **gen_kwargs
        )
        t1 = time.perf_counter()
        texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
        scores = [torch.tensor(analyzer.polarity_scores(t)["compound"]) for t in texts]
        t2 = time.perf_counter()
        stats = trainer.step(queries, responses, scores)
        t3 = time.perf_counter()
        n_tokens = sum(len(r) for r in responses)
        fwd, upd = stats["time/ppo/forward_pass"], stats["time/ppo/optimize_step"]
        row = {
            "step_s": t3 - t0,
            "generate_s": t1 - t0,
            "reward_s": t2 - t1,
            "forward_s": fwd,
            "update_s": upd,
            "step_other_s": (t3 - t2) - fwd - upd,
            "tokens": n_tokens,
            "tokens_per_s": n_tokens / (t3 - t0),
            "reward_mean": float(np.mean([s.item() for s in scores])),
            "kl": float(stats["objective/kl"]),
            "cpu_util": (cpu_seconds() - cpu0) / (t3 - t0),
            "loadavg_1m": max(load0, os.getloadavg()[0]),
        }
        tag = "warmup" if i < args.warmup else f"step {i - args.warmup + 1}/{args.steps}"
        log_step(f"trl011 {args.precision}", tag, row)
        if i >= args.warmup:
            rows.append(row)

    print_summary(
        system="trl-0.11.4-PPOTrainer", precision=args.precision, rows=rows,
        phases=("generate_s", "reward_s", "forward_s", "update_s", "step_other_s"), warmup=args.warmup,
        workload={"prompts": args.batch_size, "new_tokens": args.new_tokens, "mini_batch_size": args.mini_batch_size,
                  "ppo_epochs": args.ppo_epochs, "gen_batch_size": args.gen_batch_size},
        versions={"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__},
        torch_threads=torch.get_num_threads(),
    )


if __name__ == "__main__":
    main()
