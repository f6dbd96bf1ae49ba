"""The HH-RLHF loader: Anthropic's preference dialogues as (prompt, chosen, rejected) pairs.

Usage:
    from minirlhf.data.hh import load_hh, to_records, train_test_split_by_rows
    loaded = load_hh("../shared/data/hh-rlhf/harmless-base-test.first1800.jsonl.gz")   # a local file
    loaded = load_hh("../shared/data/hh-rlhf")                                          # a folder of them
    loaded = load_hh("Anthropic/hh-rlhf", data_dir="harmless-base", split="test")       # the hub (network)
    print(loaded.summary())             # "1800 rows: 1794 pairs, 6 rejected: row 86: chosen: empty response; ..."
    train, test = train_test_split_by_rows(loaded.pairs, 1500)
    dataset = datasets.Dataset.from_list(to_records(train))   # explicit-prompt format for TRL's RewardTrainer

Each row of HH-RLHF holds two whole dialogues, `chosen` and `rejected`, that share every turn but the
last Assistant reply (github.com/anthropics/hh-rlhf). We split each at its last `\\n\\nAssistant:`: the
prompt is everything up to and including that marker, the response is what follows, kept verbatim (it
normally starts with a space). A row is a pair only if both dialogues split and give the *same* prompt;
any other row is recorded in `problems` with its row number and the reason, never silently dropped, and
one bad row never stops the load. What the user must fix raises a `minirlhf.errors.UserError` naming the file
(and line): a missing path (`MissingInput`), a file that is not gzip where its name says so, is not UTF-8
text (binary data), or holds no preference pair at all (`UnusableInput`). `local_files` checks the head of
each file, so such a file fails when the stage key is computed, before anything runs.

Row numbers are 0-based, in file order (for a folder, across its files in the order they are read;
blank lines are not rows). On the hub path they are the dataset's row indices.
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from minirlhf.data.formatting import ASSISTANT, HUMAN
from minirlhf.errors import MissingInput, UnusableInput

KEYS = ("chosen", "rejected")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
# Files named after a split, as in the hub repo (`harmless-base/test.jsonl.gz`); if a folder holds some,
# reading all of them would mix train and test, so we insist on the requested one.
SPLIT_NAMES = ("train", "test", "validation", "valid", "dev")
# A hub dataset id: `name` or `namespace/name` (huggingface_hub's REPO_ID_REGEX, simplified).
HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w\-.]*/)?[A-Za-z0-9][\w\-.]*$")
SUMMARY_MAX_PROBLEMS = 10  # problems listed by summary(); all of them stay in `problems`
GZIP_MAGIC = b"\x1f\x8b"
WHAT_TO_GIVE = "data.hh_path must be HH-RLHF JSON Lines (.jsonl, or gzip-compressed .jsonl.gz)"


class MalformedRow(ValueError):
    """A row or dialogue that is not a valid HH-RLHF preference pair; `reason` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class PreferencePair:
    prompt: str  # the shared dialogue, ending with "\n\nAssistant:"
    chosen: str  # the preferred reply, verbatim (normally starts with a space)
    rejected: str  # the other reply, verbatim
    source_row: int  # 0-based row number in the source


@dataclass
class RowProblem:
    row: int  # 0-based row number in the source
    reason: str


@dataclass
class HHLoadResult:
    pairs: list[PreferencePair]
    problems: list[RowProblem]
    n_rows: int  # rows read: len(pairs) + len(problems)

    def summary(self) -> str:
        """One line: "1800 rows: 1794 pairs, 6 rejected: row 86: chosen: empty response; ..."."""
        text = f"{self.n_rows} rows: {len(self.pairs)} pairs, {len(self.problems)} rejected"
        if self.problems:
            shown = "; ".join(f"row {p.row}: {p.reason}" for p in self.problems[:SUMMARY_MAX_PROBLEMS])
            more = len(self.problems) - SUMMARY_MAX_PROBLEMS
            text += f": {shown}" + (f"; ... and {more} more" if more > 0 else "")
        return text


# ---------------------------------------------------------------------------------------------- parsing


