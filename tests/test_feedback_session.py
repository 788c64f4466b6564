"""Whole interactive sessions driven through a pseudo-terminal: keys typed → SQLite → kill -9 → all there."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from patience import cpu_seconds, wait_for_exit, wait_until

import textenv
from textenv.envs.text_gen_vector import TextGenVectorEnv
from textenv.generation import generate_episodes
from textenv.models import TINY_MODEL, load_causal_lm
from textenv.plugins.human.live import _sources
from textenv.plugins.human.simulated import HumanModel, SimulatedHuman
from textenv.plugins.human.store import FeedbackStore

FAST = "pace=200, min_delay=0.01, max_delay=0.2, gap=0.01, linger=0.05"


class LetterCritic:
    """A scripted critic for byte-level gibberish: words (runs of letters) in lower case are good,
    the others bad."""

    def word(self, word: str) -> float:
        return 0.5 if word.islower() else -0.5

    def completion(self, text: str) -> float:
        return 0.0


@pytest.fixture(autouse=True)
def no_live_sources_left():
    yield
    for source in list(_sources.values()):
        source.close()


def _count(db, table: str) -> int:
    if not os.path.exists(db):
        return 0
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    except sqlite3.OperationalError:  # the schema is not there yet
        return 0
    finally:
        con.close()


def _wait_for(predicate, what: str, *, person=None, child=None, db=None) -> None:
    """Wait for ``predicate()`` while the session shows progress: text on the person's screen, the child's CPU
    time, the database's files growing."""
    signs = []
    if person is not None:
        signs.append(lambda: len(person.screen))
    if child is not None:
        signs.append(lambda: cpu_seconds(child.pid))
    if db is not None:
        signs.append(lambda: [os.path.getsize(p) for p in (f"{db}", f"{db}-wal") if os.path.exists(p)])

    def done() -> bool:
        if predicate():
            return True
        if child is not None and child.poll() is not None:  # it will make no more progress: say so at once
            raise AssertionError(f"waiting for {what}: the child exited with status {child.returncode}")
        return False

    wait_until(done, what=what, progress=signs)


