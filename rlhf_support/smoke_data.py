"""smoke_data.py: the offline data of the smoke profile, a template grammar of SST-2-style sentences.

Not part of the lessons: the smoke profile (RLHF_PROFILE=smoke) trains on these sentences so that CI, and anyone
without the Hugging Face hub, can run every cell of the series in seconds. `make_smoke_sst2` returns rows
shaped like GLUE SST-2's; `profiles.build_smoke_dataset` writes them where the smoke profile reads its data.

Each template is filled in for a chosen label, so every label is right by construction; about 10% of the
sentences turn on a final 'but' clause and 10% on a negation, so sentiment is not a one-word lookup.
"""

from __future__ import annotations

import random

POSITIVE_ADJECTIVES = [
    "funny",
    "charming",
    "moving",
    "smart",
    "beautiful",
    "gripping",
    "witty",
    "touching",
    "fresh",
    "clever",
    "engaging",
    "delightful",
    "powerful",
    "thoughtful",
    "entertaining",
    "warm",
    "brilliant",
    "memorable",
    "inventive",
    "heartfelt",
    "stunning",
    "compelling",
    "lively",
    "sharp",
    "tender",
    "rich",
    "honest",
    "elegant",
    "satisfying",
    "graceful",
    "original",
    "wonderful",
    "enjoyable",
    "absorbing",
    "affecting",
    "assured",
    "vibrant",
    "haunting",
    "hilarious",
    "intelligent",
    "poignant",
    "exhilarating",
    "gorgeous",
    "sweet",
    "irresistible",
    "well-crafted",
]

NEGATIVE_ADJECTIVES = [
    "dull",
    "boring",
    "tedious",
    "flat",
    "clumsy",
    "lifeless",
    "predictable",
    "shallow",
    "bland",
    "pointless",
    "tiresome",
    "sloppy",
    "forced",
    "stale",
    "muddled",
    "lazy",
    "awkward",
    "hollow",
    "overlong",
    "silly",
    "mediocre",
    "pretentious",
    "incoherent",
    "joyless",
    "contrived",
    "sluggish",
    "dreary",
    "listless",
    "formulaic",
    "unfunny",
    "annoying",
    "painful",
    "messy",
    "trite",
    "bloated",
    "wooden",
    "limp",
    "labored",
    "lame",
    "uninspired",
    "forgettable",
    "ponderous",
    "heavy-handed",
    "witless",
    "mind-numbing",
]

# Degree words shared by both labels (they carry no sentiment on their own).
INTENSIFIERS = [
    "very",
    "truly",
    "rather",
    "quite",
    "remarkably",
    "genuinely",
    "utterly",
    "deeply",
    "thoroughly",
    "surprisingly",
    "consistently",
    "often",
    "so",
    "oddly",
    "almost",
    "fairly",
    "really",
]

# Adverbs placed before a verb phrase ("the film simply drags").
VERB_ADVERBS = ["simply", "mostly", "ultimately", "finally", "somehow", "largely", "often"]

# Neutral openers, followed by " , ".
OPENERS = [
    "in the end",
    "frankly",
    "at times",
    "for the most part",
    "on the whole",
    "all in all",
    "by the end",
    "as a whole",
    "in its own way",
    "for better or worse",
]

# Whole works, all grammatically singular.
FILM_SUBJECTS = [
    "the film",
    "this film",
    "the movie",
    "this movie",
    "the picture",
    "the director 's latest",
    "the director 's new film",
    "this comedy",
    "this drama",
    "the thriller",
    "this documentary",
    "the sequel",
    "the remake",
    "this romantic comedy",
    "the animated feature",
    "this period piece",
    "the adaptation",
    "the debut feature",
    "this horror movie",
    "the musical",
    "this road movie",
    "the war film",
]