def split_prompt_response(dialogue: str) -> tuple[str, str]:
    """Split a whole dialogue at its last `\\n\\nAssistant:` into (prompt, response).

    The prompt keeps the marker (it ends with "\\n\\nAssistant:"), the response is the rest, verbatim, so
    `prompt + response == dialogue`. Raises MalformedRow if the dialogue does not open with a Human turn,
    has no Assistant turn, ends on a Human turn, or has an empty (whitespace-only) last reply.
    """
    if not dialogue.startswith(HUMAN):
        raise MalformedRow(f"does not start with {HUMAN!r} (starts with {dialogue[:20]!r})")
    cut = dialogue.rfind(ASSISTANT)
    if cut < 0:
        raise MalformedRow("no Assistant turn")
    prompt, response = dialogue[: cut + len(ASSISTANT)], dialogue[cut + len(ASSISTANT) :]
    if HUMAN in response:
        raise MalformedRow("ends with a Human turn, not an Assistant reply")
    if not response.strip():
        raise MalformedRow("empty response")
    return prompt, response


def _prompts_differ(chosen_prompt: str, rejected_prompt: str) -> str:
    """Say how two prompts differ: their Assistant-turn counts and the first differing character."""
    first = next(
        (i for i, (a, b) in enumerate(zip(chosen_prompt, rejected_prompt)) if a != b),
        min(len(chosen_prompt), len(rejected_prompt)),
    )
    n_chosen, n_rejected = chosen_prompt.count(ASSISTANT), rejected_prompt.count(ASSISTANT)
    return (f"prompts differ (Assistant turns: chosen {n_chosen}, rejected {n_rejected}, "
            f"first difference at char {first})")


def parse_row(row: object, row_number: int) -> PreferencePair:
    """One source row -> a PreferencePair, or MalformedRow naming the first problem found."""
    if isinstance(row, MalformedRow):  # the reader could not even decode it (see _read_jsonl)
        raise row
    if not isinstance(row, dict):
        raise MalformedRow(f"not a JSON object (got {type(row).__name__})")
    missing = [key for key in KEYS if key not in row]
    if missing:
        raise MalformedRow("missing key " + ", ".join(repr(key) for key in missing))
    for key in KEYS:
        if row[key] is None:  # Arrow (the hub path) turns a key absent from some rows into null
            raise MalformedRow(f"{key!r} is null")
        if not isinstance(row[key], str):
            raise MalformedRow(f"{key!r} is not a string (got {type(row[key]).__name__})")
    split = {}
    for key in KEYS:
        try:
            split[key] = split_prompt_response(row[key])
        except MalformedRow as err:
            raise MalformedRow(f"{key}: {err.reason}") from None
    (chosen_prompt, chosen), (rejected_prompt, rejected) = split["chosen"], split["rejected"]
    if chosen_prompt != rejected_prompt:
        raise MalformedRow(_prompts_differ(chosen_prompt, rejected_prompt))
    if chosen == rejected:
        raise MalformedRow("chosen and rejected replies are identical")
    return PreferencePair(prompt=chosen_prompt, chosen=chosen, rejected=rejected, source_row=row_number)


def parse_rows(rows: Iterable[dict]) -> HHLoadResult:
    """Parse rows in order; row numbers are 0-based positions in `rows`. Bad rows go to `problems`."""
    pairs, problems, n_rows = [], [], 0
    for row_number, row in enumerate(rows):
        n_rows += 1
        try:
            pairs.append(parse_row(row, row_number))
        except MalformedRow as err:
            problems.append(RowProblem(row=row_number, reason=err.reason))
    return HHLoadResult(pairs=pairs, problems=problems, n_rows=n_rows)


# ---------------------------------------------------------------------------------------------- reading


def _read_jsonl(path: Path) -> Iterator[object]:
    """Yield each non-blank line of a .jsonl or .jsonl.gz file, decoded; a MalformedRow if it is not JSON.
    A file that cannot be decompressed or is not text raises UnusableInput (see `_text_lines`)."""
    for line_number, line in _text_lines(path):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as err:
            yield MalformedRow(f"invalid JSON ({path.name} line {line_number}, column {err.colno}: {err.msg})")