def _spawn(args: list[str], slave: int, log) -> subprocess.Popen:
    """Run ``textenv ARGS`` with the pty slave as its terminal (stdin and stdout)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TEXTENV_DISABLE_PLUGIN_AUTOLOAD": "1"}
    return subprocess.Popen([sys.executable, "-m", "textenv.cli", *args], stdin=slave, stdout=slave,
                            stderr=log, env=env, close_fds=True)


def test_the_human_source_credits_keys_stores_them_and_hhat_stands_in_for_silence(tmp_path):
    db = tmp_path / "feedback.db"
    model = load_causal_lm(TINY_MODEL)
    with SimulatedHuman(LetterCritic(), behaviour=HumanModel().scaled(20), seed=1) as person:
        spec = f"human(db='{db}', tty='{person.tty_path}', {FAST}, hhat_min_presses=5)"
        env = TextGenVectorEnv(4, model=TINY_MODEL, prompts=["the movie", "hello"], reward=spec,
                               max_new_tokens=16, autoreset_mode="Disabled")
        for seed in range(2):
            episodes = generate_episodes(model, env, seed=seed)
        _wait_for(lambda: not person.pending, what="the last reactions", person=person)
        assert person.presses > 5
        _wait_for(lambda: _count(db, "keypresses") == person.presses, what="every key sent to be stored", db=db)
        mask = episodes.completion_mask.bool()
        assert episodes.token_rewards[mask].abs().sum() > 0  # per-token credit reached the agent
        assert np.isclose(episodes.rewards, episodes.token_rewards.sum(1).double().numpy()).all()
        screen = "".join(person.screen)
        assert "↑ + g good" in screen and "▸" in screen
        # a summary after each batch (each call of the source); Ĥ is judged once it has learned from one
        summaries = re.findall(r"\d+ press(?:es)? \(.*credited to \d+ tokens of \d+ completions? · (Ĥ[^\n\x1b]*)",
                               screen)
        assert len(summaries) >= 2 and summaries[0] == "Ĥ: learning from the first presses"
        assert re.fullmatch(r"Ĥ agreed on \d+ of [1-9]\d* pressed tokens so far \(\d+ %\)", summaries[-1])
        # the person stops judging: Ĥ fills the silence with its predictions
        person.judge = False
        silent = generate_episodes(model, env, seed=5)
    assert silent.token_rewards[silent.completion_mask.bool()].abs().sum() > 0
    source = next(iter(_sources.values()))
    assert source.hhat.presses_seen >= 5 and source.options.hhat_path.exists()
    with FeedbackStore(db) as store:
        assert store.stats()["episodes_credited"] == 8  # the two attentive batches, not the silent one


def test_unknown_keys_get_a_hint_and_help_is_shown(tmp_path):
    model = load_causal_lm(TINY_MODEL)
    with SimulatedHuman(judge=False) as person:
        env = TextGenVectorEnv(1, model=TINY_MODEL, prompts=["hello"], max_new_tokens=24, autoreset_mode="Disabled",
                               reward=f"human(db='{tmp_path / 'f.db'}', tty='{person.tty_path}', pace=40, linger=0.3)")
        person.type("x?", at=time.time() + 0.3)
        generate_episodes(model, env, seed=0)
        # the person's side reads the terminal in its own thread: wait until the help's second copy is read
        _wait_for(lambda: "".join(person.screen).count("space pause · q quit") >= 2, what="the help", person=person)
        screen = "".join(person.screen)
    assert "key 'x' does nothing here; press ? for help" in screen
    assert screen.count("space pause · q quit") >= 2  # at the top, and again for "?"
    assert _count(tmp_path / "f.db", "keypresses") == 0


def test_token_labelling_survives_kill_9_with_every_keypress(tmp_path):
    db = str(tmp_path / "feedback.db")
    master, slave = pty.openpty()
    with open(tmp_path / "stderr.txt", "w") as log:
        child = _spawn(["feedback", "label", "--mode", "tokens", "--db", db, "--model", TINY_MODEL,
                        "--prompts", "movie-reviews", "--num-prompts", "2", "--max-new-tokens", "16",
                        "--pace", "50"], slave, log)
    os.close(slave)
    typed = [("g", "g", 1, 1.0), ("\x1b[A", "up", 1, 1.0), ("9", None, 0, 0), ("b", "b", -1, 1.8),
             ("+", "+", 1, 1.8), ("2", None, 0, 0), ("\x1b[B", "down", -1, 0.4), ("-", "-", -1, 0.4)]
    try:
        with SimulatedHuman(master_fd=master, judge=False) as person:
            _wait_for(lambda: "▸" in "".join(person.screen), what="the first streamed completion", child=child)
            for keys, *_ in typed:
                person.type(keys)
                time.sleep(0.05)
            expected = [(name, value, strength) for _, name, value, strength in typed if name]
            _wait_for(lambda: _count(db, "keypresses") == len(expected), what="the keypresses to be committed",
                      child=child, db=db)
            child.send_signal(signal.SIGKILL)
            assert wait_for_exit(child) == -signal.SIGKILL
    finally:
        child.kill()
        os.close(master)
    with FeedbackStore(db) as store:
        stored = [(p.key, p.value, p.strength) for p in store.keypresses()]
        assert stored == [(n, float(v), pytest.approx(s)) for n, v, s in expected]
        assert all(p.episode_id is not None for p in store.keypresses())  # each names what was on screen


_STREAM_THREE = textwrap.dedent("""
    import sys
    from textenv.plugins.human.credit import UniformDelay
    from textenv.plugins.human.store import FeedbackStore
    from textenv.plugins.human.stream import StreamConfig, TokenFeedback
    from textenv.plugins.human.terminal import KeyReader

    store = FeedbackStore(sys.argv[1])
    session = store.start_session("label-tokens")
    config = StreamConfig(pace=50, delay=UniformDelay(min_delay=0.01, max_delay=0.3), gap=0.2, linger=0.2)
    texts = [" a fine film" * 3, " a dull film" * 3, " and then" * 300]  # the third runs for 50 s
    with KeyReader() as reader:
        feedback = TokenFeedback(store, session, config=config, reader=reader)
        feedback.stream(["The film"] * 3, texts, [[ord(c) for c in t] for t in texts], [list(t) for t in texts])
