"""Bad input from the user: one line on stderr naming the file or field and what to do, exit code 2, no traceback,
and nothing written (no output folder, no store, no runs row) when the problem shows before anything runs."""

import gzip
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from minirlhf.cli import app as cli_app
from minirlhf.data.hh import load_hh
from minirlhf.errors import UnusableInput, UserError
from minirlhf.store import Store

REPO = Path(__file__).resolve().parents[1]
PAIR = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello.", "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."}


def minirlhf(*args: str, cwd: Path, module: str = "flows.cli") -> subprocess.CompletedProcess:
    """The installed `minirlhf` script is flows.cli:main; minirlhf.cli is the library's app without Prefect."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def one_line_error(out: subprocess.CompletedProcess, *fragments: str) -> str:
    """The single stderr line of a user error (exit code 2, no traceback), holding every fragment."""
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert len(lines) == 1, out.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def random_bytes(n: int = 4096) -> bytes:
    return random.Random(0).randbytes(n)  # fixed: the same bytes, so the same line fails, on every run


# ---- the config file and --set -----------------------------------------------------------------------------
PNG_HEADER = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00" * 32


@pytest.mark.parametrize("content, expected", [
    (b"ppo: [\n", "not valid YAML (line 2, column 1"),
    (random_bytes(256), "binary data"),
    (PNG_HEADER, "binary data"),
    (b"", "the config file is empty"),
    (b"# only a comment\n", "holds no settings"),
    (b"- ppo\n- sft\n", "the top level is a list, not a mapping of sections"),
], ids=["malformed", "random-bytes", "png", "empty", "comments-only", "top-level-list"])
def test_a_bad_config_file_is_one_line_naming_it_and_nothing_is_written(tmp_path, content, expected):
    config = tmp_path / "bad.yaml"
    config.write_bytes(content)
    out = minirlhf("run", "--config", config, "--set", f"output_dir={tmp_path / 'out'}", cwd=tmp_path)
    line = one_line_error(out, str(config), expected)
    assert "configs/demo.yaml" in line  # says what a good one looks like
    assert not (tmp_path / "out").exists()


def test_a_set_value_that_is_not_yaml_is_one_line(tmp_path):
    out = minirlhf("run", "--set", "ppo.kl_coef=[", "--set", f"output_dir={tmp_path / 'out'}", cwd=tmp_path)
    one_line_error(out, "--set 'ppo.kl_coef=['", "not valid YAML", "quote a string")
    assert not (tmp_path / "out").exists()


def test_several_bad_fields_are_one_line_naming_each(tmp_path):
    out = minirlhf("config", "show", "--set", "sft.learning_rate=-1", "--set", "ppo.kl_coeff=1", cwd=tmp_path,
                   module="minirlhf.cli")
    one_line_error(out, "sft.learning_rate: Input should be greater than 0", "ppo.kl_coeff: unknown key")


# ---- the HH-RLHF data file ---------------------------------------------------------------------------------
def _fake_gz(path: Path) -> None:
    path.write_text(json.dumps(PAIR) + "\n")  # plain JSON Lines under a .gz name


def _gzip_of_random_bytes(path: Path) -> None:
    path.write_bytes(gzip.compress(random_bytes()))


def _random_bytes(path: Path) -> None:
    path.write_bytes(random_bytes())


@pytest.mark.parametrize("name, write, expected", [
    ("x.jsonl.gz", _fake_gz, "not gzip data although its name ends in .gz"),
    ("x.jsonl.gz", _gzip_of_random_bytes, "line 1 is not UTF-8 text (binary data?)"),
    ("x.jsonl", _random_bytes, "line 1 is not UTF-8 text (binary data?)"),
], ids=["plain-text-named-gz", "gzip-of-random-bytes", "random-bytes-jsonl"])
@pytest.mark.parametrize("command", ["run", "flow"])
def test_an_unreadable_hh_file_fails_before_the_run_is_recorded(tmp_path, name, write, expected, command):
    hh = tmp_path / name
    write(hh)
    out = minirlhf(command, "--set", "data.source=hh", "--set", f"data.hh_path={hh}",
                   "--set", f"output_dir={tmp_path / 'out'}", cwd=tmp_path)
    one_line_error(out, str(hh), expected)
    assert not (tmp_path / "out").exists()  # no store, no runs row, no data/ folder


def test_an_hh_file_with_no_pair_at_all_is_a_user_error_but_a_few_bad_rows_are_not(tmp_path):
    text_only = tmp_path / "notes.jsonl"
    text_only.write_text("these are notes\nnot preference pairs\n")
    with pytest.raises(UnusableInput,
                       match=r"notes.jsonl: none of its 2 rows is a preference pair \(row 0: invalid JSON"):
        load_hh(text_only)
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("not json\n" + json.dumps(PAIR) + "\n")
    loaded = load_hh(mixed)
    assert (loaded.n_rows, len(loaded.pairs), len(loaded.problems)) == (2, 1, 1)


def test_an_hh_file_with_no_pair_fails_the_data_stage_with_exit_2(tmp_path):
    # Readable text, so it passes the check before the run; the data stage reads every row and finds no pair.
    text_only = tmp_path / "notes.jsonl"
    text_only.write_text("these are notes\n")
    out = minirlhf("run", "--stages", "data", "--set", "data.source=hh", "--set", f"data.hh_path={text_only}",
                   "--set", f"output_dir={tmp_path / 'out'}", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.splitlines()[-1].startswith(f"error: {text_only}: none of its 1 rows is a preference pair")
    assert not list((tmp_path / "out" / "data").glob("[!.]*"))  # no stage output, not even half of one


# ---- the output root and --stages --------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["run", "flow"])
def test_an_output_dir_that_cannot_be_a_folder_is_one_line(tmp_path, command):
    out = minirlhf(command, "--set", "output_dir=/dev/null/x", cwd=tmp_path)
    one_line_error(out, "output_dir /dev/null/x: /dev/null is not a folder", "--set output_dir=")
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    out = minirlhf(command, "--set", f"output_dir={a_file / 'out'}", cwd=tmp_path)
    one_line_error(out, f"{a_file} is not a folder")


@pytest.mark.parametrize("stages, expected", [("bogus", "unknown stage(s) bogus; choose from data, sft"),
                                              (",", "no stages asked for; choose from data, sft")])
def test_bad_stages_are_one_line_and_record_no_run(tmp_path, stages, expected):
    out = minirlhf("run", "--stages", stages, "--set", f"output_dir={tmp_path / 'out'}", cwd=tmp_path)
    one_line_error(out, f"--stages {stages!r}", expected)
    assert not (tmp_path / "out" / "rlhf.duckdb").exists() and not (tmp_path / "out").exists()


# ---- query and report --------------------------------------------------------------------------------------
def test_query_file_missing_is_one_line(tmp_path):
    out = minirlhf("query", "--file", "missing.sql", "--output-dir", tmp_path, cwd=tmp_path)
    one_line_error(out, "--file missing.sql does not exist")


@pytest.mark.parametrize("command", ["query", "report"])
def test_a_db_that_is_not_duckdb_is_one_line_and_writes_nothing(tmp_path, command):
    db = tmp_path / "x.duckdb"
    db.write_bytes(b"these bytes are no DuckDB database, just text\n" * 4)
    before = db.read_bytes()
    args = ["select 1"] if command == "query" else ["--out", tmp_path / "report"]
    out = minirlhf(command, "--db", db, *args, cwd=tmp_path)
    one_line_error(out, f"{db} is not a DuckDB database", "--db")
    assert db.read_bytes() == before and not (tmp_path / "report").exists()


@pytest.fixture
def two_runs(tmp_path) -> tuple[Path, list[str]]:
    store = Store(tmp_path / "rlhf.duckdb")
    return store.path, [store.start_run({"name": name}) for name in ("a", "b")]


def test_query_param_binds_named_parameters(tmp_path, two_runs):
    db, run_ids = two_runs
    saved = tmp_path / "one_run.sql"
    saved.write_text("select run_id, json_extract_string(config, '$.name') as name from runs where run_id = $run_id")
    out = minirlhf("query", "--db", db, "--file", saved, "--param", f"run_id={run_ids[1]}", "--format", "json",
                   cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [{"run_id": run_ids[1], "name": "b"}]


@pytest.mark.parametrize("args, expected", [
    (["select run_id from runs where run_id = $run_id"],
     "the SQL uses $run_id but no value was given: add --param run_id=VALUE"),
    (["select run_id from runs where run_id = $run_id", "--param", "run_id=x", "--param", "other=y"],
     "--param other: the SQL has no $other"),
    (["select 1", "--param", "run_id"], "--param 'run_id': expected NAME=VALUE"),
], ids=["missing", "extra", "malformed"])
def test_query_param_mistakes_are_one_line(tmp_path, two_runs, args, expected):
    out = minirlhf("query", "--db", two_runs[0], *args, cwd=tmp_path)
    one_line_error(out, expected)


# ---- the one place: user errors in one line, bugs with their traceback -------------------------------------
def test_user_errors_exit_2_and_bugs_keep_their_traceback(monkeypatch):
    import minirlhf.config

    def a_user_error(*args, **kwargs):
        raise UserError("x.yaml: something to fix\n  on two lines")

    monkeypatch.setattr(minirlhf.config, "load_config", a_user_error)
    out = CliRunner().invoke(cli_app, ["config", "show"])
    assert out.exit_code == 2 and out.output.strip() == "error: x.yaml: something to fix; on two lines"

    def a_bug(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(minirlhf.config, "load_config", a_bug)
    out = CliRunner().invoke(cli_app, ["config", "show"])
    assert isinstance(out.exception, KeyError)  # not turned into a one-line message: it propagates
