"""Checked-in training recipes, one JSON file per persona: plain TrainConfig fields plus a description."""

from __future__ import annotations

import json
from pathlib import Path

RECIPES_DIR = Path(__file__).parent


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.json"))


def load_recipe(name: str) -> dict:
    path = RECIPES_DIR / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"unknown recipe {name!r}; known recipes: {', '.join(recipe_names())}")
    recipe = json.loads(path.read_text())
    recipe.pop("description", None)
    return recipe
