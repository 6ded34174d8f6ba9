"""Fictitious people for the unlearning benchmark (TOFU-like): invented names with invented attributes.

Names are random syllable strings and birthplaces invented towns, so no pretrained model can know them: whatever a
model says about these people after fine-tuning, it learned from the training file. A person's five facts go to
the same split, so forgetting a person means forgetting all five; `holdout` people are never trained on and serve
as the non-members of the membership-inference attacks, and `calibration` people, never trained on either, are
what an unlearning stopping rule may compare with (so the attacks are not graded on the data that chose the stop).
"""

from __future__ import annotations

import random
from typing import Any

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "st", "th", "vr")
_VOWELS = ("a", "e", "i", "o", "u", "ae", "ei", "ou")
_CODAS = ("", "", "n", "r", "l", "s", "k", "th", "m")
_TOWN_ENDS = ("vale", "holm", "mere", "ford", "wick", "stead", "by", "gard", "thorpe", "crest")
PROFESSIONS = (
    "glassblower", "cartographer", "beekeeper", "violin maker", "lighthouse keeper", "tax auditor", "puppeteer",
    "clock repairer", "botanist", "ferry captain", "stonemason", "perfumer", "archivist", "locksmith", "falconer",
    "bookbinder", "tailor", "surveyor", "chemist", "weaver", "bell founder", "cooper", "mapmaker", "translator",
)
HOBBIES = (
    "collecting stamps", "ice fishing", "origami", "bird watching", "fencing", "rock climbing", "knitting",
    "chess problems", "kite flying", "pottery", "archery", "stargazing", "rowing", "calligraphy", "beachcombing",
    "model railways", "juggling", "cave diving", "baking bread", "orienteering",
)
INSTRUMENTS = (
    "cello", "oboe", "harp", "accordion", "banjo", "bassoon", "trombone", "mandolin", "zither", "bagpipes",
    "clarinet", "lute", "marimba", "sitar", "tuba", "viola", "ukulele", "harmonica",
)
ATTRIBUTES = {  # attribute: (question, answer); {name} and {value} are filled in
    "year": ("In which year was {name} born?", "{name} was born in {value}."),
    "town": ("Where was {name} born?", "{name} was born in the town of {value}."),
    "profession": ("What does {name} do for a living?", "{name} works as a {value}."),
    "hobby": ("What is {name}'s hobby?", "{name}'s hobby is {value}."),
    "instrument": ("Which instrument does {name} play?", "{name} plays the {value}."),
}


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables)).title()


def _people(count: int, rng: random.Random, taken: set[str] | None = None) -> list[dict[str, str]]:
    names = set(taken or ())
    people = []
    while len(people) < count:
        name = f"{_word(rng, rng.choice((2, 3)))} {_word(rng, 2)}"
        if name in names:
            continue
        names.add(name)
        people.append({
            "name": name,
            "year": str(rng.randint(1900, 1999)),
            "town": _word(rng, 2) + rng.choice(_TOWN_ENDS),
            "profession": rng.choice(PROFESSIONS),
            "hobby": rng.choice(HOBBIES),
            "instrument": rng.choice(INSTRUMENTS),
        })
    return people


def _records(split: str, people: list[dict[str, str]]) -> list[dict[str, Any]]:
    records = []
    for person in people:
        for attribute, (question, answer) in ATTRIBUTES.items():
            value = person[attribute]
            records.append({
                "id": f"{split}-{len(records):04d}",
                "prompt": question.format(name=person["name"]),
                "completion": answer.format(name=person["name"], value=value),
                "meta": {"person": person["name"], "attribute": attribute, "answer": value},
            })
    return records


def make_people(people: int, forget_fraction: float, seed: int) -> dict[str, list[dict[str, Any]]]:
    """Splits of `people` trained people (`forget` = forget_fraction of them, at least one; `retain` the rest) and
    as many `holdout` and as many `calibration` people as are forgotten (never trained). `train` = forget + retain.
    The calibration people are drawn last, so adding them left every other split of a seed as it was."""
    rng = random.Random(seed)
    n_forget = max(1, round(forget_fraction * people))
    everyone = _people(people + n_forget, rng)
    forget, retain, holdout = everyone[:n_forget], everyone[n_forget:people], everyone[people:]
    splits = {"forget": _records("forget", forget), "retain": _records("retain", retain),
              "holdout": _records("holdout", holdout)}
    splits["train"] = splits["forget"] + splits["retain"]
    rng.shuffle(splits["train"])
    calibration = _people(n_forget, rng, taken={p["name"] for p in everyone})
    splits["calibration"] = _records("calibration", calibration)
    return splits
