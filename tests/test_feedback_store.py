"""The SQLite feedback store: durable labels, preference export, stats, clear errors."""

from __future__ import annotations

import json
import re
import sqlite3

import pytest

from textenv import cli
from textenv.plugins.human.store import _SCHEMA, APPLICATION_ID, FeedbackStore, FeedbackStoreError, Keypress
from textenv.rewards import RewardError, RewardPipeline


@pytest.fixture
def store(tmp_path):
    with FeedbackStore(tmp_path / "feedback.db") as store:
        yield store


def test_the_store_is_wal_with_full_sync_and_every_write_is_committed(store):
    session = store.start_session("rate")
    episode = store.add_episode(session, "The film", " was great", [5, 6], [" was", " great"])
    store.add_keypress(session, Keypress(at=1.5, key="up", value=1.0, strength=1.4, episode_id=episode))
    store.add_rating(session, episode, 4, scale=5)
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert not store._db.in_transaction
    # a second, independent connection sees every label without any close or flush
    other = sqlite3.connect(store.path)
    assert other.execute("SELECT key, value, strength FROM keypresses").fetchall() == [("up", 1.0, 1.4)]
    assert other.execute("SELECT rating, scale FROM ratings").fetchall() == [(4.0, 5)]
    other.close()


def test_episodes_keypresses_and_token_rewards_round_trip(store):
    session = store.start_session("tokens")
    episode = store.add_episode(session, "p", "ab", [1, 2], ["a", "b"])
    store.set_display_times(episode, [10.0, 10.25], 11.0)
    store.set_token_rewards(episode, [0.25, -0.5], [0.3, 0.6])
    store.add_keypress(session, Keypress(at=10.5, key="b", value=-1.0, episode_id=episode))
    [row] = store.episodes()
    assert row["tokens"] == ["a", "b"] and row["shown_at"] == [10.0, 10.25] and row["hidden_at"] == 11.0
    assert store.token_feedback() == [([1, 2], [0.25, -0.5], [0.3, 0.6])]
    assert store.keypresses(session) == [Keypress(10.5, "b", -1.0, 1.0, episode)]


def test_export_writes_preference_jsonl_from_comparisons_and_ratings(store, tmp_path):
    session = store.start_session("compare")
    store.add_comparison(session, "p1", "left text", "right text", "b", disagreement=0.3)
    store.add_comparison(session, "p1", "x", "y", "a")
    store.add_comparison(session, "p1", "x", "z", "tie")
    store.add_comparison(session, "p1", "x", "w", "skip")
    good = store.add_episode(session, "p2", "lovely", [1], ["lovely"])
    bad = store.add_episode(session, "p2", "awful", [2], ["awful"])
    store.add_rating(session, good, 5, scale=5)
    store.add_rating(session, bad, 2, scale=5)
    out = tmp_path / "prefs.jsonl"
    assert store.export_preferences(out) == 3
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == [
        {"prompt": "p1", "chosen": "right text", "rejected": "left text"},
        {"prompt": "p1", "chosen": "x", "rejected": "y"},
        {"prompt": "p2", "chosen": "lovely", "rejected": "awful", "margin": pytest.approx(0.6)},
    ]
    assert store.export_preferences(out, include_ratings=False) == 2


def test_stats_count_everything(store):
    session = store.start_session("tokens")
    for value in (1.0, 1.0, -1.0):
        store.add_keypress(session, Keypress(at=1.0, key="g" if value > 0 else "b", value=value))
    store.add_comparison(session, "p", "a", "b", "a")
    store.end_session(session)
    stats = store.stats()
    assert (stats["keypresses"], stats["keypresses_good"], stats["keypresses_bad"]) == (3, 2, 1)
    assert stats["comparisons_a"] == 1 and stats["preference_pairs"] == 1 and stats["sessions"] == 1


def test_bad_labels_are_refused(store):
    session = store.start_session("rate")
    episode = store.add_episode(session, "p", "c", [1], ["c"])
    with pytest.raises(ValueError, match="between 1 and 5"):
        store.add_rating(session, episode, 6, scale=5)
    with pytest.raises(ValueError, match="choice"):
        store.add_comparison(session, "p", "a", "b", "left")