""")


def test_a_token_batch_killed_midway_keeps_its_presses_creditable_and_exported(tmp_path):
    db = str(tmp_path / "feedback.db")
    master, slave = pty.openpty()
    with open(tmp_path / "stderr.txt", "w") as log:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        child = subprocess.Popen([sys.executable, "-c", _STREAM_THREE, db], stdin=slave, stdout=slave, stderr=log,
                                 env=env, close_fds=True)
    os.close(slave)
    try:
        with SimulatedHuman(master_fd=master, judge=False) as person:
            for shown, key in [("[1/3]", "g"), ("[2/3]", "b")]:  # three goods on the first, three bads on the second
                _wait_for(lambda shown=shown: shown in "".join(person.screen), what=f"completion {shown}",
                          child=child)
                now = time.time()
                for delay in (0.2, 0.35, 0.5):
                    person.type(key, at=now + delay)
            _wait_for(lambda: "[3/3]" in "".join(person.screen), what="the third completion", child=child)
            _wait_for(lambda: _count(db, "keypresses") == 6, what="the six keypresses to be committed", child=child,
                      db=db)
            child.send_signal(signal.SIGKILL)  # in the middle of the batch: the third completion is streaming
            assert wait_for_exit(child) == -signal.SIGKILL
    finally:
        child.kill()
        os.close(master)
    out = tmp_path / "prefs.jsonl"
    with FeedbackStore(db) as store:
        first, second = store.episodes()[:2]
        assert first["shown_at"] and second["shown_at"]  # when each token appeared survived the kill
        totals = [sum(rewards) for _, rewards, _ in store.token_feedback()[:2]]
        assert totals[0] > 1 and totals[1] < -1
        assert store.export_preferences(out) >= 1
    pairs = [json.loads(line) for line in out.read_text().splitlines()]
    assert {"prompt": "The film", "chosen": " a fine film" * 3, "rejected": " a dull film" * 3,
            "margin": pytest.approx(totals[0] - totals[1])} in pairs


def test_rating_survives_kill_9_and_exports_preferences(tmp_path):
    db, prompts = str(tmp_path / "feedback.db"), tmp_path / "one_prompt.txt"
    prompts.write_text("The film was\n")
    master, slave = pty.openpty()
    with open(tmp_path / "stderr.txt", "w") as log:
        child = _spawn(["feedback", "label", "--mode", "rate", "--db", db, "--model", TINY_MODEL,
                        "--prompts", str(prompts), "--num-prompts", "4", "--max-new-tokens", "8"], slave, log)
    os.close(slave)
    try:
        with SimulatedHuman(master_fd=master, judge=False) as person:
            # (key, questions on screen before it is typed); x is no rating: a hint, and no label
            for answer, asked in [("5", 1), ("x", 2), ("1", 2), ("3", 3)]:
                _wait_for(lambda asked=asked: "".join(person.screen).count("rate 1-5") >= asked, what="a question",
                          child=child)
                person.type(answer)
                time.sleep(0.1)
            _wait_for(lambda: _count(db, "ratings") == 3, what="three ratings", child=child, db=db)
            _wait_for(lambda: "".join(person.screen).count("rate 1-5") >= 4, what="the fourth question", child=child)
            child.send_signal(signal.SIGKILL)
            wait_for_exit(child)
            assert "does nothing here" in "".join(person.screen)
    finally:
        child.kill()
        os.close(master)
    with FeedbackStore(db) as store:
        assert [r["rating"] for r in store.ratings()] == [5.0, 1.0, 3.0]
    out = tmp_path / "prefs.jsonl"
    from textenv import cli

    assert cli.main(["feedback", "export", "--db", db, "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and all(r["prompt"] == "The film was" and r["chosen"] != r["rejected"] for r in rows)


def test_training_with_a_simulated_human_at_the_terminal_survives_kill_9(tmp_path):
    db = str(tmp_path / "feedback.db")
    reward = f"human(db='{db}', {FAST}, hhat_min_presses=5)"
    args = ["train", "--model", TINY_MODEL, "--prompts", "movie-reviews", "--reward", reward,
            "--batch-size", "4", "--mini-batch-size", "4", "--ppo-epochs", "1", "--max-new-tokens", "12",
            "--group-size", "2", "--eval-prompts", "0"]
    # a complete short run: trains on keypresses, saves Ĥ
    master, slave = pty.openpty()
    with open(tmp_path / "stderr.txt", "w") as log:
        child = _spawn([*args, "--iterations", "2", "--output-dir", str(tmp_path / "run")], slave, log)
    os.close(slave)
    with SimulatedHuman(LetterCritic(), behaviour=HumanModel().scaled(20), master_fd=master, seed=2) as person:
        assert wait_for_exit(child, progress=[lambda: len(person.screen)]) == 0, \
            (tmp_path / "stderr.txt").read_text()[-2000:]
    os.close(master)
    assert "training reward by iteration" in "".join(person.screen)
    assert (tmp_path / "feedback.hhat.safetensors").exists()
    first = _count(db, "keypresses")
    assert first > 0
    # a second, long run on the same feedback store, killed -9 mid-training: every keypress committed before the
    # kill is still there
    master, slave = pty.openpty()
    with open(tmp_path / "stderr2.txt", "w") as log:
        child = _spawn([*args, "--iterations", "50", "--output-dir", str(tmp_path / "run2")], slave, log)
    os.close(slave)
    try:
        with SimulatedHuman(LetterCritic(), behaviour=HumanModel().scaled(20), master_fd=master, seed=3) as person:
            _wait_for(lambda: _count(db, "keypresses") >= first + 10, what="keypresses in the second run",
                      child=child, db=db)
            seen = _count(db, "keypresses")
            child.send_signal(signal.SIGKILL)
            wait_for_exit(child)
    finally:
        child.kill()
        os.close(master)
    with FeedbackStore(db) as store:
        assert len(store.keypresses()) >= seen
        assert store.stats()["sessions"] == 2
    out = tmp_path / "prefs.jsonl"
    with FeedbackStore(db) as store:
        n = store.export_preferences(out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == n and all({"prompt", "chosen", "rejected"} <= set(r) for r in rows)


def test_a_source_that_takes_tokens_gets_each_token_decoded(fresh_default_pm, byte_tokenizer):
    seen = {}

    @textenv.reward(name="token_texts")
    def token_texts(completion_ids, tokens):
        seen["ids"], seen["tokens"] = completion_ids, tokens
        return [[0.0] * len(ids) for ids in completion_ids]

    env = TextGenVectorEnv(2, model=TINY_MODEL, prompts=["hi"], reward="token_texts + length",
                           max_new_tokens=5, autoreset_mode="Disabled")
    assert env.task.rewards.wants_tokens
    generate_episodes(load_causal_lm(TINY_MODEL), env, seed=0)
    assert [len(t) for t in seen["tokens"]] == [len(ids) for ids in seen["ids"]]
    # special tokens (EOS, ByT5's sentinels) decode to "", as they do in the completion's text
    piece = lambda i: byte_tokenizer.decode([i], skip_special_tokens=True)  # noqa: E731
    assert seen["tokens"] == [[piece(i) for i in ids] for ids in seen["ids"]]
    assert not TextGenVectorEnv(1, model=TINY_MODEL, prompts=["hi"], reward="length").task.rewards.wants_tokens


def test_comparing_asks_where_a_real_reward_model_ensemble_disagrees(tmp_path):
    """compare mode end to end: a trained two-member ensemble picks the pairs, the person answers at a pty."""
    from textenv.plugins.reward_model import PreferencePair, RewardModelConfig, load_reward_model, train_reward_model

    pairs = [PreferencePair(f"the {w} was", f" good {w}", f" bad {w}") for w in ["film", "plot", "cast"] * 10]
    rm_dir = tmp_path / "rm"
    train_reward_model(pairs, rm_dir, RewardModelConfig(backbone=TINY_MODEL, ensemble_size=2, epochs=1,
                                                        batch_size=8, lr=3e-3, device="cpu"), progress=False)
    db = str(tmp_path / "feedback.db")
    master, slave = pty.openpty()
    with open(tmp_path / "stderr.txt", "w") as log:
        child = _spawn(["feedback", "label", "--mode", "compare", "--reward-model", str(rm_dir), "--db", db,
                        "--model", TINY_MODEL, "--num-prompts", "2", "--candidates", "3", "--rounds", "1",
                        "--max-new-tokens", "8"], slave, log)
    os.close(slave)
    try:
        with SimulatedHuman(master_fd=master, judge=False) as person:
            for asked, answer in [(1, "a"), (2, "b")]:
                # once each question is on screen: a key typed earlier answers nothing
                _wait_for(lambda asked=asked: "".join(person.screen).count("b: B is better") >= asked,
                          what="a question", child=child)
                person.type(answer)
            assert wait_for_exit(child, progress=[lambda: len(person.screen)]) == 0, \
                (tmp_path / "stderr.txt").read_text()
    finally:
        child.kill()
        os.close(master)
    with FeedbackStore(db) as store:
        rows = store.comparisons()
    assert [r["choice"] for r in rows] == ["a", "b"]
    # each stored disagreement is the ensemble's spread on that very pair, as the model scores it again
    rm = load_reward_model(rm_dir, device="cpu")
    for row in rows:
        _, std = rm.score_with_disagreement([row["prompt"]] * 2, [row["completion_a"], row["completion_b"]])
        assert row["disagreement"] == pytest.approx(float(np.hypot(*std)), rel=1e-3, abs=1e-5)
        assert row["disagreement"] > 0


def test_no_progress_bar_of_transformers_prints_into_a_live_session(tmp_path, capfd):
    model = load_causal_lm(TINY_MODEL)
    with SimulatedHuman(judge=False) as person:
        env = TextGenVectorEnv(1, model=TINY_MODEL, prompts=["hello"], max_new_tokens=4, autoreset_mode="Disabled",
                               reward=f"human(db='{tmp_path / 'f.db'}', tty='{person.tty_path}', {FAST})")
        generate_episodes(model, env, seed=0)  # the session starts at the first batch
        capfd.readouterr()
        model.save_pretrained(tmp_path / "checkpoint")  # as a training loop saves between batches
        load_causal_lm(str(tmp_path / "checkpoint"))
        out, err = capfd.readouterr()
        assert "Writing model shards" not in err + out and "Loading weights" not in err + out
        for source in list(_sources.values()):
            source.close()
    capfd.readouterr()
    model.save_pretrained(tmp_path / "after")  # the session is over: the bars are back
    assert "Writing model shards" in capfd.readouterr().err


def _saved_tiny_model(folder) -> str:
    """The tiny model saved to a folder: loading it from there shows transformers' "Loading weights" bar."""
    from textenv.models import load_tokenizer

    load_causal_lm(TINY_MODEL).save_pretrained(folder)
    load_tokenizer(TINY_MODEL).save_pretrained(folder)
    return str(folder)


