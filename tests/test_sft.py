"""Supervised fine-tuning on demonstrations: labels, learning, saving, bad input, the CLI."""

from __future__ import annotations

import json
import warnings
from importlib.resources import files

import pytest

from textenv.agents.sft import (
    IGNORE_INDEX,
    METADATA_FILENAME,
    SFTConfig,
    SFTDataError,
    completion_nll,
    data_collator,
    encode_demonstrations,
    load_demonstrations,
    train_sft,
)
from textenv.cli import main
from textenv.models import TINY_MODEL, load_causal_lm, load_tokenizer

DEMOS = [
    {"prompt": "The film was", "completion": " great fun."},
    {"prompt": "I liked", "completion": " the songs."},
    {"prompt": "Acting:", "completion": " superb."},
    {"prompt": "In short,", "completion": " a joy."},
]


def write_jsonl(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# ------------------------------------------------------------------------ labels


def test_labels_cover_completion_and_eos_only(byte_tokenizer):
    demos = load_demonstrations(DEMOS[:2])
    features, truncated = encode_demonstrations(demos, byte_tokenizer, max_length=64)
    assert truncated == 0
    for demo, feature in zip(demos, features):
        prompt = byte_tokenizer(demo.prompt, add_special_tokens=False)["input_ids"]
        completion = byte_tokenizer(demo.completion, add_special_tokens=False)["input_ids"] + [
            1
        ]  # EOS = 1
        assert feature["input_ids"] == prompt + completion
        assert feature["labels"] == [IGNORE_INDEX] * len(prompt) + completion

    batch = data_collator(byte_tokenizer)(features)
    lengths = [len(f["input_ids"]) for f in features]
    short = lengths.index(min(lengths))
    pad = slice(min(lengths), max(lengths))
    assert batch["input_ids"].shape == (2, max(lengths))
    assert (batch["labels"][short, pad] == IGNORE_INDEX).all()  # padding takes no loss
    assert (batch["attention_mask"][short, pad] == 0).all()
    assert (batch["input_ids"][short, pad] == byte_tokenizer.pad_token_id).all()
    taking_loss = (batch["labels"] != IGNORE_INDEX).sum(1).tolist()
    assert taking_loss == [len(d.completion.encode()) + 1 for d in demos]  # bytes + EOS


def test_too_long_examples_keep_the_prompt_end_and_warn_once(byte_tokenizer):
    demos = load_demonstrations(
        [{"prompt": "abcdefghij", "completion": "0123456789"}] * 3
        + [{"prompt": "ab", "completion": "c"}]
    )
    with pytest.warns(
        UserWarning, match="3 of 4 demonstrations are longer than max_length=12"
    ) as caught:
        features, truncated = encode_demonstrations(demos, byte_tokenizer, max_length=12)
    assert len(caught) == 1 and truncated == 3
    first = features[0]
    assert len(first["input_ids"]) == 12
    assert (
        byte_tokenizer.decode(first["input_ids"][:6]) == "efghij"
    )  # the prompt keeps its end (half)
    assert byte_tokenizer.decode([t for t in first["labels"] if t != IGNORE_INDEX]) == "012345"


# ---------------------------------------------------------------------- training


def test_sft_raises_the_likelihood_of_the_demonstrations_and_saves_a_loadable_model(tmp_path):
    demos = load_demonstrations(DEMOS)
    tokenizer, base = load_tokenizer(TINY_MODEL), load_causal_lm(TINY_MODEL, device="cpu")
    nll_before = completion_nll(base, tokenizer, demos)

    config = SFTConfig(
        epochs=8,
        learning_rate=3e-3,
        batch_size=len(DEMOS),
        logging_steps=1,
        device="cpu",
        precision="fp32",
    )
    result = train_sft(DEMOS, tmp_path / "sft", model=TINY_MODEL, config=config, progress=False)

    # one batch holds every demonstration, so the Trainer's first loss (before any step)
    # is the base model's mean NLL over completion tokens: prompts took no loss
    assert result.losses[0] == (1, pytest.approx(nll_before, abs=1e-3))
    assert result.num_completion_tokens == sum(len(d["completion"].encode()) + 1 for d in DEMOS)
    assert (tmp_path / "sft" / "model.safetensors").is_file()
    assert not list((tmp_path / "sft").glob("*.bin"))  # no pickles
    assert (
        json.loads((tmp_path / "sft" / METADATA_FILENAME).read_text())["base_model"] == TINY_MODEL
    )

    tuned = load_causal_lm(str(result.path), device="cpu")
    nll_after = completion_nll(tuned, load_tokenizer(str(result.path)), demos)
    assert nll_after < nll_before - 1.0, (nll_before, nll_after)
    assert result.final_loss < result.losses[0][1]


def test_a_datasets_dataset_is_accepted():
    datasets = pytest.importorskip("datasets")
    dataset = datasets.Dataset.from_list([{**d, "source": "web"} for d in DEMOS])
    demos = load_demonstrations(dataset)
    assert [d.completion for d in demos] == [d["completion"] for d in DEMOS]


def test_the_shipped_demonstrations_continue_the_movie_review_prompts():
    demos = load_demonstrations(str(files("textenv.data") / "demonstrations_movie_reviews.jsonl"))
    prompts = (files("textenv.data") / "movie_reviews.txt").read_text().splitlines()
    assert [d.prompt for d in demos] == prompts


# --------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            ['{"prompt": "a", "completion": "b"}', '{"prompt": "a", "completion": '],
            r":2: not valid JSON",
        ),
        (['{"prompt": "a"}'], r":1: missing field 'completion'"),
        (['{"text": "a"}'], r":1: missing field 'prompt' and 'completion'"),
        (['["a", "b"]'], r":1: expected an object .* got list"),
        (["", '{"prompt": "a", "completion": "  "}'], r":2: empty completion"),
        (['{"prompt": "", "completion": "b"}'], r":1: empty prompt"),
        (['{"prompt": "a", "completion": 3}'], r":1: 'completion' must be a string, got int"),
        (["", "   "], r"\.jsonl: no demonstrations"),
    ],
    ids=[
        "malformed-json",
        "missing-completion",
        "missing-both",
        "not-an-object",
        "empty-completion",
        "empty-prompt",
        "not-a-string",
        "empty-file",
    ],
)
def test_bad_jsonl_names_the_file_and_line(tmp_path, lines, message):
    path = write_jsonl(tmp_path / "demos.jsonl", lines)
    with pytest.raises(SFTDataError, match=message) as caught:
        load_demonstrations(path)
    assert str(caught.value).startswith(str(path))


