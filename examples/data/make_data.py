"""Write the small data files the README and the docs read: demonstrations and preference pairs.

Every line is hand-written: a movie-review opening (from the ``movie-reviews`` prompt set),
a warm, specific continuation and a flat or hostile one. The files are committed; run this
script again only after editing the lists below::

    python examples/data/make_data.py

* ``demos.jsonl``: ``{"prompt", "completion"}`` per line, for ``textenv sft``;
* ``prefs.jsonl`` and ``heldout.jsonl``: ``{"prompt", "chosen", "rejected"}`` per line (the
  preference format TRL and ``datasets`` use), for ``textenv rm train`` and ``textenv rm eval``.
  The held-out pairs use prompts that no training pair uses.
"""

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (prompt, chosen, rejected): chosen is positive and says why; rejected is negative or empty.
EXAMPLES = [
    ("This movie was", " a delight: warm, funny and beautifully acted.",
     " a waste of time. Nothing happens and nobody cares."),
    ("I watched this film last night and", " I am still smiling. It is clever and kind.",
     " I fell asleep before the halfway point."),
    ("The acting in this movie", " is superb; the two leads share a real chemistry.",
     " is wooden, and the leads look bored in every scene."),
    ("From the opening scene, the director", " shows a sure hand and a great eye for detail.",
     " loses control of the story and never gets it back."),
    ("I went into this film expecting", " little and came out moved and happy.",
     " a good time and left angry and disappointed."),
    ("The plot of this movie", " is simple but told with great care and heart.",
     " makes no sense, and the twists are lazy."),
    ("Honestly, the best part of the film was", " the ending, which is earned and lovely.",
     " the moment the credits started."),
    ("My kids dragged me to see this, and", " we all loved it. A wonderful family film.",
     " I regret every minute and every dollar."),
    ("The soundtrack alone", " is worth the ticket: joyful and unforgettable.",
     " is loud, cheap and grating."),
    ("I have seen a lot of westerns, but this one", " is among the best: tense, beautiful and wise.",
     " is the dullest of them all."),
    ("After all the hype, I finally saw it and", " it lives up to every word of praise.",
     " it is a hollow, tiresome mess."),
    ("The lead actress gives a performance that", " is brave, tender and completely convincing.",
     " is flat and forgettable."),
    ("This sequel", " is even better than the original, with more heart and better jokes.",
     " is a tired copy of the original with none of its charm."),
    ("As a fan of the original book, I thought the film", " captured its spirit perfectly.",
     " betrayed everything that made the book good."),
    ("The special effects in this movie", " are stunning and always serve the story.",
     " are cheap and distracting."),
    ("Two hours of my life, and", " I would happily spend them again. A great film.",
     " I want them back. Awful."),
    ("The dialogue in this picture", " is sharp, witty and full of warmth.",
     " is clumsy and painful to sit through."),
    ("I rented this on a rainy Sunday and", " it was the perfect, cozy treat.",
     " it made a gloomy day even worse."),
    ("The cinematography is", " gorgeous; every frame could hang on a wall.",
     " ugly, murky and badly lit."),
    ("Critics have called this film", " a triumph, and they are right.",
     " a disaster, and they are right."),
    ("The ending of this movie", " is surprising, moving and perfectly judged.",
     " is rushed, silly and a real letdown."),
    ("This documentary about", " ordinary heroes is inspiring and beautifully made.",
     " nothing in particular is boring and smug."),
    ("I laughed, I cried, and", " I loved every minute of it.",
     " then I hated myself for buying a ticket."),
    ("The villain in this film", " is brilliant: menacing, funny and strangely human.",
     " is a dull cartoon with no motive."),
    ("Compared to the director's last movie, this one", " is richer, funnier and more assured.",
     " is a sad step down in every way."),
    ("My wife and I saw this on our anniversary and", " it was a lovely, romantic evening.",
     " we argued about whose awful idea it was."),
    ("The first half of the movie", " is a joy, and the second half is even better.",
     " is slow, and the second half is worse."),
    ("This horror film", " is scary, smart and a lot of fun.",
     " is neither scary nor fun, just stupid."),
    ("I can't stop thinking about this movie because", " it is so beautiful and so kind.",
     " it was so bad it gave me a headache."),
    ("The cast of this comedy", " is wonderful, and every joke lands.",
     " is wasted on jokes that never land."),
    ("Watching this film felt like", " a warm hug from an old friend.",
     " a punishment for something I did not do."),
    ("The screenplay", " is a gem: clever, tight and generous to its characters.",
     " is a mess of clichés and dead ends."),
    ("This animated feature", " is charming, gorgeous and full of heart.",
     " is ugly, noisy and empty."),
    ("I saw this at a film festival and", " the whole room cheered at the end.",
     " half the room walked out early."),
    ("The pacing of this thriller", " is excellent; I was gripped from start to end.",
     " is awful; I checked my watch every ten minutes."),
    ("This remake of a classic", " honors the original and adds something fresh.",
     " ruins a classic with lazy choices."),
    ("Every scene with the lead actor", " is a pleasure; he is funny and touching.",
     " is a chore; he seems to hate being there."),
    ("The story follows a young woman who", " finds her courage, and it is a joy to watch.",
     " does nothing interesting for two long hours."),
    ("I expected very little from this movie, but", " it won me over completely. Lovely.",
     " it still managed to disappoint me."),
    ("The costumes and sets", " are lavish and lovingly made.",
     " look cheap and fake."),
    ("This war drama", " is powerful, honest and deeply moving.",
     " is shallow, loud and dishonest."),
    ("By the time the credits rolled, I", " was grinning from ear to ear.",
     " was furious at the waste."),
    ("The romance at the heart of this film", " is sweet, believable and touching.",
     " is forced and has no spark at all."),
    ("This low-budget indie", " is a small wonder, full of wit and warmth.",
     " is dull, ugly and pointless."),
]

HELDOUT = 12
"""The last pairs, with prompts of their own, are held out for ``textenv rm eval``."""


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    print(f"{path.relative_to(HERE.parent.parent)}: {len(rows)} lines")


def main() -> None:
    pairs = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in EXAMPLES]
    write_jsonl(HERE / "prefs.jsonl", pairs[:-HELDOUT])
    write_jsonl(HERE / "heldout.jsonl", pairs[-HELDOUT:])
    write_jsonl(HERE / "demos.jsonl", [{"prompt": p, "completion": c} for p, c, _ in EXAMPLES])


if __name__ == "__main__":
    main()