# What a story can be "about", used in "this tale of ...".
TOPICS = [
    "first love",
    "two brothers",
    "a small town",
    "growing up",
    "a failed marriage",
    "a lonely detective",
    "an aging boxer",
    "a family in crisis",
    "life on the road",
    "friendship and loss",
    "war and memory",
    "a young musician",
    "a stolen painting",
    "an unlikely romance",
    "three sisters",
    "a summer in paris",
]

STORY_WORDS = ["tale", "story", "portrait", "study", "drama"]

# Parts of a film: (phrase after "the", is_plural).
SINGULAR_ASPECTS = [
    "script",
    "screenplay",
    "story",
    "plot",
    "dialogue",
    "pacing",
    "soundtrack",
    "score",
    "cinematography",
    "direction",
    "editing",
    "ending",
    "climax",
    "humor",
    "acting",
    "lead performance",
    "camera work",
    "premise",
    "cast",
    "writing",
    "production design",
    "final act",
]
PLURAL_ASPECTS = [
    "performances",
    "characters",
    "jokes",
    "visuals",
    "action sequences",
    "set pieces",
    "songs",
    "supporting players",
    "special effects",
    "battle scenes",
    "costumes",
    "flashbacks",
]
# Countable singular parts: need "a"/"an" in "with a wonderful cast".
COUNT_ASPECTS = {
    "script",
    "screenplay",
    "story",
    "plot",
    "soundtrack",
    "score",
    "ending",
    "climax",
    "lead performance",
    "premise",
    "cast",
    "final act",
}
# Parts that only make sense with a possessive or "its" in front.
EXTRA_PART_SUBJECTS = ["its second half", "its first hour", "its final stretch", "its opening scene"]

PEOPLE = [
    "the director",
    "the lead actress",
    "the young star",
    "the veteran actor",
    "the screenwriter",
    "the newcomer",
    "the ensemble",
    "the whole cast",
    "parker",
    "moreno",
    "kline",
    "hartley",
    "davis",
    "okafor",
]

ROLES = [
    "the grieving mother",
    "the villain",
    "a small-town cop",
    "the troubled son",
    "the hero",
    "an aging rock star",
    "the reluctant king",
    "a weary soldier",
    "the new teacher",
    "the best friend",
]

# Kinds of film, singular and plural.
FILM_NOUNS = [
    "film",
    "movie",
    "comedy",
    "drama",
    "thriller",
    "picture",
    "story",
    "debut",
    "tale",
    "romance",
    "adventure",
    "documentary",
    "effort",
    "entertainment",
    "experience",
]
FILM_NOUNS_PLURAL = ["films", "movies", "comedies", "dramas", "pictures", "thrillers"]

# Nouns that judge the whole film.
POSITIVE_VERDICTS = [
    "triumph",
    "delight",
    "gem",
    "treat",
    "pleasure",
    "marvel",
    "joy",
    "revelation",
    "winner",
    "masterpiece",
    "crowd-pleaser",
    "knockout",
]
NEGATIVE_VERDICTS = [
    "mess",
    "bore",
    "disaster",
    "chore",
    "misfire",
    "letdown",
    "dud",
    "slog",
    "embarrassment",
    "failure",
    "muddle",
    "waste of time",
]

# What a film can be full of / a triumph of / lacking.
POSITIVE_QUALITIES = [
    "style",
    "wit",
    "imagination",
    "craft",
    "heart",
    "intelligence",
    "charm",
    "grace",
    "invention",
    "feeling",
    "energy",
    "warmth",
    "humor and heart",
    "style and substance",
]
NEGATIVE_QUALITIES = [
    "cliches",
    "bad ideas",
    "half-baked ideas",
    "missed opportunities",
    "tired jokes",
    "stock characters",
    "empty gestures",
    "false notes",
    "dead air",
    "recycled gags",
]

