"""The read-only store is read-only all the way down: every query that DuckDB's `read_only=True` alone lets write a
file (EXPLAIN ANALYZE COPY, PRAGMA import_database, file logging, an extension install on first use) is refused and
leaves every directory it could have touched as it was; local files are out of a query's reach too; SELECTs, the
views and the temp views still work. Real DuckDB files throughout, and HOME points at a tmp folder so no test can
touch the real ~/.duckdb."""

import hashlib
import sqlite3
from pathlib import Path

import duckdb
import pytest

from minirlhf.store import VIEW_ORDER, NotAStore, ReadOnlyQueryError, Store, open_read_only


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An empty HOME: where DuckDB would put ~/.duckdb/extensions."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


@pytest.fixture
def store(tmp_path, home) -> Store:
    store = Store.for_output_dir(tmp_path / "out")
    run_id = store.start_run({"seed": 1})
    store.log_metrics(store.start_stage(run_id, "sft"), {"sft/loss": 2.0}, step=1)
    return store


def snapshot(*roots: Path) -> dict[str, tuple[int, str]]:
    """Every file under `roots` (a root that does not exist adds nothing): path -> (size, sha256)."""
    files = {}
    for root in roots:
        for path in sorted(root.rglob("*")) if root.is_dir() else [root] if root.exists() else []:
            if path.is_file():
                files[str(path)] = (path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest())
            else:
                files[str(path)] = (-1, "directory")
    return files


def assert_refused_and_nothing_written(store: Store, sql: str, *roots: Path) -> ReadOnlyQueryError:
    before = snapshot(*roots)
    with pytest.raises(ReadOnlyQueryError, match="query is read-only") as refused:
        store.query(sql)
    assert snapshot(*roots) == before
    return refused.value


# ---- what read_only=True alone let through ---------------------------------------------------------------
def test_explain_analyze_copy_to_a_file_is_refused(store, tmp_path, home):
    target = tmp_path / "leak.csv"
    assert_refused_and_nothing_written(store, f"EXPLAIN ANALYZE COPY (select 42) TO '{target}'", tmp_path)
    assert not target.exists()


def test_explain_analyze_copy_onto_another_database_leaves_its_bytes(store, tmp_path, home):
    other = tmp_path / "other.duckdb"
    with duckdb.connect(str(other)) as con:
        con.execute("create table keep as select range as i from range(1000)")
    kept = other.read_bytes()
    assert_refused_and_nothing_written(store, f"EXPLAIN ANALYZE COPY (select 42) TO '{other}'", tmp_path)
    assert other.read_bytes() == kept
    with duckdb.connect(str(other), read_only=True) as con:
        assert con.execute("select count(*) from keep").fetchone()[0] == 1000


def test_import_database_whose_schema_copies_out_is_refused(store, tmp_path, home):
    exported, target = tmp_path / "exported", tmp_path / "imported.csv"
    exported.mkdir()
    (exported / "schema.sql").write_text(f"COPY (select 42) TO '{target}';\n")
    (exported / "load.sql").write_text("")
    assert_refused_and_nothing_written(store, f"PRAGMA import_database('{exported}')", tmp_path)
    assert not target.exists()


def test_file_logging_is_refused(store, tmp_path, home):
    logs = tmp_path / "logs"
    err = assert_refused_and_nothing_written(
        store, f"CALL enable_logging(storage='file', storage_path='{logs}'); select 42", tmp_path)
    assert not logs.exists() and "configuration has been locked" in str(err)


def test_url_read_installs_no_extension(store, tmp_path, home):
    # Unguarded, DuckDB would try to install httpfs into $HOME/.duckdb/extensions before reaching the URL.
    assert_refused_and_nothing_written(store, "select * from read_csv('https://example.com/data.csv')",
                                       home, tmp_path)
    assert list(home.iterdir()) == []


def test_local_files_are_out_of_reach(store, tmp_path, home):
    data = tmp_path / "data.csv"
    data.write_text("a,b\n1,2\n")
    for sql in (f"select * from read_text('{data}')", f"select * from read_csv('{data}')", f"select * from '{data}'",
                "select * from read_text('/etc/passwd')", f"select * from glob('{tmp_path}/*')"):
        err = assert_refused_and_nothing_written(store, sql, tmp_path)
        assert "reads only the store" in str(err) and "\n" not in str(err)


def test_read_only_connections_have_the_guards_locked_on(store, home):
    con = open_read_only(store.path)
    try:
        settings = dict(con.execute(
            "select name, value from duckdb_settings() where name in ('enable_external_access', "
            "'autoinstall_known_extensions', 'autoload_known_extensions', 'lock_configuration', 'access_mode')"
        ).fetchall())
        with pytest.raises(duckdb.InvalidInputException, match="locked"):
            con.execute("SET enable_external_access = true")
    finally:
        con.close()
    assert settings == {"enable_external_access": "false", "autoinstall_known_extensions": "false",
                        "autoload_known_extensions": "false", "lock_configuration": "true",
                        "access_mode": "read_only"}


# ---- what still works -------------------------------------------------------------------------------------
def test_selects_views_and_temp_views_still_work(store, tmp_path, home):
    before = snapshot(tmp_path)
    assert store.query("select name, value from metrics").to_dict("records") == [{"name": "sft/loss", "value": 2.0}]
    assert store.query("select status, stage_runs from v_runs").to_dict("records") == [
        {"status": "running", "stage_runs": 1}]
    # A file no writer of this minirlhf touched has no views: the query makes them as temp views, in memory.
    with duckdb.connect(str(store.path)) as con:
        for name in reversed(VIEW_ORDER):
            con.execute(f"DROP VIEW {name}")
    before = snapshot(tmp_path)
    assert store.query("select stage, attempt from v_metrics").to_dict("records") == [{"stage": "sft", "attempt": 1}]
    assert snapshot(tmp_path) == before
    with duckdb.connect(str(store.path), read_only=True) as con:
        assert con.execute("select count(*) from duckdb_views() where not internal").fetchone()[0] == 0


# ---- a file that is not a store ---------------------------------------------------------------------------
def make_sqlite(path: Path) -> None:
    con = sqlite3.connect(path)
    con.execute("create table runs (run_id text)")
    con.commit()
    con.close()


@pytest.mark.parametrize("name, make", [
    ("results.csv", lambda p: p.write_text("run_id,status\nabc,completed\n")),  # DuckDB opens .csv as a view
    ("tiny.csv", lambda p: p.write_text("a\n1\n")),  # shorter than a DuckDB header
    ("notes.duckdb", lambda p: p.write_text("not a database\n" * 10)),
    ("empty.duckdb", lambda p: p.touch()),
    ("runs.sqlite", make_sqlite),  # unguarded, DuckDB would try to install sqlite_scanner to open it
])
def test_a_file_that_is_not_duckdb_is_named_so(tmp_path, home, name, make):
    path = tmp_path / name
    make(path)
    before = snapshot(tmp_path)
    expected = f"{path} is not a DuckDB database (minirlhf's results store is <output_dir>/rlhf.duckdb)"
    with pytest.raises(NotAStore) as err:
        Store(path).query("select 1")
    assert str(err.value) == expected
    with pytest.raises(NotAStore):
        Store(path).start_run({})  # and a writer leaves it alone
    assert snapshot(tmp_path) == before