def _text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number from 1, text) of each line of a .jsonl or .jsonl.gz file. Read as bytes and decoded line by
    line, so a decoding error names its line; a file that is not gzip where its name says so, damaged gzip data
    or a line that is not UTF-8 text raises UnusableInput naming the file and the line."""
    opener = gzip.open if path.name.endswith(".gz") else open
    line_number = 0
    try:
        with opener(path, "rb") as raw:
            for line_number, data in enumerate(raw, start=1):
                yield line_number, _decode_line(path, line_number, data)
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise UnusableInput(_unreadable(path, line_number + 1, err)) from None


def _decode_line(path: Path, line_number: int, data: bytes) -> str:
    if line_number == 1 and data.startswith(GZIP_MAGIC):
        raise UnusableInput(f"{path}: gzip-compressed data in a file not named .gz; rename it to .jsonl.gz")
    if b"\0" in data:
        raise UnusableInput(f"{path}: line {line_number} holds a NUL byte, not JSON text (binary data?); "
                            f"{WHAT_TO_GIVE}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UnusableInput(f"{path}: line {line_number} is not UTF-8 text (binary data?); {WHAT_TO_GIVE}") from None


def _unreadable(path: Path, line_number: int, err: Exception) -> str:
    """Why the file could not be read, and what to do, on one line."""
    if isinstance(err, gzip.BadGzipFile) and "Not a gzipped file" in str(err):
        return (f"{path}: not gzip data although its name ends in .gz ({err}); gzip it, or drop .gz from its "
                "name if it is plain JSON Lines")
    if isinstance(err, (gzip.BadGzipFile, EOFError, zlib.error)):
        return (f"{path}: the gzip data is damaged at line {line_number} ({type(err).__name__}: {err}); "
                "copy or export the file again")
    return f"{path}: cannot be read ({type(err).__name__}: {err}); check the path and its permissions"


def check_readable(path: Path) -> None:
    """Raise UnusableInput if the file is not JSON Lines text at all (not gzip where named .gz, binary data).
    Reads only up to its first non-blank line, so it costs nothing on a big file; damage further in is found
    when `load_hh` reads it."""
    lines = _text_lines(path)
    try:
        for _, text in lines:
            if text.strip():
                return
    finally:
        lines.close()


def _strip_jsonl_suffix(name: str) -> str:
    for suffix in sorted(JSONL_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _files_in_dir(directory: Path, split: str, data_dir: str | None) -> list[Path]:
    """The files a local folder stands for: `<split>.jsonl(.gz)` if present, else all .jsonl(.gz), sorted.

    With `data_dir` naming a subfolder (the hub layout `harmless-base/test.jsonl.gz`) we read that
    subfolder; a `data_dir` that is not a subfolder is ignored, so the default `data.hh_data_dir` does not
    get in the way of a flat folder like ../shared/data/hh-rlhf.
    """
    if data_dir and (directory / data_dir).is_dir():
        directory = directory / data_dir
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.name.endswith(JSONL_SUFFIXES))
    if not files:
        raise MissingInput(
            f"no *.jsonl or *.jsonl.gz files in {directory}"
            + (f" (nor a subfolder {data_dir!r})" if data_dir and directory.name != data_dir else "")
            + "; point data.hh_path at a .jsonl(.gz) file or a folder holding some"
        )
    for_split = [p for p in files if _strip_jsonl_suffix(p.name) == split]
    if len(for_split) > 1:
        raise UnusableInput(f"both {for_split[0].name} and {for_split[1].name} in {directory}: keep one, "
                            "or point data.hh_path at it")
    if for_split:
        return for_split
    split_files = [p.name for p in files if _strip_jsonl_suffix(p.name) in SPLIT_NAMES]
    if split_files:
        raise MissingInput(
            f"no {split}.jsonl(.gz) in {directory} (it holds split files {split_files}); "
            f"set data.hh_split to one of them or point data.hh_path at a file"
        )
    return files


def _looks_like_path(source: str) -> bool:
    """True for what can only be a local path; hub ids are `name` or `namespace/name`."""
    return (
        source.startswith((".", "/", "~"))
        or source.endswith((".jsonl", ".gz", ".json"))
        or (os.sep != "/" and os.sep in source)
        or not HUB_ID.match(source)
    )


def local_files(source: str | Path, split: str, data_dir: str | None) -> list[Path] | None:
    """The local files `load_hh(source, ...)` reads, in order, each checked by `check_readable`; None when
    `source` is a hub dataset id. (The data stage's cache key holds their content digest: minirlhf.inputs.)"""
    files = _local_paths(source, split, data_dir)
    for path in files or ():
        check_readable(path)
    return files


def _local_paths(source: str | Path, split: str, data_dir: str | None) -> list[Path] | None:
    path = Path(source).expanduser()
    if not path.exists():
        if isinstance(source, Path) or _looks_like_path(str(source)):
            raise MissingInput(
                f"no HH-RLHF data at {path.resolve()}: expected a .jsonl or .jsonl.gz file, or a folder holding some. "
                f"Point data.hh_path at one (e.g. ../shared/data/hh-rlhf), or use the hub id 'Anthropic/hh-rlhf' "
                f"with network access."
            )
        return None
    if path.is_dir():
        return _files_in_dir(path, split, data_dir)
    if path.name.endswith(JSONL_SUFFIXES):
        return [path]
    raise UnusableInput(f"{path} is not a .jsonl or .jsonl.gz file; HH-RLHF rows are read from JSON Lines")


def _hub_rows(source: str, split: str, data_dir: str | None) -> Iterator[dict]:
    import datasets  # imported here: local files need only the stdlib

    try:
        dataset = datasets.load_dataset(source, data_dir=data_dir, split=split)
    except Exception as err:
        # Keep the library's error and type; add what we tried and what to do instead.
        err.add_note(
            f"minirlhf.data.hh: {source!r} is not a local file or folder (looked for {Path(source).resolve()}), "
            f"so it was loaded as a hub dataset (data_dir={data_dir!r}, split={split!r}). Offline, point "
            f"data.hh_path at a .jsonl(.gz) file or a folder of them; for the hub id, allow network access."
        )
        raise
    return iter(dataset)


def load_hh(source: str | Path, *, split: str = "train", data_dir: str | None = None,
            limit: int | None = None) -> HHLoadResult:
    """Load HH-RLHF rows from a local .jsonl(.gz) file or folder, or a hub dataset id, and parse them.

    A local folder is read as `_files_in_dir` says. Anything else that is a valid hub id goes through
    `datasets.load_dataset(source, data_dir=data_dir, split=split)`. `limit` keeps the first `limit` rows.
    A missing path raises MissingInput (a FileNotFoundError); a file that cannot be read as JSON Lines text, or
    rows of which none is a preference pair, raise UnusableInput (a ValueError), naming the file.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")
    files = local_files(source, split, data_dir)
    if files is None:
        rows = _hub_rows(str(source), split, data_dir)
    else:
        rows = itertools.chain.from_iterable(_read_jsonl(f) for f in files)
    loaded = parse_rows(itertools.islice(rows, limit))
    if not loaded.pairs:  # a few bad rows are problems; nothing usable at all is the wrong file
        raise UnusableInput(_no_pairs(source, files, loaded))
    return loaded


def _no_pairs(source: str | Path, files: list[Path] | None, loaded: HHLoadResult) -> str:
    where = str(files[0]) if files and len(files) == 1 else str(source)
    if not loaded.problems:
        return f"{where}: no rows (empty); {WHAT_TO_GIVE}, one {{'chosen': ..., 'rejected': ...}} object a line"
    first = loaded.problems[0]
    return (f"{where}: none of its {loaded.n_rows} rows is a preference pair (row {first.row}: {first.reason}); "
            f"{WHAT_TO_GIVE}, one {{'chosen': ..., 'rejected': ...}} object a line")


# ---------------------------------------------------------------------------------------------- using


def to_records(pairs: Iterable[PreferencePair]) -> list[dict]:
    """Pairs as dicts {"prompt", "chosen", "rejected", "source_row"}: `datasets.Dataset.from_list` input,
    in TRL's explicit-prompt preference format (RewardTrainer, DPOTrainer)."""
    return [asdict(pair) for pair in pairs]


def train_test_split_by_rows(pairs: list[PreferencePair],
                             n_train: int) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(pairs from the first n_train source rows, pairs from the rest), in file order: deterministic, no
    shuffling. Split by *row number*, so "train on the first 1,500 rows, hold out the last 300" means
    exactly that, whichever rows the parser rejected."""
    train = [p for p in pairs if p.source_row < n_train]
    test = [p for p in pairs if p.source_row >= n_train]
    if not train or not test:
        raise UnusableInput(
            f"n_train={n_train} leaves no pairs on one side of rows "
            f"0..{max((p.source_row for p in pairs), default=-1)}; "
            f"set data.hh_n_train to a row number inside that range (or load more rows: data.hh_limit)"
        )
    return train, test