# Complete predicates for a singular subject.
POSITIVE_VERB_PHRASES = [
    "works beautifully",
    "delights from start to finish",
    "charms the audience",
    "soars",
    "hits all the right notes",
    "earns its tears",
    "sparkles with wit",
    "grabs you from the first scene",
    "keeps you guessing",
    "rewards the viewer",
    "shines",
    "succeeds on every level",
    "moves at a brisk pace",
    "lingers in the mind",
    "makes you laugh out loud",
    "wins you over",
]
NEGATIVE_VERB_PHRASES = [
    "drags",
    "falls flat",
    "goes nowhere",
    "runs out of steam",
    "wears out its welcome",
    "plods along",
    "collapses under its own weight",
    "misses the mark",
    "feels like a chore",
    "bores the audience",
    "stumbles badly",
    "sags in the middle",
    "loses its way",
    "sinks into melodrama",
    "makes you check your watch",
]

# Base forms used with "does n't ..." and "never ...".
POSITIVE_BASE_VERBS = ["work", "succeed", "deliver", "charm", "satisfy", "add up", "come together", "take off"]
NEGATIVE_BASE_VERBS = [
    "drag",
    "disappoint",
    "bore",
    "fall apart",
    "lose its way",
    "run out of steam",
    "overstay its welcome",
]

COMPARISON_TARGETS = [
    "its predecessor",
    "the original",
    "most studio comedies",
    "anything else this year",
    "the book",
    "the director 's previous film",
    "you might expect",
    "the trailer suggests",
    "most films of its kind",
]

POSITIVE_SUPERLATIVES = [
    "best",
    "finest",
    "funniest",
    "smartest",
    "most moving",
    "most enjoyable",
    "most original",
    "most satisfying",
]
NEGATIVE_SUPERLATIVES = [
    "worst",
    "dullest",
    "weakest",
    "most tedious",
    "most forgettable",
    "most pointless",
    "clumsiest",
]
TIME_SPANS = ["of the year", "in years", "of the decade", "this season", "in recent memory"]

POSITIVE_RECOMMENDATIONS = ["see it", "do n't miss it", "a must-see", "worth every minute"]
NEGATIVE_RECOMMENDATIONS = ["skip it", "avoid it", "wait for the video", "not worth the ticket"]

# Words that soften the last clause of "x but ultimately y".
TURN_ADVERBS = ["ultimately", "finally", "still", "in the end", "somehow"]

# "an" before these even though the rule of thumb says "a", and vice versa.
AN_WORDS = {"honest", "hour"}
A_WORDS = {"unique", "one", "useful"}

# Smoke data: small helpers


def _article(word: str) -> str:
    """Return "a" or "an" for the word that follows."""
    first = word.split()[0]
    if first in AN_WORDS:
        return "an"
    if first in A_WORDS:
        return "a"
    return "an" if first[0] in "aeiou" else "a"


def _with_article(phrase: str) -> str:
    """Prefix a noun phrase with the right indefinite article."""
    return f"{_article(phrase)} {phrase}"


def _adjectives(positive: bool) -> list[str]:
    """Adjective list for a sentiment."""
    return POSITIVE_ADJECTIVES if positive else NEGATIVE_ADJECTIVES


def _adj(rng: random.Random, positive: bool) -> str:
    """One adjective of the given sentiment."""
    return rng.choice(_adjectives(positive))


def _adj_phrase(rng: random.Random, positive: bool, allow_pair: bool = True) -> str:
    """An adjective phrase: "dull", "very dull", "dull and lifeless"."""
    first = _adj(rng, positive)
    if rng.random() < 0.35:
        first = f"{rng.choice(INTENSIFIERS)} {first}"
    if allow_pair and rng.random() < 0.25:
        second = _adj(rng, positive)
        if second != first.split()[-1]:
            glue = rng.choice([" and ", " and ", " , even ", " and even "])
            return f"{first}{glue}{second}"
    return first


def _be(plural: bool) -> str:
    """Present-tense copula."""
    return "are" if plural else "is"