def test_best_of_k_stores_each_answer_before_the_next_question_and_exports_2k_minus_3_pairs(tmp_path):
    db, model = str(tmp_path / "feedback.db"), _saved_tiny_model(tmp_path / "model")
    master, slave = pty.openpty()
    with open(tmp_path / "stderr.txt", "w") as log:
        child = _spawn(["feedback", "label", "--mode", "best", "--db", db, "--model", model, "--prompts",
                        "movie-reviews", "--num-prompts", "2", "--candidates", "4", "--rounds", "1",
                        "--max-new-tokens", "8", "--temperature", "1.5"], slave, log)
    os.close(slave)
    screen = lambda: "".join(person.screen)  # noqa: E731
    try:
        with SimulatedHuman(master_fd=master, judge=False) as person:
            _wait_for(lambda: "best 1-4 · s skip · q quit · ? help" in screen(), what="the first question", child=child)
            person.type("?")
            _wait_for(lambda: screen().count("best 1-4 · s skip") >= 2, what="the help", child=child)
            person.type("2")
            _wait_for(lambda: "worst 1-4, not 2 · Enter or s: no worst" in screen(), what="the worst", child=child)
            assert _count(db, "choices") == 1  # the best is kept before the worst is asked
            person.type("2")  # the best again: a hint, no label
            _wait_for(lambda: "2 is the best; the worst is another one" in screen(), what="the hint", child=child)
            person.type("4")
            _wait_for(lambda: "[2/2]" in screen(), what="the second question", child=child)
            with FeedbackStore(db) as store:  # the worst is in before the next question is on screen
                assert [(c["best"], c["worst"]) for c in store.choices()] == [(1, 3)]
            person.type("1")
            _wait_for(lambda: screen().count("worst 1-4, not 1") == 1, what="the second worst", child=child)
            person.type("\r")  # Enter: no worst
            assert wait_for_exit(child, progress=[lambda: len(person.screen)]) == 0, \
                (tmp_path / "stderr.txt").read_text()[-2000:]
    finally:
        child.kill()
        os.close(master)
    with FeedbackStore(db) as store:
        first, second = store.choices()
        assert (second["best"], second["worst"]) == (0, None)
        assert len(first["completions"]) == len(second["completions"]) == 4  # distinct completions, one prompt each
        assert store.stats()["choices"] == 2 and store.stats()["choices_with_worst"] == 1
    assert "no worst" in screen()
    assert "the store gives 8 preference pairs" in screen()  # 2K-3 = 5 with the worst, K-1 = 3 without
    out = tmp_path / "prefs.jsonl"
    from textenv import cli

    assert cli.main(["feedback", "export", "--db", db, "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 8
    assert all(r["chosen"] == first["completions"][1] for r in rows[:3])
    assert [r["rejected"] for r in rows[3:5]] == [first["completions"][3]] * 2
    # transformers' "Loading weights" bar stays off the questions' screen (and off stderr, the same terminal)
    assert "Loading weights" not in screen() + (tmp_path / "stderr.txt").read_text()


def _rate_session(tmp_path, db: str, num_prompts: int, answers: str) -> str:
    """``textenv feedback label --mode rate`` in a pty, 2 completions per prompt, answered in turn; the screen."""
    master, slave = pty.openpty()
    with open(tmp_path / "stderr.txt", "w") as log:
        child = _spawn(["feedback", "label", "--mode", "rate", "--db", db, "--model", TINY_MODEL, "--prompts",
                        "movie-reviews", "--num-prompts", str(num_prompts), "--candidates", "2", "--rounds", "1",
                        "--max-new-tokens", "8"], slave, log)
    os.close(slave)
    try:
        with SimulatedHuman(master_fd=master, judge=False) as person:
            for asked, answer in enumerate(answers, start=1):
                _wait_for(lambda asked=asked: "".join(person.screen).count("rate 1-5") >= asked, what="a question",
                          child=child)
                person.type(answer)
            assert wait_for_exit(child, progress=[lambda: len(person.screen)]) == 0, \
                (tmp_path / "stderr.txt").read_text()[-2000:]
            return "".join(person.screen)
    finally:
        child.kill()
        os.close(master)


def test_a_short_rating_session_on_many_prompts_exports_pairs(tmp_path):
    """Several completions of each prompt, one after another: ratings of one prompt's completions make pairs."""
    db = str(tmp_path / "feedback.db")
    screen = _rate_session(tmp_path, db, 2, "5142")
    with FeedbackStore(db) as store:
        rated = store.ratings()
    assert [r["rating"] for r in rated] == [5.0, 1.0, 4.0, 2.0]
    assert rated[0]["prompt"] == rated[1]["prompt"] and rated[2]["prompt"] == rated[3]["prompt"]
    out = tmp_path / "prefs.jsonl"
    from textenv import cli

    assert cli.main(["feedback", "export", "--db", db, "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) >= 2
    assert {(r["chosen"], r["rejected"]) for r in rows} >= {(rated[0]["completion"], rated[1]["completion"]),
                                                            (rated[2]["completion"], rated[3]["completion"])}
    assert f"the store gives {len(rows)} preference pairs" in screen


def test_a_session_whose_labels_give_no_pair_says_why(tmp_path):
    # the same rating for both completions: no preference between them
    screen = _rate_session(tmp_path, str(tmp_path / "feedback.db"), 1, "33")
    assert ("no preference pairs yet: 2 ratings over 1 prompt: pairs come from two completions of one prompt rated "
            "differently") in screen


@pytest.mark.parametrize(("argv", "message"), [
    (["--mode", "best", "--candidates", "12"], "--mode best numbers the completions 1 to 9 (one key each): "
                                               "--candidates must be at most 9, got 12"),
    (["--mode", "compare", "--candidates", "1"], "--mode compare chooses among completions of one prompt: "
                                                 "--candidates must be at least 2, got 1"),
    (["--candidates", "0"], "--candidates is the completions per prompt, at least 1, got 0"),
])
def test_label_options_that_cannot_work_are_refused_in_one_line(tmp_path, capsys, argv, message):
    from textenv import cli

    assert cli.main(["feedback", "label", "--db", str(tmp_path / "f.db"), *argv]) == 2
    assert capsys.readouterr().err == f"textenv: error: {message}\n"
    assert not (tmp_path / "f.db").exists()
