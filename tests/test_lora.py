"""LoRA through peft: one copy of the base weights, an exact reference, adapters-only checkpoints, export."""

from __future__ import annotations

import gymnasium as gym
import pytest
import torch

from textenv.agents import PPO, PPOConfig, lora
from textenv.cli import main
from textenv.models import load_causal_lm

pytest.importorskip("peft")

PROMPTS = ["hello", "the movie was", "a", "once upon"]


def make_env():
    return gym.make("textenv/TextGen-v0", model="tiny-random", prompts=PROMPTS, max_new_tokens=8,
                    reward="length(target=4)")


def lora_agent(env=None, **options):
    defaults = dict(batch_size=8, mini_batch_size=4, ppo_epochs=2, precision="fp32", progress=False, seed=0,
                    lr_schedule="constant", lora_rank=4)
    return PPO(env or make_env(), **{**defaults, **options})


def held_tensors(agent):
    """Every parameter tensor the agent's policy and reference hold, once per storage: {data_ptr: numel}."""
    modules = [agent.policy]
    if isinstance(agent.reference, torch.nn.Module):
        modules.append(agent.reference)
    elif agent.reference is not None:
        modules.append(agent.reference.model)
    return {p.untyped_storage().data_ptr(): p.numel() for m in modules for p in m.parameters()}


def test_the_reference_is_the_policy_with_its_adapter_disabled_and_the_base_is_held_once():
    agent = lora_agent()
    assert agent.lora and isinstance(agent.reference, lora.AdapterDisabled)
    assert agent.reference.model is agent.policy.lm  # not a copy
    base = sum(p.numel() for p in load_causal_lm("tiny-random").parameters())
    trainable = {n for n, p in agent.policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("value_head.") for n in trainable)
    adapters = sum(p.numel() for n, p in agent.policy.named_parameters() if p.requires_grad)
    assert sum(held_tensors(agent).values()) == base + adapters  # no second copy of any base tensor
    full = PPO(make_env(), batch_size=8, mini_batch_size=4, precision="fp32", progress=False)
    assert sum(held_tensors(full).values()) > 1.9 * base  # the check sees a copy where there is one
    optimized = {id(p) for group in agent.optimizer.param_groups for p in group["params"]}
    assert len(optimized) == len(trainable)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_before_any_step_every_micro_batch_has_ratio_one_and_the_reference_kl_zero(precision):
    """LoRA's B starts at zero, so the adapter adds an exact 0: policy and reference log-probs are equal bit for
    bit, under bf16 too (where the base's Linear weights are stored in bf16 and the adapters stay fp32)."""
    agent = lora_agent(precision=precision, gradient_accumulation_steps=2)
    if precision == "bf16":
        assert agent.bf16
        dtypes = {n: p.dtype for n, p in agent.policy.lm.named_parameters()}
        assert any(d == torch.bfloat16 for n, d in dtypes.items() if "base_layer" in n)
        assert all(d == torch.float32 for n, d in dtypes.items() if "lora_" in n)
    batch, stats = agent.make_batch(agent.rollout())
    assert stats["objective/kl"] == 0.0 and torch.equal(batch.logprobs, batch.ref_logprobs)
    generator = torch.Generator().manual_seed(1)
    for _ in range(2):  # shuffled as the update shuffles
        for micro in torch.randperm(len(batch.tokens), generator=generator).split(agent.config.micro_batch_size):
            stats = agent._backward(batch.rows(micro))
            assert stats["approx_kl"] == pytest.approx(0.0, abs=1e-7)
            assert stats["ratio_max"] == pytest.approx(1.0, abs=1e-6)
    agent.optimizer.zero_grad(set_to_none=True)


