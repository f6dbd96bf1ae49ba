"""The stage-output protocol (fast tier): manifests, the sealed directory, the record under the manifest, and
the content digest that downstream keys hold."""

import hashlib
import json
from pathlib import Path

import pytest

from minirlhf.stage import (
    COMPLETE, MANIFEST, RECORD, StageResult, atomic_dir, content_digest, is_complete, load_output, output_problems,
    sha256_file, stage_output, verify_manifest, write_manifest,
)


def make_dir(root: Path) -> Path:
    (root / "nested").mkdir(parents=True)
    (root / "weights.bin").write_bytes(bytes(range(256)) * 8192)  # 2 MiB: more than one hashing chunk
    (root / "nested" / "config.json").write_text('{"n_layer": 2}')
    return root


def test_manifest_lists_files_and_verifies(tmp_path):
    d = make_dir(tmp_path / "ckpt")
    manifest = write_manifest(d)
    (d / COMPLETE).write_text("done")  # the marker, written after the manifest, is not listed
    lines = manifest.read_text().splitlines()
    assert lines == [f"{sha256_file(d / 'nested/config.json')}  nested/config.json",
                     f"{sha256_file(d / 'weights.bin')}  weights.bin"]
    assert sha256_file(d / "weights.bin") == hashlib.sha256((d / "weights.bin").read_bytes()).hexdigest()
    assert content_digest(d) == hashlib.sha256(manifest.read_bytes()).hexdigest()  # no record: every line counts
    assert verify_manifest(d) == []


def test_manifest_detects_changed_missing_and_extra_files(tmp_path):
    d = make_dir(tmp_path / "ckpt")
    write_manifest(d)
    data = bytearray((d / "weights.bin").read_bytes())
    data[1_500_000] ^= 1  # one flipped bit, in the second chunk
    (d / "weights.bin").write_bytes(bytes(data))
    assert verify_manifest(d) == ["changed: weights.bin"]
    (d / "nested" / "config.json").unlink()
    (d / "nested" / "stray.txt").write_text("?")
    assert sorted(verify_manifest(d)) == ["changed: weights.bin", "extra: nested/stray.txt",
                                          "missing: nested/config.json"]
    (d / MANIFEST).unlink()
    assert verify_manifest(d) and "no manifest" in verify_manifest(d)[0]
    with pytest.raises(FileNotFoundError, match="seal the directory"):
        content_digest(d)


def _write_stage(out: Path, seconds: float, weights: bytes = b"w" * 100) -> StageResult:
    result = StageResult("sft", metrics={"sft/loss": 0.5})
    with stage_output(out, result) as tmp:
        (tmp / "model.safetensors").write_bytes(weights)
        result.seconds = seconds
    return result


def test_stage_output_seals_the_record_under_the_manifest(tmp_path):
    out = tmp_path / "sft" / "abc123"
    result = _write_stage(out, 1.5)
    assert result.key == "abc123" and result.output_dir == "sft/abc123" and result.path(tmp_path) == out
    assert RECORD in (out / MANIFEST).read_text()  # the record is covered by the manifest
    loaded = load_output(out)
    assert loaded.metrics == {"sft/loss": 0.5} and loaded.seconds == 1.5 and loaded.sha256 == result.sha256
    record = json.loads((out / RECORD).read_text())
    assert "sha256" not in record and "output_dir" not in record  # nothing that names a root or depends on the seal
    # Editing the record's metrics by hand is detected: the output is no longer complete.
    record["metrics"]["sft/loss"] = 0.0
    (out / RECORD).write_text(json.dumps(record))
    assert not is_complete(out) and "changed: record.json" in output_problems(out)


def test_digest_covers_what_downstream_reads_not_timings(tmp_path):
    a = _write_stage(tmp_path / "a" / "k1", seconds=1.0)
    b = _write_stage(tmp_path / "b" / "k1", seconds=99.0)
    assert a.sha256 == b.sha256  # same weights, other timings: downstream keys do not move
    c = _write_stage(tmp_path / "c" / "k1", seconds=1.0, weights=b"x" * 100)
    assert c.sha256 != a.sha256


def test_an_output_filed_under_another_key_is_not_complete(tmp_path):
    _write_stage(tmp_path / "sft" / "k1", 1.0)
    (tmp_path / "sft" / "k1").rename(tmp_path / "sft" / "k2")
    assert output_problems(tmp_path / "sft" / "k2") == [] and load_output(tmp_path / "sft" / "k2") is None


def test_atomic_dir_leaves_nothing_on_failure_and_replaces_a_stale_copy(tmp_path):
    final = tmp_path / "ckpts" / "step-000003"
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            (tmp / "half.bin").write_bytes(b"1")
            raise RuntimeError("killed mid-write")
    assert not final.exists() and list(final.parent.iterdir()) == []
    final.mkdir()
    (final / "stale.bin").write_bytes(b"old")  # an incomplete copy: no marker
    assert output_problems(final)[0].endswith("no COMPLETE marker (interrupted or not written yet)")
    with atomic_dir(final) as tmp:
        (tmp / "new.bin").write_bytes(b"new")
    assert sorted(p.name for p in final.iterdir()) == [COMPLETE, MANIFEST, "new.bin"] and output_problems(final) == []