def test_a_file_that_is_not_a_store_is_named_in_the_error(tmp_path):
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database\n" * 50)
    with pytest.raises(FeedbackStoreError, match="notes.db"):
        FeedbackStore(path)


def test_cli_export_and_stats(tmp_path, capsys):
    db = tmp_path / "feedback.db"
    with FeedbackStore(db) as store:
        session = store.start_session("compare")
        store.add_comparison(session, "p", "good one", "bad one", "a")
    out = tmp_path / "prefs.jsonl"
    assert cli.main(["feedback", "export", "--db", str(db), "--output", str(out)]) == 0
    assert json.loads(out.read_text()) == {"prompt": "p", "chosen": "good one", "rejected": "bad one"}
    assert cli.main(["feedback", "stats", "--db", str(db), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["comparisons"] == 1
    assert cli.main(["feedback", "stats", "--db", str(tmp_path / "missing.db")]) == 2
    assert "missing.db: no such feedback store" in capsys.readouterr().err


def test_keypress_feedback_on_two_completions_of_a_prompt_gives_a_pair(store):
    session = store.start_session("tokens")
    liked = store.add_episode(session, "p", "fine film", [1, 2], ["fine", " film"])
    disliked = store.add_episode(session, "p", "dull film", [3, 2], ["dull", " film"])
    close = store.add_episode(session, "p", "ok film", [4, 2], ["ok", " film"])
    store.set_token_rewards(liked, [0.5, 0.3], [0.5, 0.3])
    store.set_token_rewards(disliked, [-0.6, 0.0], [0.6, 0.0])
    store.set_token_rewards(close, [0.6, 0.0], [0.6, 0.0])  # within half a press of "fine film"
    pairs = store.preference_pairs()
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("fine film", "dull film"), ("ok film", "dull film")]
    assert pairs[0]["margin"] == pytest.approx(1.4)
    assert store.preference_pairs(include_tokens=False) == []


def test_keypress_labelled_completions_train_the_reward_model(store, tmp_path):
    """Presses on streamed completions reach the reward model that ratings train: their pairs fit it."""
    from textenv.plugins.reward_model import RewardModelConfig, train_reward_model

    session = store.start_session("tokens")
    for prompt in ("The film was", "I thought it", "Overall the plot"):
        for text, value in ((" a delight, warm and funny", 1.0), (" a chore, cold and dull", -1.0)):
            episode = store.add_episode(session, prompt, text, [1, 2, 3], ["a", "b", "c"])
            store.set_token_rewards(episode, [0.0, value, 0.0], [0.0, 1.0, 0.0])  # one press on the middle token
    pairs = store.preference_pairs()
    assert len(pairs) == 3 and all(p["chosen"].startswith(" a delight") for p in pairs)
    config = RewardModelConfig(backbone="tiny-random", epochs=30, lr=3e-3, batch_size=3, eval_fraction=0.0,
                               device="cpu")
    model = train_reward_model(pairs, tmp_path / "rm", config, progress=False).model
    scores = model.score(["The film was"] * 2, [" a delight, warm and funny", " a chore, cold and dull"])
    assert scores[0] > scores[1]


def _snapshot(folder):
    """Every file in ``folder`` with its bytes and modification time."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("journal", ["delete", "wal"])
@pytest.mark.parametrize("table", ["notes", "sessions"])  # sessions: a name our schema uses too
def test_another_programs_database_is_refused_untouched(tmp_path, capsys, journal, table):
    folder = tmp_path / "theirs"
    folder.mkdir()
    other = folder / "other.db"
    con = sqlite3.connect(other)
    con.execute(f"PRAGMA journal_mode={journal}")
    con.execute(f"CREATE TABLE {table} (title TEXT, body TEXT)")
    con.execute(f"INSERT INTO {table} VALUES ('shopping', 'milk')")
    con.commit()
    con.close()
    before = _snapshot(folder)
    assert cli.main(["feedback", "stats", "--db", str(other)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1
    assert str(other) in err and "application_id 0x74784642" in err and "untouched" in err
    with pytest.raises(FeedbackStoreError, match="other.db: another program's SQLite database"):
        FeedbackStore(other)
    assert _snapshot(folder) == before  # same bytes, same mtime, no -wal or -shm left beside it


def test_a_new_or_empty_file_becomes_a_marked_store(tmp_path):
    empty = tmp_path / "empty.db"
    empty.touch()
    for path in (tmp_path / "new.db", empty):
        with FeedbackStore(path) as store:
            store.start_session("rate")
        con = sqlite3.connect(path)
        assert con.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        con.close()
        with FeedbackStore(path) as store:  # and it opens again as ours
            assert store.stats()["sessions"] == 1


def test_a_store_written_before_the_mark_is_adopted(tmp_path):
    path = tmp_path / "old.db"
    con = sqlite3.connect(path)  # what the store wrote before it set application_id: schema 1, no best-of-K table
    con.execute("PRAGMA journal_mode=WAL")
    con.executescript(_SCHEMA)
    con.execute("DROP TABLE choices")
    con.execute("PRAGMA user_version=1")
    con.execute("INSERT INTO sessions (started_at, mode) VALUES (1.0, 'compare')")
    con.execute("INSERT INTO comparisons (session_id, prompt, completion_a, completion_b, choice, at) "
                "VALUES (1, 'p', 'x', 'y', 'a', 2.0)")
    con.commit()
    con.close()
    with FeedbackStore(path) as store:
        assert store.preference_pairs() == [{"prompt": "p", "chosen": "x", "rejected": "y"}]
        assert store._db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        store.add_choice(1, "p", ["x", "y"], best=0)  # and it takes the labels of later versions
    with FeedbackStore(path) as store:
        assert len(store.preference_pairs()) == 2


def test_a_directory_given_as_the_store_is_said_to_be_one_in_one_line(tmp_path, capsys, pm):
    said = f"{tmp_path}: is a directory; expected a feedback store file (or a new file's path)"
    with pytest.raises(FeedbackStoreError, match=f"^{re.escape(said)}$"):
        FeedbackStore(tmp_path)
    for argv in (["feedback", "stats", "--db", str(tmp_path)],
                 ["feedback", "export", "--db", str(tmp_path), "--output", str(tmp_path / "prefs.jsonl")]):
        assert cli.main(argv) == 2
        assert capsys.readouterr().err == f"textenv: error: {said}\n"
    with pytest.raises(RewardError, match=f"^reward term 'human': db=: {re.escape(said)}$"):
        RewardPipeline.from_spec(f"human(db={tmp_path})", pm)  # when the spec is read, before any model loads


def _other_connection_rows(path, sql):
    con = sqlite3.connect(path)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


@pytest.mark.parametrize("k", [2, 3, 4, 6])
def test_a_best_of_k_answer_gives_k_minus_1_pairs_and_2k_minus_3_with_a_worst(store, k):
    session = store.start_session("label-best")
    texts = [f"completion {i}" for i in range(k)]
    choice = store.add_choice(session, "p", texts, best=1)
    # committed at once: another connection sees it before anything else happens
    assert _other_connection_rows(store.path, "SELECT best, worst FROM choices") == [(1, None)]
    pairs = store.preference_pairs()
    assert len(pairs) == k - 1
    assert all(p["chosen"] == "completion 1" and p["prompt"] == "p" for p in pairs)
    assert {p["rejected"] for p in pairs} == set(texts) - {"completion 1"}
    if k < 3:
        return
    store.set_choice_worst(choice, k - 1)
    assert _other_connection_rows(store.path, "SELECT best, worst FROM choices") == [(1, k - 1)]
    pairs = store.preference_pairs()
    assert len(pairs) == 2 * k - 3
    over_worst = [(p["chosen"], p["rejected"]) for p in pairs[k - 1 :]]
    assert over_worst == [(t, f"completion {k - 1}") for t in texts if t not in ("completion 1", f"completion {k - 1}")]
    assert store.stats()["choices"] == 1 and store.stats()["choices_with_worst"] == 1
    assert store.stats()["preference_pairs"] == 2 * k - 3


def test_a_best_of_k_answer_among_repeated_texts_gives_no_pair_of_a_text_with_itself(store):
    session = store.start_session("label-best")
    store.add_choice(session, "p", ["same", "other", "same"], best=0, worst=1)
    assert [(p["chosen"], p["rejected"]) for p in store.preference_pairs()] == [("same", "other")] * 2


@pytest.mark.parametrize(("completions", "best", "worst", "message"), [
    (["only"], 0, None, "a best-of-K answer chooses among 2 or more completions, got 1"),
    (["x", "y"], 2, None, r"best is the index of one of the 2 completions \(0 to 1\), got 2"),
    (["x", "y", "z"], 0, -1, r"worst is the index of one of the 3 completions \(0 to 2\), got -1"),
    (["x", "y", "z"], 1, 1, r"the worst completion cannot be the best one too \(both 1\)"),
])
def test_a_bad_best_of_k_answer_is_refused_in_one_line(store, completions, best, worst, message):
    session = store.start_session("label-best")
    with pytest.raises(ValueError, match=f"^{message}$"):
        store.add_choice(session, "p", completions, best=best, worst=worst)
    assert store.choices() == []
    choice = store.add_choice(session, "p", ["x", "y", "z"], best=0)
    with pytest.raises(ValueError, match=r"^the worst completion cannot be the best one too \(both 0\)$"):
        store.set_choice_worst(choice, 0)


def test_a_marked_store_from_before_best_of_k_opens_and_gains_its_table(tmp_path):
    path = tmp_path / "v1.db"
    with FeedbackStore(path) as store:
        store.add_comparison(store.start_session("label-compare"), "p", "x", "y", "a")
    con = sqlite3.connect(path)  # as the first marked version left it: no choices table, user_version 1
    con.execute("DROP TABLE choices")
    con.execute("PRAGMA user_version=1")
    con.commit()
    con.close()
    with FeedbackStore(path) as store:
        store.add_choice(1, "p", ["x", "y", "z"], best=2, worst=0)
        assert len(store.preference_pairs()) == 1 + 3
        assert store._db.execute("PRAGMA user_version").fetchone()[0] == 2


def test_zero_pairs_are_explained(tmp_path, capsys):
    db = tmp_path / "feedback.db"
    with FeedbackStore(db) as store:
        assert store.why_no_pairs() == ("the store holds no ratings, A/B or best-of-K answers, "
                                        "or credited keypresses")
        session = store.start_session("label-rate")
        for prompt, rating in [("p1", 5), ("p2", 1), ("p3", 3), ("p3", 3)]:
            store.add_rating(session, store.add_episode(session, prompt, f"{prompt} {rating}", [1], ["x"]), rating,
                             scale=5)
        credited = store.add_episode(session, "p4", "pressed", [1], ["x"])
        store.set_token_rewards(credited, [1.0], [1.0])
        store.add_comparison(session, "p5", "x", "y", "tie")
        assert store.preference_pairs() == []
        assert store.why_no_pairs() == (
            "1 A/B answer, all ties or skips; 4 ratings over 3 prompts: pairs come from two completions of one "
            "prompt rated differently; 1 completion credited from keypresses over 1 prompt: pairs come from two "
            "completions of one prompt whose credited rewards differ by at least 0.5 press")
        assert "4 ratings left out (--no-ratings)" in store.why_no_pairs(include_ratings=False)
    out = tmp_path / "prefs.jsonl"
    assert cli.main(["feedback", "export", "--db", str(db), "--output", str(out)]) == 0
    said = capsys.readouterr().out
    assert said.startswith(f"wrote 0 preference pairs to {out} (1 A/B answer, all ties or skips; 4 ratings over 3")
    assert len(said.splitlines()) == 1
    assert cli.main(["feedback", "stats", "--db", str(db)]) == 0
    assert "preference pairs for export: 0 (1 A/B answer" in capsys.readouterr().out