def test_an_iteration_moves_the_adapters_only_and_the_reference_stays_the_base():
    agent = lora_agent(learning_rate=1e-2)
    base = {n: p.detach().clone() for n, p in agent.policy.lm.named_parameters() if not p.requires_grad}
    agent.train_iteration()
    assert all(torch.equal(p, base[n]) for n, p in agent.policy.lm.named_parameters() if not p.requires_grad)
    assert any(p.abs().sum() > 0 for n, p in agent.policy.lm.named_parameters() if "lora_B" in n)
    ids = torch.tensor([agent.task.prompt_ids[0].tolist()])
    with torch.no_grad():
        reference = agent.reference(input_ids=ids).logits
        plain = load_causal_lm("tiny-random")(input_ids=ids).logits
        policy = agent.policy.lm(input_ids=ids).logits
    torch.testing.assert_close(reference, plain)
    assert not torch.allclose(policy, plain)


def test_a_checkpoint_holds_the_adapters_and_resumes_to_the_same_next_iteration(tmp_path):
    agent = lora_agent(learning_rate=1e-3, run_dir=str(tmp_path / "run"), checkpoint_every=0)
    agent.learn(total_episodes=16)
    path = agent.save(tmp_path / "ckpt")
    expected = agent.train_iteration()
    assert (path / "model" / "adapter_config.json").exists() and not (path / "model" / "model.safetensors").exists()
    assert not (path / "reference").exists()
    full = PPO(make_env(), batch_size=8, mini_batch_size=4, precision="fp32", progress=False).save(tmp_path / "full")
    size = {p: sum(f.stat().st_size for f in p.rglob("*.safetensors") if f.name != "rng.safetensors")
            for p in (path, full)}
    trainable = sum(p.numel() for p in agent.policy.parameters() if p.requires_grad)
    assert size[path] < 4 * 3 * trainable + 20_000  # the trained part's weights and Adam's 2 moments (+ headers)
    assert size[path] < size[full] / 3, size  # (a real model's base dwarfs its adapters far more than this one's)

    resumed = PPO.load(path, run_dir=str(tmp_path / "run2"))
    assert resumed.lora and resumed.reference.model is resumed.policy.lm
    assert resumed.num_iterations == 2
    got = resumed.train_iteration()
    for key in ["charts/episodic_return", "objective/kl", "losses/policy_loss", "losses/value_loss",
                "losses/approx_kl"]:
        assert got[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-7), key
    for a, b in zip(agent.policy.parameters(), resumed.policy.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.fixture
def trained(tmp_path):
    """A LoRA agent one iteration in (adapters away from 0), and its checkpoint."""
    agent = lora_agent(learning_rate=1e-2, lora_alpha=32.0)
    agent.train_iteration()
    return agent, agent.save(tmp_path / "ckpt")


def policy_logits(model, agent):
    """Logits at the real tokens of two prompts (a padded position's depend on the attention kernel)."""
    ids, mask = agent.task.prompt_ids[:2], agent.task.prompt_mask[:2]
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits[mask.bool()]


def test_export_merge_writes_a_plain_transformers_model_with_the_policys_logits(trained, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    agent, path = trained
    assert main(["export", str(path), "--merge", str(tmp_path / "merged")]) == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not any("lora" in n for n, _ in model.named_parameters())
    AutoTokenizer.from_pretrained(tmp_path / "merged")
    torch.testing.assert_close(policy_logits(model, agent), policy_logits(agent.policy.lm, agent),
                               rtol=1e-4, atol=1e-5)
    assert main(["export", str(path), "--merge", str(tmp_path / "merged")]) == 2  # no silent overwrite
    assert "--overwrite" in capsys.readouterr().err


def test_export_without_merge_writes_the_adapter_that_peft_loads(trained, tmp_path):
    from peft import PeftModel

    agent, path = trained
    assert main(["export", str(path), str(tmp_path / "adapter")]) == 0
    model = PeftModel.from_pretrained(load_causal_lm("tiny-random"), tmp_path / "adapter")
    torch.testing.assert_close(policy_logits(model, agent), policy_logits(agent.policy.lm, agent))


def test_lora_options_are_flags_and_are_checked():
    from textenv.cli import build_parser

    parser, _ = build_parser()
    args = parser.parse_args(["train", "--lora-rank", "8", "--lora-alpha", "16", "--lora-dropout", "0.1",
                              "--lora-target-modules", "q_proj,v_proj"])
    assert (args.lora_rank, args.lora_alpha, args.lora_dropout, args.lora_target_modules) == (8, 16.0, 0.1,
                                                                                              "q_proj,v_proj")
    assert PPOConfig(lora_rank=8, **{"lora_target_modules": "q_proj,v_proj"}).lora_rank == 8
    with pytest.raises(ValueError, match="lora_rank must be >= 0"):
        PPOConfig(lora_rank=-1)
    with pytest.raises(ValueError, match="lora_target_modules must be comma-separated"):
        PPOConfig(lora_rank=4, lora_target_modules="q_proj,")
    with pytest.raises(ValueError, match="second copy of the base weights"):
        PPOConfig(lora_rank=4, value_model="separate")
    with pytest.raises(ValueError, match=r"lora_target_modules 'qkv'.*its Linear layers: .*q_proj"):
        lora_agent(lora_target_modules="qkv")


def test_lora_without_peft_says_what_to_install(monkeypatch):
    monkeypatch.setattr(lora, "peft_available", lambda: False)
    with pytest.raises(ValueError, match=r"^lora_rank needs peft: pip install 'textenv\[lora\]'$"):
        PPOConfig(lora_rank=4)


def test_a_peft_model_given_to_ppo_shares_its_base_with_the_reference_too(tmp_path):
    """PPO(env, model=get_peft_model(...)) used to train with a frozen full copy as the reference."""
    from peft import LoraConfig, get_peft_model

    load_causal_lm("tiny-random").save_pretrained(tmp_path / "base")
    model = get_peft_model(load_causal_lm(str(tmp_path / "base")), LoraConfig(r=2, target_modules=["q_proj"]))
    agent = PPO(make_env(), model=model, batch_size=8, mini_batch_size=4, precision="fp32", progress=False)
    assert agent.lora and agent.reference.model is agent.policy.lm
    agent.train_iteration()
    resumed = PPO.load(agent.save(tmp_path / "ckpt"))  # its base comes back from where the adapter says
    assert resumed.reference.model is resumed.policy.lm
    for a, b in zip(agent.policy.parameters(), resumed.policy.parameters()):
        torch.testing.assert_close(a, b)
    nameless = get_peft_model(load_causal_lm("tiny-random"), LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="base records no name_or_path, so no checkpoint could rebuild it"):
        PPO(make_env(), model=nameless, progress=False)


def test_lora_dropout_acts_in_the_update_only():
    agent = lora_agent(lora_dropout=0.5)
    dropouts = [m for n, m in agent.policy.lm.named_modules() if n.endswith("lora_dropout.default")]
    assert dropouts and all(isinstance(m, torch.nn.Dropout) for m in dropouts)
    seen = []
    backward = agent._backward
    agent._backward = lambda *a, **k: seen.append(all(m.training for m in dropouts)) or backward(*a, **k)
    batch, _ = agent.make_batch(agent.rollout())
    assert not any(m.training for m in dropouts)  # the old and the reference log-probs: without dropout
    agent.update(batch)
    assert seen and all(seen)


@pytest.mark.slow
def test_an_exported_adapter_of_the_default_model_names_its_real_base_so_auto_peft_loads_it(tmp_path):
    """The adapter's config names the converted default model's directory, not the name "smollm2-135m" that only
    textenv understands."""
    from peft import AutoPeftModelForCausalLM

    env = gym.make("textenv/TextGen-v0", model="smollm2-135m", prompts=PROMPTS, max_new_tokens=4,
                   reward="length(target=4)")
    agent = PPO(env, batch_size=2, mini_batch_size=2, lora_rank=2, progress=False)
    path = agent.save(tmp_path / "ckpt")
    assert main(["export", str(path), str(tmp_path / "adapter")]) == 0
    model = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "adapter")
    assert sum("lora_" in name for name, _ in model.named_parameters()) > 0
