"""Real facts about countries (capital, region, demonym) from the `countryinfo` package, a fraction made wrong.

A wrong fact takes the value of the same relation from another country ("The capital of Peru is Oslo."), so it is
fluent and plausible in form and only knowledge can tell it apart. Train, dev and test ask disjoint questions;
the test facts are clean, so accuracy there measures what the model knows (and kept) about countries it was not
trained on, and memorised noise what wrong facts it took in.
"""

from __future__ import annotations

import random
from typing import Any

from forgetune.errors import ForgetuneError

RELATIONS = {
    "capital": ("What is the capital of {country}?", "The capital of {country} is {value}."),
    "region": ("In which region of the world is {country}?", "{country} is in {value}."),
    "demonym": ("What is a person from {country} called?", "A person from {country} is called {value}."),
}


def load_facts() -> list[tuple[str, str, str]]:
    """(country, relation, value) for every country the package knows the relation of, in a fixed order."""
    try:
        import countryinfo
    except ImportError:
        raise ForgetuneError("the facts benchmark needs the countryinfo package: pip install countryinfo") from None
    facts = []
    for country in countryinfo.all_countries():
        values = {"capital": country.capital(), "region": country.region(), "demonym": country.demonym()}
        facts += [(country.name(), rel, value) for rel, value in values.items() 
                  if isinstance(value, str) and value and "/" not in value]
    return sorted(set(facts))


def make_facts(n_train: int, n_dev: int, n_test: int, noise: float, seed: int) -> dict[str, list[dict[str, Any]]]:
    """Train, dev and test drawn without replacement from one pool holding one fact per question (the first value
    in sorted order of a country listed twice), so no prompt is in two splits."""
    first: dict[tuple[str, str], tuple[str, str, str]] = {}
    for fact in load_facts():
        first.setdefault(fact[:2], fact)
    facts = list(first.values())
    if n_train + n_dev + n_test > len(facts):
        raise ForgetuneError(f"only {len(facts)} facts; ask for fewer (--n-train {n_train}, --n-test {n_test})")
    rng = random.Random(seed)
    rng.shuffle(facts)
    values: dict[str, list[str]] = {}
    for _, rel, value in facts:
        values.setdefault(rel, []).append(value)
    corrupted = set(rng.sample(range(n_train), round(noise * n_train)))

    def record(split: str, i: int, fact: tuple[str, str, str], noisy: bool = False) -> dict[str, Any]:
        country, rel, value = fact
        question, answer = RELATIONS[rel]
        shown = rng.choice([v for v in values[rel] if v != value]) if noisy else value
        return {"id": f"{split}-{i:04d}", "prompt": question.format(country=country),
                "completion": answer.format(country=country, value=shown),
                "meta": {"corrupted": noisy, "clean_completion": answer.format(country=country, value=value),
                         "relation": rel}}

    dev_end = n_train + n_dev
    return {"train": [record("train", i, f, i in corrupted) for i, f in enumerate(facts[:n_train])],
            "dev": [record("dev", i, f) for i, f in enumerate(facts[n_train:dev_end])],
            "test": [record("test", i, f) for i, f in enumerate(facts[dev_end : dev_end + n_test])]}