def _third_person(base: str) -> str:
    """Turn a base verb phrase into third-person singular ("add up" -> "adds up")."""
    verb, _, rest = base.partition(" ")
    if verb.endswith("y") and verb[-2] not in "aeiou":
        verb = verb[:-1] + "ies"
    elif verb.endswith(("s", "sh", "ch", "x")):
        verb += "es"
    else:
        verb += "s"
    return f"{verb} {rest}".strip()


def _film_subject(rng: random.Random) -> str:
    """A singular subject naming the whole film."""
    if rng.random() < 0.15:
        return f"this {rng.choice(STORY_WORDS)} of {rng.choice(TOPICS)}"
    return rng.choice(FILM_SUBJECTS)


def _part_subject(rng: random.Random) -> tuple[str, bool]:
    """A subject naming part of a film, with its grammatical number."""
    roll = rng.random()
    if roll < 0.12:
        return rng.choice(EXTRA_PART_SUBJECTS), False
    plural = roll < 0.45
    noun = rng.choice(PLURAL_ASPECTS if plural else SINGULAR_ASPECTS)
    owner = rng.choice(["the", "the", "its", "the film 's", "the movie 's"])
    return f"{owner} {noun}", plural


def _aspect_items(rng: random.Random, positive: bool, intensify: bool = False) -> str:
    """One or two adjective + aspect phrases: "sharp dialogue and a tender score"."""
    count = 2 if rng.random() < 0.5 else 1
    items = []
    for i, noun in enumerate(rng.sample(SINGULAR_ASPECTS + PLURAL_ASPECTS, count)):
        adjective = _adj_phrase(rng, positive, allow_pair=False) if intensify and i == 0 else _adj(rng, positive)
        phrase = f"{adjective} {noun}"
        items.append(_with_article(phrase) if noun in COUNT_ASPECTS else phrase)
    return " and ".join(items)


def _with_tail(rng: random.Random, positive: bool) -> str:
    """Optional " , with witty dialogue and warm performances" extension."""
    if rng.random() >= 0.35:
        return ""
    return f" , with {_aspect_items(rng, positive)}"


def _opener(rng: random.Random) -> str:
    """Optional neutral opener such as "in the end , "."""
    return f"{rng.choice(OPENERS)} , " if rng.random() < 0.2 else ""


def _end(rng: random.Random) -> str:
    """Sentence-final punctuation: mostly " .", rarely " !", sometimes none (fragments)."""
    roll = rng.random()
    if roll < 0.8:
        return " ."
    return " !" if roll < 0.84 else ""


def _verdict(rng: random.Random, positive: bool) -> str:
    """A verdict noun phrase with article: "a triumph of style", "a dull , lifeless mess"."""
    noun = rng.choice(POSITIVE_VERDICTS if positive else NEGATIVE_VERDICTS)
    roll = rng.random()
    if roll < 0.35:
        quality = rng.choice(POSITIVE_QUALITIES if positive else NEGATIVE_QUALITIES)
        return f"{_with_article(noun)} of {quality}"
    if roll < 0.6:
        return _with_article(f"{_adj(rng, positive)} , {_adj(rng, positive)} {noun}")
    if roll < 0.8:
        return _with_article(f"{_adj(rng, positive)} {noun}")
    return _with_article(noun)


def _clause(rng: random.Random, positive: bool) -> str:
    """A short full clause of one sentiment (used inside mixed sentences)."""
    roll = rng.random()
    if roll < 0.45:
        subject, plural = _part_subject(rng)
        return f"{subject} {_be(plural)} {_adj_phrase(rng, positive, allow_pair=False)}"
    if roll < 0.75:
        return f"{_film_subject(rng)} is {_adj_phrase(rng, positive, allow_pair=False)}"
    phrases = POSITIVE_VERB_PHRASES if positive else NEGATIVE_VERB_PHRASES
    return f"{_film_subject(rng)} {rng.choice(phrases)}"


