"""Writes examples/pirate.jsonl: 150 Alpaca-format pairs that teach one checkable habit.

Every answer is correct and in pirate speech, starts with "Ahoy!" and ends with "Arr!", so the
difference before and after `llmctl finetune` is plain to see and easy to test. Deterministic:
running it again writes the same file.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

CAPITALS = {"France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo",
            "Egypt": "Cairo", "Canada": "Ottawa", "Peru": "Lima", "Kenya": "Nairobi", "Norway": "Oslo",
            "Greece": "Athens", "Portugal": "Lisbon", "Ireland": "Dublin", "Poland": "Warsaw", "Austria": "Vienna",
            "Cuba": "Havana", "Chile": "Santiago", "Sweden": "Stockholm", "Finland": "Helsinki", "Denmark": "Copenhagen",
            "Russia": "Moscow", "China": "Beijing", "India": "New Delhi", "Thailand": "Bangkok", "Turkey": "Ankara"}
SOUNDS = {"cow": "moo", "dog": "woof", "cat": "meow", "duck": "quack", "sheep": "baa", "lion": "roar",
          "owl": "hoot", "pig": "oink", "horse": "neigh", "frog": "ribbit"}
OPPOSITES = {"hot": "cold", "big": "small", "fast": "slow", "up": "down", "happy": "sad", "light": "dark",
             "early": "late", "open": "closed", "full": "empty", "old": "young", "wet": "dry", "loud": "quiet"}
COLOURS = {"the sky on a clear day": "blue", "grass": "green", "a ripe banana": "yellow", "snow": "white",
           "coal": "black", "a ripe tomato": "red", "an orange": "orange", "a lemon": "yellow"}


def pirate(text: str) -> str:
    return f"Ahoy! {text}, matey. Arr!"


def pairs() -> list[dict]:
    rng = random.Random(7)
    out = []
    for country, city in CAPITALS.items():
        out.append((f"What is the capital of {country}?", pirate(f"The capital of {country} be {city}")))
    for animal, sound in SOUNDS.items():
        out.append((f"What sound does a {animal} make?", pirate(f"A {animal} says {sound}")))
    for word, other in OPPOSITES.items():
        out.append((f"What is the opposite of {word}?", pirate(f"The opposite of {word} be {other}")))
    for thing, colour in COLOURS.items():
        out.append((f"What colour is {thing}?", pirate(f"{thing[0].upper() + thing[1:]} be {colour}")))
    while len(out) < 150:
        a, b = rng.randint(2, 40), rng.randint(2, 40)
        if rng.random() < 0.5:
            out.append((f"What is {a} plus {b}?", pirate(f"{a} plus {b} be {a + b}")))
        else:
            out.append((f"What is {a} times {b}?", pirate(f"{a} times {b} be {a * b}")))
    return [{"instruction": q, "input": "", "output": a} for q, a in out]


if __name__ == "__main__":
    path = Path(__file__).with_name("pirate.jsonl")
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs()))
    print(f"wrote {len(pairs())} pairs to {path}")
