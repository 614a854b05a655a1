"""``python -m etl publish --repo ID``: upload an export to a Hugging Face Hub dataset repository.

What is sent: the dataset card ``README.md``, the splits ``train.jsonl`` / ``val.jsonl``, the
sentence-transformers splits ``st/`` and ``idf.json`` when the export has them, and ``report/``
(the plots the card shows). Never ``embeddings/`` (vectors and ANN index, large and of no use on
the Hub), nor ``datasets/`` (the same records as the JSONL) or ``metadata.json`` (it holds this
machine's paths). The files are hard-linked (copied where links fail) into a temporary folder
beside the export, which is uploaded as one commit with ``HfApi.upload_folder`` after
``create_repo(..., exist_ok=True)``. The token is huggingface_hub's own (``HF_TOKEN`` or
``huggingface-cli login``). Needs the optional extra: ``pip install 'ko-sparse-etl[publish]'``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

PUBLISHED = ("README.md", "train.jsonl", "val.jsonl", "st", "idf.json", "report")
REQUIRED = ("README.md", "train.jsonl")
NO_HUB = "publish needs the huggingface_hub package: pip install 'ko-sparse-etl[publish]'"


class PublishError(RuntimeError):
    """The export cannot be published as it is (missing, rejected, or the package is absent)."""


def files_to_publish(export_dir: Path) -> list[Path]:
    """The export's files that ``publish`` sends, relative to ``export_dir``, sorted."""
    export_dir = Path(export_dir)
    missing = [name for name in REQUIRED if not (export_dir / name).is_file()]
    if missing:
        raise PublishError(f"{export_dir} has no {', '.join(missing)}: run `python -m etl run` first")
    out: list[Path] = []
    for name in PUBLISHED:
        p = export_dir / name
        if p.is_file():
            out.append(Path(name))
        elif p.is_dir():
            out += [f.relative_to(export_dir) for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")]
    return sorted(out)


def stage_folder(export_dir: Path, dest: Path) -> list[Path]:
    """Link (or copy) the published files of ``export_dir`` into ``dest``; return them."""
    files = files_to_publish(export_dir)
    for rel in files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(export_dir / rel, target)
        except OSError:
            shutil.copy2(export_dir / rel, target)
    return files


def publish(export_dir: Path, repo_id: str, private: bool = False,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Upload the export to the dataset repository ``repo_id``; return what was sent and the commit URL."""
    try:
        from huggingface_hub import HfApi
    except ImportError as exc:
        raise PublishError(NO_HUB) from exc
    export_dir = Path(export_dir)
    api = HfApi()
    with tempfile.TemporaryDirectory(prefix=f".{export_dir.name}.publish.", dir=export_dir.parent) as tmp:
        files = stage_folder(export_dir, Path(tmp))
        log(f"uploading {len(files)} files of {export_dir} to the dataset repository {repo_id}")
        api.create_repo(repo_id=repo_id, repo_type="dataset", private=private, exist_ok=True)
        info = api.upload_folder(folder_path=tmp, repo_id=repo_id, repo_type="dataset",
                                 commit_message="Upload ko-sparse-etl export")
    return {"repo": repo_id, "files": [str(f) for f in files], "commit": str(getattr(info, "commit_url", info))}