# Smoke data: templates: each takes (rng, positive) and returns a sentence of that label


def _t_copula(rng: random.Random, positive: bool) -> str:
    """ "the film is truly charming ." and "the film is full of wit ."."""
    subject = _film_subject(rng)
    if rng.random() < 0.15:
        quality = rng.choice(POSITIVE_QUALITIES if positive else NEGATIVE_QUALITIES)
        return f"{_opener(rng)}{subject} is full of {quality}{_end(rng)}"
    body = _adj_phrase(rng, positive)
    if rng.random() < 0.2:
        phrases = POSITIVE_VERB_PHRASES if positive else NEGATIVE_VERB_PHRASES
        body += f" and {rng.choice(phrases)}"
    return f"{_opener(rng)}{subject} is {body}{_with_tail(rng, positive)}{_end(rng)}"


def _t_verb(rng: random.Random, positive: bool) -> str:
    """ "the movie simply drags ." and "the film lacks wit and heart ."."""
    subject = _film_subject(rng)
    if not positive and rng.random() < 0.15:
        return f"{_opener(rng)}{subject} lacks {rng.choice(POSITIVE_QUALITIES)}{_end(rng)}"
    adverb = f"{rng.choice(VERB_ADVERBS)} " if rng.random() < 0.3 else ""
    phrases = POSITIVE_VERB_PHRASES if positive else NEGATIVE_VERB_PHRASES
    return f"{_opener(rng)}{subject} {adverb}{rng.choice(phrases)}{_with_tail(rng, positive)}{_end(rng)}"


def _t_fragment(rng: random.Random, positive: bool) -> str:
    """Noun-phrase fragments: "a triumph of style", "a charming comedy that soars"."""
    roll = rng.random()
    if roll < 0.5:
        return _verdict(rng, positive)
    noun_phrase = _with_article(f"{_adj_phrase(rng, positive, allow_pair=False)} {rng.choice(FILM_NOUNS)}")
    if roll < 0.8:
        phrases = POSITIVE_VERB_PHRASES if positive else NEGATIVE_VERB_PHRASES
        return f"{noun_phrase} that {rng.choice(phrases)}"
    return f"{noun_phrase} about {rng.choice(TOPICS)}"


def _t_its(rng: random.Random, positive: bool) -> str:
    """ "it 's very funny ." / "it 's a mess ." / "it 's the kind of film that drags ."."""
    roll = rng.random()
    if roll < 0.4:
        body = _adj_phrase(rng, positive)
    elif roll < 0.75:
        body = _verdict(rng, positive)
    else:
        phrases = POSITIVE_VERB_PHRASES if positive else NEGATIVE_VERB_PHRASES
        body = f"the kind of {rng.choice(FILM_NOUNS)} that {rng.choice(phrases)}"
    return f"{_opener(rng)}it 's {body}{_end(rng)}"


def _t_aspect(rng: random.Random, positive: bool) -> str:
    """ "the performances are wonderful ." / "its second half is tedious"."""
    subject, plural = _part_subject(rng)
    return f"{_opener(rng)}{subject} {_be(plural)} {_adj_phrase(rng, positive)}{_end(rng)}"


def _t_performer(rng: random.Random, positive: bool) -> str:
    """ "parker gives a touching performance" / "the newcomer is wooden as the villain"."""
    person = rng.choice(PEOPLE)
    roll = rng.random()
    if roll < 0.45:
        adjective = _adj_phrase(rng, positive, allow_pair=False)
        return f"{person} gives {_with_article(adjective)} performance{_end(rng)}"
    if roll < 0.8:
        return f"{person} is {_adj_phrase(rng, positive, allow_pair=False)} as {rng.choice(ROLES)}{_end(rng)}"
    quality = rng.choice(POSITIVE_QUALITIES) if positive else rng.choice(["nothing", "little", "nothing new"])
    return f"{person} brings {quality} to the role{_end(rng)}"


