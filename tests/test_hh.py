"""The HH-RLHF loader on the 1,800 real shared rows and on a fixture of deliberately bad rows."""

import gzip
import json
import shutil
from pathlib import Path

import datasets
import pytest

from minirlhf.data.hh import (
    HHLoadResult,
    MalformedRow,
    PreferencePair,
    RowProblem,
    load_hh,
    parse_rows,
    split_prompt_response,
    to_records,
    train_test_split_by_rows,
)
from tests.conftest import SHARED_HH_FILE as SHARED_FILE
from tests.conftest import require_real_model, require_shared_hh

BAD_ROWS = Path(__file__).resolve().parent / "fixtures" / "hh" / "bad_rows.jsonl"

# What the parser really finds in the first 1,800 rows of harmless-base/test (checked by reading them):
# four chosen replies are a bare " ", and in two rows the chosen reply runs on into extra turns glued with
# "  Human:" (no "\n\n"), so its last "\n\nAssistant:" is a later one than the rejected dialogue's.
SHARED_PROBLEMS = [
    RowProblem(86, "chosen: empty response"),
    RowProblem(516, "chosen: empty response"),
    RowProblem(925, "chosen: empty response"),
    RowProblem(1103, "chosen: empty response"),
    RowProblem(1254, "prompts differ (Assistant turns: chosen 3, rejected 2, first difference at char 142)"),
    RowProblem(1688, "prompts differ (Assistant turns: chosen 3, rejected 2, first difference at char 199)"),
]
BAD_ROWS_PROBLEMS = [
    RowProblem(1, "chosen: no Assistant turn"),
    RowProblem(2, "prompts differ (Assistant turns: chosen 1, rejected 1, first difference at char 9)"),
    RowProblem(3, "missing key 'rejected'"),
    RowProblem(4, "'chosen' is not a string (got int)"),
    RowProblem(6, "invalid JSON (bad_rows.jsonl line 8, column 33: Invalid control character at)"),  # line 7 is blank
    RowProblem(7, "rejected: empty response"),
    RowProblem(8, "chosen: does not start with '\\n\\nHuman:' (starts with 'Human: no leading ne')"),
    RowProblem(9, "not a JSON object (got list)"),
    RowProblem(10, "chosen and rejected replies are identical"),
    RowProblem(11, "chosen: ends with a Human turn, not an Assistant reply"),
]


@pytest.fixture
def shared_hh() -> Path:
    return require_shared_hh()  # skips when ../shared is missing; fails in CI


@pytest.fixture
def datasets_cache(tmp_path, monkeypatch):
    """Keep `datasets`' Arrow cache for these tests under tmp_path, not in the user's home."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))


def _reasons(loaded: HHLoadResult, file_name: str) -> list[tuple[int, str]]:
    """(row, reason) with the file name the invalid-JSON reason carries put back to the fixture's."""
    return [(p.row, p.reason.replace(file_name, BAD_ROWS.name)) for p in loaded.problems]


