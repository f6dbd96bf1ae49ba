"""A constitution as data: the principles that Constitutional AI critiques and revises by, and judges pairs by.

Usage:
    from minirlhf.constitution import load_constitution
    constitution = load_constitution("configs/constitution.yaml")    # ConfigError naming the entry if malformed
    principle = constitution.choose(random.Random(seed))             # one principle per example, seeded
    principle.critique_request, principle.revision_request, principle.choice_question

Bai et al. 2022 ("Constitutional AI: Harmlessness from AI Feedback", Sec. 3.1 and 4.1): for each red-team prompt
the model answers, is asked to critique its answer by one principle's critique request, then to revise it by the
same principle's revision request; a principle is drawn at random per example. For AI feedback, a feedback model is
asked which of two responses better follows a principle (`choice_question`). Few-shot examples (a prompt, a
first answer, its critique and its revision) are put before the request so a small model sees the format.

The file (configs/constitution.yaml):
    principles:
      - name: harmless
        critique_request: "Identify ways in which the assistant's last response is harmful ..."
        revision_request: "Rewrite the assistant's response to remove all harmful ..."
        choice_question: "Which response is less harmful?"
    few_shot:
      - prompt: "..."
        response: "..."
        critique: "..."
        revision: "..."
A missing field, an empty principle list, an unknown key or a repeated name fails at load with one line naming the
entry ("configs/x.yaml: principles[1] ('honest'): revision_request: field required").
"""

from __future__ import annotations

import random
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from minirlhf.config import ConfigError, read_config_file

DEFAULT = Path(__file__).resolve().parent.parent / "configs" / "constitution.yaml"


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class Principle(_Entry):
    name: str = Field(min_length=1)
    critique_request: str = Field(min_length=1)
    revision_request: str = Field(min_length=1)
    choice_question: str = Field(min_length=1, description="what a feedback model is asked of two responses")


class Example(_Entry):
    """A worked critique and revision, shown before the request."""

    prompt: str = Field(min_length=1)
    response: str = Field(min_length=1)
    critique: str = Field(min_length=1)
    revision: str = Field(min_length=1)


class Constitution(_Entry):
    principles: list[Principle] = Field(min_length=1)
    few_shot: list[Example] = Field(default_factory=list)

    @field_validator("principles")
    @classmethod
    def _names_unique(cls, principles: list[Principle]) -> list[Principle]:
        names = [p.name for p in principles]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"principle name(s) {', '.join(repeated)} appear more than once; names must be unique")
        return principles

    def choose(self, rng: random.Random) -> Principle:
        """One principle, drawn uniformly (Bai et al. draw one per example)."""
        return self.principles[rng.randrange(len(self.principles))]


def _where(tree: dict, loc: tuple) -> str:
    """'principles[1] (\\'honest\\'): revision_request' from a pydantic location, naming the entry when it has one."""
    parts, node = [], tree
    for part in loc:
        if isinstance(part, int):
            parts[-1] += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            if isinstance(node, dict) and node.get("name"):
                parts[-1] += f" ({node['name']!r})"
        else:
            parts.append(str(part))
            node = node.get(part) if isinstance(node, dict) else None
    return ": ".join(parts) if parts else "<top level>"


def constitution_path(name: str) -> Path:
    """The constitution file: as given, or relative to the repository the package sits in (so the default
    configs/constitution.yaml resolves from any working directory)."""
    path = Path(name).expanduser()
    if path.is_file() or path.is_absolute():
        return path
    return DEFAULT.parents[1] / name


def load_constitution(path: str | Path = DEFAULT) -> Constitution:
    """The constitution in `path`, or ConfigError naming the file and every bad entry on one line."""
    path = Path(path)
    tree = read_config_file(path)
    try:
        return Constitution.model_validate(tree)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            what = "unknown key (allowed: " + ", ".join(_allowed(e["loc"])) + ")" \
                if e["type"] == "extra_forbidden" else e["msg"]
            problems.append(f"{_where(tree, e['loc'])}: {what}")
        raise ConfigError(f"{path}: " + "; ".join(problems)) from None


def _allowed(loc: tuple) -> list[str]:
    """The keys allowed where an unknown key stood."""
    model: type[BaseModel] = Constitution
    if loc and loc[0] == "principles" and len(loc) > 2:
        model = Principle
    elif loc and loc[0] == "few_shot" and len(loc) > 2:
        model = Example
    return sorted(model.model_fields)