def _t_comparison(rng: random.Random, positive: bool) -> str:
    """ "the sequel is more charming than its predecessor ." (or "less funny than" = negative)."""
    if positive or rng.random() < 0.7:
        degree = f"more {_adj(rng, positive)}"
    else:
        degree = f"less {_adj(rng, True)}"
    return f"{_film_subject(rng)} is {degree} than {rng.choice(COMPARISON_TARGETS)}{_end(rng)}"


def _t_superlative(rng: random.Random, positive: bool) -> str:
    """ "one of the best comedies of the year"."""
    superlative = rng.choice(POSITIVE_SUPERLATIVES if positive else NEGATIVE_SUPERLATIVES)
    phrase = f"one of the {superlative} {rng.choice(FILM_NOUNS_PLURAL)} {rng.choice(TIME_SPANS)}"
    if rng.random() < 0.5:
        return phrase
    return f"{_film_subject(rng)} is {phrase}{_end(rng)}"


def _t_with(rng: random.Random, positive: bool) -> str:
    """ "with sharp dialogue and tender performances"."""
    return f"with {_aspect_items(rng, positive, intensify=True)}"


def _t_dash(rng: random.Random, positive: bool) -> str:
    """ "the film is gorgeous -- a triumph of style ." / "... -- skip it ."."""
    head = _clause(rng, positive)
    if rng.random() < 0.5:
        tail = _verdict(rng, positive)
    else:
        tail = rng.choice(POSITIVE_RECOMMENDATIONS if positive else NEGATIVE_RECOMMENDATIONS)
    return f"{head} -- {tail}{_end(rng)}"


def _follow_up(rng: random.Random, positive: bool) -> str:
    """A second clause that refers back to the film: "it 's oddly moving", "the cast is wooden"."""
    roll = rng.random()
    if roll < 0.5:
        subject, plural = _part_subject(rng)
        return f"{subject} {_be(plural)} {_adj_phrase(rng, positive, allow_pair=False)}"
    if roll < 0.75:
        return f"it 's {_adj_phrase(rng, positive, allow_pair=False)}"
    phrases = POSITIVE_VERB_PHRASES if positive else NEGATIVE_VERB_PHRASES
    return f"it {rng.choice(phrases)}"


def _t_but(rng: random.Random, positive: bool) -> str:
    """Mixed sentence where the final clause decides: "x is dull , but y is wonderful ."."""
    glue = rng.choice([" , but ", " , but ", " -- but ", " , yet "])
    return f"{_clause(rng, not positive)}{glue}{_follow_up(rng, positive)}{_end(rng)}"


def _t_although(rng: random.Random, positive: bool) -> str:
    """ "although the plot is thin , the performances are wonderful ."."""
    return f"although {_clause(rng, not positive)} , {_follow_up(rng, positive)}{_end(rng)}"


def _t_adj_but(rng: random.Random, positive: bool) -> str:
    """Fragment like "charming but ultimately hollow"."""
    return f"{_adj(rng, not positive)} but {rng.choice(TURN_ADVERBS)} {_adj(rng, positive)}"


def _negated(rng: random.Random, positive: bool) -> str:
    """A negated opposite-sentiment phrase: "is not boring" (positive), "does n't work" (negative)."""
    roll = rng.random()
    # Skip "unfunny" etc. so we never produce double negatives like "not unfunny".
    opposite = rng.choice([a for a in _adjectives(not positive) if not a.startswith("un")])
    if roll < 0.3:
        negator = rng.choice(["is not", "is n't", "is never", "is hardly"])
        return f"{_film_subject(rng)} {negator} {opposite}{_end(rng)}"
    if roll < 0.55:
        bases = NEGATIVE_BASE_VERBS if positive else POSITIVE_BASE_VERBS
        base = rng.choice(bases)
        if rng.random() < 0.5:
            return f"{_film_subject(rng)} does n't {base}{_end(rng)}"
        return f"{_film_subject(rng)} never {_third_person(base)}{_end(rng)}"
    if roll < 0.75:
        return f"far from {opposite}"
    if roll < 0.9:
        return f"there 's nothing {opposite} about it{_end(rng)}"
    subject, plural = _part_subject(rng)
    return f"{subject} {'are not' if plural else 'is not'} {opposite}{_end(rng)}"