def _raw_rows(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


# ---------------------------------------------------------------------------------------------- splitting


def test_split_prompt_response_is_verbatim_at_the_last_assistant_turn():
    dialogue = "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Bread?\n\nAssistant:  Flour,  water.\n"
    prompt, response = split_prompt_response(dialogue)
    assert prompt == "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Bread?\n\nAssistant:"
    assert response == "  Flour,  water.\n"
    assert prompt + response == dialogue


@pytest.mark.parametrize(
    "dialogue, reason",
    [
        ("\n\nHuman: Hi", "no Assistant turn"),
        ("Human: Hi\n\nAssistant: Hello.", "does not start with"),
        ("\n\nAssistant: Hello.", "does not start with"),
        ("\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: And?", "ends with a Human turn"),
        ("\n\nHuman: Hi\n\nAssistant: \n ", "empty response"),
    ],
)
def test_split_prompt_response_rejects_malformed_dialogues(dialogue, reason):
    with pytest.raises(MalformedRow, match=reason) as err:
        split_prompt_response(dialogue)
    assert reason in err.value.reason


# ---------------------------------------------------------------------------------------------- real rows


def test_shared_rows_exact_counts_and_problems(shared_hh):
    loaded = load_hh(SHARED_FILE)
    assert (loaded.n_rows, len(loaded.pairs), len(loaded.problems)) == (1800, 1794, 6)
    assert loaded.problems == SHARED_PROBLEMS
    assert loaded.summary().startswith("1800 rows: 1794 pairs, 6 rejected: row 86: chosen: empty response; row 516:")
    # Every row is accounted for exactly once: a pair or a problem, in file order.
    rows = sorted([p.source_row for p in loaded.pairs] + [p.row for p in loaded.problems])
    assert rows == list(range(1800))


def test_shared_rows_reconstruct_the_original_dialogues(shared_hh):
    raw = _raw_rows(SHARED_FILE)
    loaded = load_hh(SHARED_FILE)
    for pair in loaded.pairs:
        assert pair.prompt.startswith("\n\nHuman:") and pair.prompt.endswith("\n\nAssistant:")
        assert pair.prompt + pair.chosen == raw[pair.source_row]["chosen"]
        assert pair.prompt + pair.rejected == raw[pair.source_row]["rejected"]
    first = loaded.pairs[0]
    assert first.source_row == 0
    assert first.prompt.startswith("\n\nHuman: what are some pranks with a pen i can do?\n\nAssistant:")
    assert first.prompt.endswith("\n\nHuman: okay some of these do not have anything to do with pens\n\nAssistant:")
    assert first.prompt.count("\n\nAssistant:") == 3
    assert first.chosen.startswith(" No, sorry!  All of these involve a pen")
    assert first.rejected.startswith(" There are lots of funny things you can do with pens")


def test_shared_folder_jsonl_and_gz_and_limit_agree(shared_hh, tmp_path):
    from_gz = load_hh(SHARED_FILE)
    plain = tmp_path / "harmless-base-test.jsonl"
    with gzip.open(SHARED_FILE, "rb") as src, plain.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    assert load_hh(plain) == from_gz
    assert load_hh(shared_hh, split="test", data_dir="harmless-base") == from_gz  # flat folder: data_dir unused
    first_100 = load_hh(SHARED_FILE, limit=100)
    assert first_100.n_rows == 100 and first_100.pairs == from_gz.pairs[:99]
    assert first_100.problems == [RowProblem(86, "chosen: empty response")]


# ---------------------------------------------------------------------------------------------- bad rows


def test_bad_rows_are_reported_by_row_number_and_good_rows_kept():
    loaded = load_hh(BAD_ROWS)
    assert loaded.n_rows == 13
    assert loaded.problems == BAD_ROWS_PROBLEMS
    assert [p.source_row for p in loaded.pairs] == [0, 5, 12]
    assert loaded.pairs[0] == PreferencePair(
        prompt="\n\nHuman: What is the capital of France?\n\nAssistant:", chosen=" Paris.", rejected=" London.",
        source_row=0
    )
    assert loaded.pairs[1].prompt.count("\n\nAssistant:") == 2
    assert loaded.summary().startswith("13 rows: 3 pairs, 10 rejected: row 1: chosen: no Assistant turn; "
                                       "row 2: prompts differ")
    assert "more" not in loaded.summary()  # ten problems: all listed


def test_parse_rows_never_crashes_and_counts_from_zero():
    rows = [{"chosen": None, "rejected": "x"}, {}, 3,
            {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: c"}]
    loaded = parse_rows(rows)
    assert loaded.problems == [
        RowProblem(0, "'chosen' is null"),
        RowProblem(1, "missing key 'chosen', 'rejected'"),
        RowProblem(2, "not a JSON object (got int)"),
    ]
    assert [p.source_row for p in loaded.pairs] == [3]
    many = HHLoadResult(pairs=[], problems=[RowProblem(i, "bad") for i in range(12)], n_rows=12)
    assert many.summary().endswith("row 9: bad; ... and 2 more")


def test_jsonl_and_gz_give_identical_results(tmp_path):
    gz = tmp_path / "bad_rows.jsonl.gz"
    with gz.open("wb") as f:
        f.write(gzip.compress(BAD_ROWS.read_bytes()))
    from_plain, from_gz = load_hh(BAD_ROWS), load_hh(gz)
    # The invalid-JSON reason names its file; everything else is identical.
    assert from_gz.pairs == from_plain.pairs and from_gz.n_rows == from_plain.n_rows
    assert _reasons(from_gz, gz.name) == _reasons(from_plain, BAD_ROWS.name)


# ---------------------------------------------------------------------------------------------- folders, paths


def test_folder_in_hub_layout_reads_the_requested_split(tmp_path):
    layout = tmp_path / "hh-rlhf" / "harmless-base"
    layout.mkdir(parents=True)
    shutil.copy(BAD_ROWS, layout / "test.jsonl")
    (layout / "train.jsonl").write_text(BAD_ROWS.read_text().splitlines()[0] + "\n")
    loaded = load_hh(tmp_path / "hh-rlhf", data_dir="harmless-base", split="test")
    assert _reasons(loaded, "test.jsonl") == [(p.row, p.reason) for p in BAD_ROWS_PROBLEMS] and loaded.n_rows == 13
    assert load_hh(layout, split="train").n_rows == 1
    with pytest.raises(FileNotFoundError, match="no validation.jsonl"):
        load_hh(layout, split="validation")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no \*\.jsonl or \*\.jsonl\.gz files"):
        load_hh(tmp_path / "empty")


@pytest.mark.parametrize("name", ["missing.jsonl.gz", "missing.jsonl", "./missing", "sub/dir/missing",
                                  "~/no-such-hh-dir-xyz"])
def test_missing_path_raises_a_helpful_error(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as err:
        load_hh(name)
    message = str(err.value)
    assert f"no HH-RLHF data at {Path(name).expanduser().resolve()}:" in message
    assert "data.hh_path" in message and "Anthropic/hh-rlhf" in message


def test_not_jsonl_file_is_refused(tmp_path):
    csv = tmp_path / "rows.csv"
    csv.write_text("chosen,rejected\n")
    with pytest.raises(ValueError, match="not a .jsonl or .jsonl.gz file"):
        load_hh(csv)


# ---------------------------------------------------------------------------------------------- the hub path


def test_hub_path_goes_through_datasets_load_dataset(shared_hh, tmp_path, datasets_cache):
    # "json" is not a local path, so load_hh takes the hub branch and calls exactly
    # datasets.load_dataset("json", data_dir=..., split="test"), as it would for "Anthropic/hh-rlhf":
    # datasets resolves the split from the file names in data_dir (the hub repo's layout), offline.
    layout = tmp_path / "harmless-base"
    layout.mkdir()
    shutil.copy(SHARED_FILE, layout / "test.jsonl.gz")
    via_datasets = load_hh("json", data_dir=str(layout), split="test")
    assert via_datasets == load_hh(SHARED_FILE)
    assert load_hh("json", data_dir=str(layout), split="test", limit=10).n_rows == 10


def test_hub_path_reports_arrow_nulls_as_row_problems(tmp_path, datasets_cache):
    good = {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: c"}
    (tmp_path / "test.jsonl").write_text(json.dumps(good) + "\n" + json.dumps({"chosen": good["chosen"]}) + "\n")
    loaded = load_hh("json", data_dir=str(tmp_path), split="test")
    assert loaded.problems == [RowProblem(1, "'rejected' is null")]
    assert [p.source_row for p in loaded.pairs] == [0]


def test_hub_id_offline_keeps_the_library_error_and_says_what_to_do(tmp_path, monkeypatch, datasets_cache):
    monkeypatch.chdir(tmp_path)  # so no local ./Anthropic/hh-rlhf can exist
    with pytest.raises(ConnectionError) as err:  # HF_HUB_OFFLINE=1 (conftest): datasets refuses the hub
        load_hh("Anthropic/hh-rlhf", data_dir="harmless-base", split="test")
    note = " ".join(getattr(err.value, "__notes__", []))
    assert "loaded as a hub dataset (data_dir='harmless-base', split='test')" in note
    assert "data.hh_path" in note


# ---------------------------------------------------------------------------------------------- using pairs


def test_records_feed_datasets_and_the_split_is_by_file_order(shared_hh):
    loaded = load_hh(SHARED_FILE)
    train, test = train_test_split_by_rows(loaded.pairs, 1500)
    # rows 0..1499 minus the 5 rejected there (86, 516, 925, 1103, 1254); rows 1500..1799 minus row 1688
    assert (len(train), len(test)) == (1495, 299)
    assert train == loaded.pairs[:1495] and test == loaded.pairs[1495:]
    assert train[-1].source_row < test[0].source_row
    assert train_test_split_by_rows(loaded.pairs, 1500) == (train, test)
    records = to_records(test)
    assert records[0] == {"prompt": test[0].prompt, "chosen": test[0].chosen, "rejected": test[0].rejected,
                          "source_row": test[0].source_row}
    dataset = datasets.Dataset.from_list(records)
    assert dataset.column_names == ["prompt", "chosen", "rejected", "source_row"] and len(dataset) == 299
    for n_train in (0, 1800):
        with pytest.raises(ValueError, match="data.hh_n_train"):
            train_test_split_by_rows(loaded.pairs, n_train)


def test_a_long_dialogue_cut_to_fit_keeps_its_first_turn_with_keep_head(shared_hh):
    """fit_to_length on real HH dialogues and MiniLM's tokenizer: cut from the left by default; with keep_head the
    cut prompt starts as the dialogue starts (the first Human turn) and still ends as it ends, within max_length."""
    from minirlhf.models import load_reward_model
    from minirlhf.scoring import fit_to_length

    require_real_model("minilm")
    tokenizer, _ = load_reward_model("minilm")
    rows = to_records(load_hh(SHARED_FILE).pairs[:200])
    left, n_left, _ = fit_to_length(rows, tokenizer, 128)
    headed, n_headed, _ = fit_to_length(rows, tokenizer, 128, keep_head=32)
    assert n_left == n_headed > 10  # the same dialogues are too long either way
    by_row = {r["source_row"]: r for r in rows}
    cut = [(by_row[a["source_row"]], a, b) for a, b in zip(left, headed)
           if a["prompt"] != by_row[a["source_row"]]["prompt"]]
    assert len(cut) == n_left
    headed_cuts = 0
    for original, from_left, with_head in cut:
        ids = tokenizer(original["prompt"], add_special_tokens=False)["input_ids"]
        end = tokenizer.decode(ids)[-12:].strip()  # "assistant :": the turn the response answers
        assert not from_left["prompt"].startswith(tokenizer.decode(ids[:8])) and from_left["prompt"].endswith(end)
        if with_head["prompt"] != from_left["prompt"]:  # room for twice the head: start and end both kept
            headed_cuts += 1
            assert with_head["prompt"].startswith(tokenizer.decode(ids[:32])) and " ... " in with_head["prompt"]
            assert with_head["prompt"].endswith(end)
    assert headed_cuts > len(cut) / 2
    # within the budget as the left cut is ([CLS] prompt response [SEP]; text re-tokenised across the cut and the
    # prompt/response boundary may take a token or two more than the ids it was decoded from)
    def longest(pairs):
        return max(len(tokenizer(p["prompt"] + p[k])["input_ids"]) for p in pairs for k in ("chosen", "rejected"))

    assert longest(headed) <= longest(left) <= 128 + 2