def test_bad_records_and_missing_files_are_named(tmp_path):
    with pytest.raises(SFTDataError, match=r"demonstration #1: missing field 'completion'"):
        load_demonstrations([DEMOS[0], {"prompt": "x"}])
    with pytest.raises(SFTDataError, match="no demonstrations"):
        load_demonstrations([])
    with pytest.raises(SFTDataError, match="no such demonstrations file"):
        load_demonstrations(tmp_path / "missing.jsonl")
    latin1 = tmp_path / "latin1.jsonl"  # line 2 holds a Latin-1 byte
    latin1.write_bytes(b'{"prompt": "a", "completion": "b"}\n{"prompt": "caf\xe9"}')
    with pytest.raises(SFTDataError, match=r"latin1.jsonl:2: not UTF-8 text"):
        load_demonstrations(latin1)


def test_chat_template_without_one_is_a_clear_error(byte_tokenizer):
    with pytest.raises(SFTDataError, match="no chat template"):
        encode_demonstrations(
            load_demonstrations(DEMOS), byte_tokenizer, max_length=64, chat_template=True
        )


# ---------------------------------------------------------------------------- CLI


def test_cli_trains_saves_and_reports_the_loss(tmp_path, capsys):
    data = write_jsonl(tmp_path / "demos.jsonl", [json.dumps(d) for d in DEMOS])
    out = tmp_path / "model"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(
            [
                "sft",
                str(data),
                "--output",
                str(out),
                "--model",
                TINY_MODEL,
                "--epochs",
                "1",
                "--batch-size",
                "2",
                "--lr",
                "1e-3",
                "--precision",
                "fp32",
                "--seed",
                "1",
            ]
        )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "4 demonstrations" in printed and "final" in printed and str(out) in printed
    assert load_causal_lm(str(out), device="cpu").config.vocab_size == 384


def test_cli_prints_bad_data_as_one_line(tmp_path, capsys):
    data = write_jsonl(tmp_path / "demos.jsonl", [json.dumps(DEMOS[0]), '{"prompt": "x"}'])
    code = main(["sft", str(data), "--output", str(tmp_path / "model"), "--model", TINY_MODEL])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == f"textenv: error: {data}:2: missing field 'completion'"
    assert not (tmp_path / "model").exists()