def _t_negation(rng: random.Random, positive: bool) -> str:
    """A negation, half the time followed by a plain clause of the same sentiment."""
    text = _negated(rng, positive)
    if rng.random() < 0.5:
        return text
    text = text.rstrip(" .!")
    roll = rng.random()
    if roll < 0.4:
        return f"{text} -- it 's {_adj_phrase(rng, positive, allow_pair=False)}{_end(rng)}"
    if roll < 0.7:
        return f"{text} , and {_follow_up(rng, positive)}{_end(rng)}"
    return f"{text} -- {_verdict(rng, positive)}{_end(rng)}"


# (template, weight). Mixed sentences ~10%, negations ~10% of the data.
TEMPLATES = [
    (_t_copula, 14),
    (_t_verb, 10),
    (_t_fragment, 10),
    (_t_its, 6),
    (_t_aspect, 10),
    (_t_performer, 7),
    (_t_comparison, 5),
    (_t_superlative, 5),
    (_t_with, 5),
    (_t_dash, 6),
    (_t_but, 6),
    (_t_although, 2),
    (_t_adj_but, 2),
    (_t_negation, 9),
]


def _normalize(text: str) -> str:
    """SST-2 spacing: lower case, single spaces, one trailing space."""
    return " ".join(text.lower().split()) + " "


MIN_WORDS, MAX_WORDS = 3, 25


def make_sentence(rng: random.Random, label: int) -> str:
    """One SST-2-style sentence (3-25 tokens) whose sentiment is ``label`` (1 positive, 0 negative)."""
    functions = [fn for fn, _ in TEMPLATES]
    weights = [w for _, w in TEMPLATES]
    while True:
        template = rng.choices(functions, weights=weights, k=1)[0]
        sentence = _normalize(template(rng, bool(label)))
        if MIN_WORDS <= len(sentence.split()) <= MAX_WORDS:
            return sentence


def _unique_sentence(rng: random.Random, label: int, seen: set[str], max_tries: int = 1000) -> str:
    """Draw sentences of ``label`` until one not in ``seen`` comes up, and record it."""
    for _ in range(max_tries):
        sentence = make_sentence(rng, label)
        if sentence not in seen:
            seen.add(sentence)
            return sentence
    raise RuntimeError("grammar exhausted: ask for fewer sentences")


def make_smoke_sst2(n_train: int = 2000, n_validation: int = 200, seed: int = 0) -> dict[str, list[dict]]:
    """Build an offline, SST-2-shaped sentiment dataset from a template grammar.

    Returns {"train": rows, "validation": rows}; each row is
    {"idx": int, "sentence": str, "label": int} with label 1 = positive,
    0 = negative, exactly as in GLUE SST-2 (lower case, tokens separated by
    single spaces, one trailing space). Labels are balanced and shuffled; no
    sentence occurs twice (so no validation sentence is in train). The same
    arguments always give the same data (only ``random.Random(seed)`` is used).
    """
    if n_train < 0 or n_validation < 0:
        raise ValueError("n_train and n_validation must be >= 0")
    rng = random.Random(seed)
    seen: set[str] = set()
    splits: dict[str, list[dict]] = {}
    for name, size in (("train", n_train), ("validation", n_validation)):
        labels = [i % 2 for i in range(size)]
        rng.shuffle(labels)
        splits[name] = [
            {"idx": idx, "sentence": _unique_sentence(rng, label, seen), "label": label}
            for idx, label in enumerate(labels)
        ]
    return splits
