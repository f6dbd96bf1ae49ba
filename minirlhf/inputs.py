"""Content digests of what a stage reads from outside the output root: data files and base models.

Usage:
    from minirlhf.inputs import external_inputs
    external_inputs(cfg, "data")     # {"data.hh_path": "sha256:9f2c..."} for HH data; {} for the embedded task
    external_inputs(cfg, "sft")      # {"model.policy": "sha256:..."} for a local dir, a packaged model or a GGUF file

A stage's cache key holds these (minirlhf.pipeline.stage_key), so replacing a data file or a model directory
with other bytes recomputes the stage and everything below it, whatever its path. A hub id is digested by
the snapshot the local Hugging Face cache holds (`hub:<id>@<commit>`); with no cached snapshot it can only
be keyed by its name (`hub:<id>`), so a new upstream revision is not noticed: pin a local copy to be safe.
Digests are remembered per process by (path, size, mtime), so a big model directory is hashed once.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from minirlhf.config import PipelineConfig
from minirlhf.constitution import constitution_path
from minirlhf.stage import sha256_file

_file_digests: dict[tuple[str, int, int], str] = {}


def file_digest(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _file_digests:
        _file_digests[key] = sha256_file(path)
    return _file_digests[key]


def files_digest(root: Path, files: list[Path]) -> str:
    """sha256 over (path relative to `root`, content digest) of each file: moving the root changes nothing."""
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.relative_to(root).as_posix()}\0{file_digest(f)}\n".encode())
    return "sha256:" + digest.hexdigest()


def path_digest(path: Path) -> str:
    """A file's or a directory's content digest (every file below it, hidden ones included)."""
    path = Path(path).expanduser()
    if path.is_dir():
        return files_digest(path, sorted(p for p in path.rglob("*") if p.is_file()))
    return "sha256:" + file_digest(path)


def hub_digest(repo_id: str, repo_type: str = "model") -> str:
    """`hub:<id>@<commit>` of the snapshot in the local HF cache, else `hub:<id>` (nothing to read offline)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        probe = "config.json" if repo_type == "model" else "README.md"
        found = try_to_load_from_cache(repo_id, probe, repo_type=repo_type)
    except Exception:  # no huggingface_hub, or a malformed id: the name is all there is
        found = None
    if isinstance(found, str):
        return f"hub:{repo_id}@{Path(found).parent.name}"
    return f"hub:{repo_id}"


def model_digest(name: str, gguf_file: str | None) -> str:
    """A base model as `load_policy` / `load_reward_model` resolve it: a GGUF file, a directory, or a hub id."""
    from minirlhf.models import resolve_source

    source, gguf = resolve_source(name, gguf_file)
    if gguf:
        return path_digest(Path(source) / gguf)
    if Path(source).exists():
        return path_digest(Path(source))
    return hub_digest(source)


def external_inputs(cfg: PipelineConfig, stage: str) -> dict[str, str]:
    """`config field -> content digest` of every input `stage` reads from outside the output root."""
    if stage == "data" and cfg.data.source == "hh":
        from minirlhf.data.hh import local_files

        files = local_files(cfg.data.hh_path, cfg.data.hh_split, cfg.data.hh_data_dir)
        if files is None:
            return {"data.hh_path": hub_digest(cfg.data.hh_path, "dataset")}
        root = Path(cfg.data.hh_path).expanduser()
        return {"data.hh_path": files_digest(root, files) if root.is_dir() else path_digest(root)}
    if stage == "sft" and cfg.model.policy != "tiny":
        return {"model.policy": model_digest(cfg.model.policy, cfg.model.gguf_file)}
    if stage == "reward" and cfg.model.reward_backbone != "sft":
        return {"model.reward_backbone": model_digest(cfg.model.reward_backbone, cfg.model.gguf_file)}
    if stage == "judge":
        found = {"judge.model": model_digest(cfg.judge.model, None)} if cfg.judge.model else {}
        if cfg.judge.reward_model:
            found["model.reward_backbone"] = model_digest(cfg.model.reward_backbone, cfg.model.gguf_file)
        return found
    if stage == "rlaif":
        found = {"rlaif.constitution": path_digest(constitution_path(cfg.rlaif.constitution))}
        if cfg.rlaif.feedback != "policy":
            found["rlaif.feedback"] = model_digest(cfg.rlaif.feedback, None)
        return found
    if stage == "cai":
        found = {"cai.constitution": path_digest(constitution_path(cfg.cai.constitution))}
        if cfg.cai.critic != "policy":
            found["cai.critic"] = model_digest(cfg.cai.critic, None)
        return found
    return {}
