"""The dataset card: ``README.md`` of every export, with Hugging Face YAML front matter.

The front matter is what the Hub reads: ``language``, ``license``, ``task_categories``,
``size_categories``, ``source_datasets``, ``configs`` (the ``data_files`` of the ``train`` and
``validation`` splits: ``train.jsonl`` / ``val.jsonl``, and the ``sentence-transformers`` config
over ``st/``) and ``dataset_info.features``. The body says what a record is, gives the run's
statistics (from ``metadata.json``'s counts) and the report's plots, the generation settings and
the command that made the export.

Licenses come from ``[[sources]] license`` (a Hugging Face license id such as ``cc-by-sa-4.0``, or
any other name, e.g. ``cc-by-nc-sa-2.0-kr`` for Namuwiki). An export mixes the texts of every
source, so it carries the most restrictive of them (:func:`most_restrictive`); when the sources
differ the card says so and lists each. A source without a license makes the card's license
``unknown``.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import Config

# Licenses the Hub knows by id (its front-matter list), with where to read them.
HUB_LICENSES: dict[str, str] = {
    "cc0-1.0": "https://creativecommons.org/publicdomain/zero/1.0/",
    "cc-by-4.0": "https://creativecommons.org/licenses/by/4.0/",
    "cc-by-sa-3.0": "https://creativecommons.org/licenses/by-sa/3.0/",
    "cc-by-sa-4.0": "https://creativecommons.org/licenses/by-sa/4.0/",
    "cc-by-nc-4.0": "https://creativecommons.org/licenses/by-nc/4.0/",
    "cc-by-nc-sa-2.0": "https://creativecommons.org/licenses/by-nc-sa/2.0/",
    "cc-by-nc-sa-3.0": "https://creativecommons.org/licenses/by-nc-sa/3.0/",
    "cc-by-nc-sa-4.0": "https://creativecommons.org/licenses/by-nc-sa/4.0/",
    "cc-by-nd-4.0": "https://creativecommons.org/licenses/by-nd/4.0/",
    "cc-by-nc-nd-4.0": "https://creativecommons.org/licenses/by-nc-nd/4.0/",
    "mit": "https://opensource.org/licenses/MIT",
    "apache-2.0": "https://www.apache.org/licenses/LICENSE-2.0",
}
# Licenses the Hub lists only as "other": the card names them in license_name / license_link.
OTHER_LICENSES: dict[str, str] = {
    "cc-by-nc-sa-2.0-kr": "https://creativecommons.org/licenses/by-nc-sa/2.0/kr/",
    "cc-by-sa-2.0-kr": "https://creativecommons.org/licenses/by-sa/2.0/kr/",
}
PERMISSIVE = ("cc0", "mit", "apache", "bsd", "public-domain", "pddl", "odc-by")

# What each candidate filter means (filter_reason of the candidates / scored_candidates layers), in
# plain words: the run summary and the card print it next to the count.
FILTER_MEANINGS: dict[str, str] = {
    "is_positive": "the candidate is the query's positive itself",
    "known_positive": "the candidate is another known positive of the query (never a negative)",
    "rank_window": "ranked within the top mining.skip_top neighbours, which are skipped",
    "same_document": "from the positive's document (or a document named for the query): likely relevant",
    "same_title": "from a document of the same title in another source: the same subject",
    "near_duplicate": "the same text as the positive, or cosine to it >= filters.near_duplicate_cosine",
    "same_cluster": "an easy draw from the positive's own cluster: too close to be an easy negative",
    "in_neighbours": "a random draw that is among the query's nearest neighbours: not an easy negative",
    "duplicate_draw": "a random draw that repeats an earlier draw of the same query",
    "contaminated": "equals or overlaps a passage of a [[decontaminate]] evaluation set: never a negative",
    "contaminated_query": "the positive of a query equal to a [[decontaminate]] evaluation question",
    "contaminated_positive": "the positive itself equals or overlaps a [[decontaminate]] evaluation passage",
    "positive_rank_too_low": "the positive itself: more than filters.positive_max_rank passages of other "
                             "documents score above it",
    "scored_above_positive": "the teacher scores it at least as high as the positive: a likely false negative",
    "relative_margin": "the teacher scores it within filters.relative_margin of the positive (measured above "
                       "the random-pair baseline): a likely false negative",
    "absolute_margin": "the teacher scores it within filters.absolute_margin of the positive",
    "near_duplicate_negative": "cosine >= filters.near_duplicate_cosine to a negative picked before it: "
                               "says the same thing",
}

SIZE_BUCKETS = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"))
PLOT_CAPTIONS = (("scores_by_role.png", "exported scores by role"),
                 ("teacher_gap.png", "teacher-score gap, positive vs negatives"),
                 ("docs_per_query.png", "docs per record"),
                 ("passages_per_source.png", "passages per document"),
                 ("cluster_sizes.png", "cluster sizes"),
                 ("filter_removals.png", "candidates removed by each filter"))


def restrictiveness(license_id: str) -> int:
    """How restrictive a license is: higher = more (no-derivatives > non-commercial > share-alike > attribution).

    An empty or unrecognized license counts as the most restrictive: nothing is known about it.
    """
    lic = license_id.strip().lower()
    if not lic or lic in ("unknown", "other"):
        return 100
    if lic.startswith(PERMISSIVE):
        return 0
    if not lic.startswith("cc-"):
        return 100
    parts = set(lic.split("-"))
    return 1 + 8 * ("nd" in parts) + 4 * ("nc" in parts) + 2 * ("sa" in parts)


def most_restrictive(licenses: Sequence[str]) -> str:
    """The license an export of these sources' texts carries ("unknown" when one is missing)."""
    if not licenses or any(not lic.strip() for lic in licenses):
        return "unknown"
    return max(licenses, key=lambda lic: (restrictiveness(lic), lic))


def license_front_matter(license_id: str) -> dict[str, str]:
    """``license`` (+ ``license_name`` / ``license_link`` for a license the Hub lists as "other")."""
    lic = license_id.strip().lower()
    if lic in HUB_LICENSES or lic == "unknown":
        return {"license": lic}
    out = {"license": "other", "license_name": lic}
    if lic in OTHER_LICENSES:
        out["license_link"] = OTHER_LICENSES[lic]
    return out


def size_category(n: int) -> str:
    """The Hub's size bucket for ``n`` records."""
    for bound, name in SIZE_BUCKETS:
        if n < bound:
            return name
    return "n>1T"


def invocation(argv: Sequence[str] | None = None) -> str:
    """The command line that is running, under the name the user typed (``python -m etl`` or the script)."""
    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return "python -m etl run"
    path = Path(argv[0])
    prog = path.name
    if path.parent.name == "etl" and prog == "__main__.py":
        prog = "python -m etl"
    elif prog != "ko-sparse-etl":
        return "python -m etl run  # (called from Python: etl.pipeline.run_pipeline)"
    return " ".join([prog, *(shlex.quote(a) for a in argv[1:])])


def _yaml_scalar(value: Any) -> str:
    """A YAML scalar: JSON strings are valid YAML, so strings are written JSON-quoted when needed."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    text = str(value)
    plain = text and all(c.isalnum() or c in "-_./<>" for c in text) and not text[0].isdigit() \
        and text.lower() not in ("true", "false", "null", "yes", "no", "on", "off")
    return text if plain else json.dumps(text, ensure_ascii=False)


def _yaml(value: Any, indent: int = 0) -> list[str]:
    """Block YAML of nested dicts / lists / scalars (enough for a card's front matter)."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, dict | list) and v:
                lines.append(f"{pad}{k}:")
                lines += _yaml(v, indent + 2)
            else:
                lines.append(f"{pad}{k}: {_yaml_scalar(v) if not isinstance(v, dict | list) else '[]'}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                sub = _yaml(item, indent + 2)
                lines.append(f"{pad}- {sub[0].lstrip()}")
                lines += sub[1:]
            else:
                lines.append(f"{pad}- {_yaml_scalar(item)}")
    return lines


def features(first_rank: bool) -> list[dict[str, Any]]:
    """``dataset_info.features`` of the JSONL records."""
    feats: list[dict[str, Any]] = [{"name": "query", "dtype": "string"},
                                   {"name": "docs", "sequence": "string"},
                                   {"name": "scores", "sequence": "float64"}]
    if first_rank:
        feats.append({"name": "first_rank", "dtype": "int64"})
    return feats


def front_matter(cfg: Config, meta: dict[str, Any], build: Path) -> dict[str, Any]:
    """The card's YAML front matter as data (see the module docstring)."""
    lic = most_restrictive([s.license for s in cfg.sources])
    splits = [{"split": "train", "path": "train.jsonl"}]
    if meta.get("val_samples"):
        splits.append({"split": "validation", "path": "val.jsonl"})
    configs: list[dict[str, Any]] = [{"config_name": "default", "default": True, "data_files": splits}]
    st_files = [{"split": split, "path": f"st/{split}/*.arrow"} for split in ("train", "validation")
                if (build / "st" / split).is_dir()]
    if st_files:
        configs.append({"config_name": "sentence-transformers", "data_files": st_files})
    return {
        "language": ["ko"],
        **license_front_matter(lic),
        "task_categories": ["text-retrieval"],
        "task_ids": ["document-retrieval"],
        "size_categories": [size_category(int(meta.get("total_queries", 0)))],
        "source_datasets": [s.name for s in cfg.sources],
        "tags": ["sparse-retrieval", "knowledge-distillation", "neural-sparse", "opensearch", "korean"],
        "pretty_name": "Korean neural sparse retrieval distillation data",
        "configs": configs,
        "dataset_info": {
            "features": features(cfg.export.first_rank),
            "splits": [{"name": "train", "num_examples": int(meta.get("train_samples", 0))},
                       {"name": "validation", "num_examples": int(meta.get("val_samples", 0))}],
        },
    }


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return out + [""]


def _license_section(cfg: Config) -> list[str]:
    lics = [s.license.strip() for s in cfg.sources]
    chosen = most_restrictive(lics)
    lines = ["## License", ""]
    if len(set(lics)) > 1:
        lines.append(f"The sources are under different licenses. Every record may hold text of any source, so "
                     f"this dataset takes the most restrictive of them: **{chosen}**.")
    elif chosen == "unknown":
        lines.append("**unknown**: no `[[sources]] license` is set in the config that made it.")
    else:
        lines.append(f"**{chosen}**, the license of its source texts.")
    lines.append("")
    lines += _table([(s.name, s.license or "(not set)",
                      HUB_LICENSES.get(s.license.lower(), OTHER_LICENSES.get(s.license.lower(), "")))
                     for s in cfg.sources], ["source", "license", "text"])
    if chosen == "unknown" and len(set(lics)) > 1:
        lines += ["A source has no `license` in the config: set `[[sources]] license` for each.", ""]
    return lines


def render(cfg: Config, meta: dict[str, Any], build: Path, command: str | None = None) -> str:
    """The whole card (front matter + body) for the export being built in ``build``."""
    n, f, t, m = cfg.negatives, cfg.filters, cfg.teacher, cfg.mining
    teacher = t.kind + (f" ({t.cross_encoder})" if t.kind != "biencoder" else f" ({cfg.embedding.model})")
    head = ["---", *_yaml(front_matter(cfg, meta, build)), "---", ""]
    body = [
        "# Korean neural sparse retrieval distillation data", "",
        f"Made by ko-sparse-etl from {', '.join(s.name for s in cfg.sources)} on {meta.get('created_at', '')}.", "",
        "## Records", "",
        "Each line of `train.jsonl` / `val.jsonl` (and each row of `datasets/{train,val}`, which "
        "`datasets.load_from_disk` reads) is one query with its documents and teacher scores:", "",
        "```json",
        '{"query": "...", "docs": ["positive", "negative 1", "..."], "scores": [30.0, 12.3, "..."]'
        + (', "first_rank": 1}' if cfg.export.first_rank else "}"),
        "```", "",
        f"- `docs`: {cfg.docs_per_query} passages, the positive first, then the negatives by score descending "
        f"({n.hard} hard negatives mined by nearest-neighbour search, {n.related} from the positive's cluster, "
        f"{n.easy} random).",
        f"- `scores`: the teacher's score of each doc for the query, min-max normalized per record and times "
        f"{cfg.scoring.scale:g} (the positive has {cfg.scoring.scale:g}, the least similar doc 0).",
    ]
    if cfg.export.first_rank:
        body.append("- `first_rank`: the positive's rank among the passages of other documents retrieved for the "
                    f"query (1 = ranked first; at most mining.search_depth + 1 = {m.search_depth + 1}), which "
                    "the OpenSearch trainer's `first_rank_thresh` filters on.")
    if (build / "st").is_dir():
        body.append("- `st/train`, `st/validation`: the same records for sentence-transformers' `SparseEncoder` "
                    "(`query`, `positive`, `negative_1` .., `label` = the scores in that order; "
                    "`SparseDistillKLDivLoss`).")
    if (build / "idf.json").is_file():
        body.append(f"- `idf.json`: idf of each token of `{cfg.export.idf_tokenizer}` over the passages, for "
                    "inference-free sparse models.")
    body.append("")
    body += ["## Statistics", ""]
    body += _table([("records", f"{meta.get('total_queries', 0):,}"),
                    ("train / validation", f"{meta.get('train_samples', 0):,} / {meta.get('val_samples', 0):,}"),
                    ("docs per record", meta.get("docs_per_query", cfg.docs_per_query)),
                    ("passages", f"{meta.get('layers', {}).get('passages', 0):,}"),
                    ("queries generated", f"{meta.get('queries_total', 0):,}")], ["", "count"])
    for title, key in (("Records by query method", "queries_by_method"), ("Records by source", "queries_by_source"),
                       ("Queries dropped", "dropped_queries")):
        if meta.get(key):
            body += [f"{title}:", ""] + _table(sorted(meta[key].items()), ["", "count"])
    if meta.get("candidate_filters"):
        body += ["Candidates removed by each filter:", ""]
        rows = [(k, f"{v:,}", FILTER_MEANINGS.get(k, "")) for k, v in sorted(meta["candidate_filters"].items())]
        body += _table(rows, ["filter", "candidates", "meaning"])
    plots = [(name, cap) for name, cap in PLOT_CAPTIONS if (build / "report" / name).is_file()]
    if plots:
        body += ["## Plots", ""] + [f"![{cap}](report/{name})" for name, cap in plots] + [""]
    if (build / "report" / "report.md").is_file():
        body += ["The full quality report, with sample records: [report/report.md](report/report.md).", ""]
    body += ["## Generation settings", ""]
    body += _table([("embedding model", cfg.embedding.model), ("teacher", teacher),
                    ("negatives", f"hard {n.hard}, related {n.related}, easy {n.easy}"),
                    ("mining", f"rank window {m.skip_top + 1}..{meta.get('rank_window', m.top_k)}, "
                               f"search depth {m.search_depth}"),
                    ("filters", f"exclude_same_document={f.exclude_same_document}, "
                                f"relative_margin={f.relative_margin} ({f.margin_baseline} baseline), "
                                f"absolute_margin={f.absolute_margin}, "
                                f"near_duplicate_cosine={f.near_duplicate_cosine}, "
                                f"positive_max_rank={f.positive_max_rank}"),
                    ("query methods", ", ".join(cfg.queries.methods)),
                    ("validation split", f"{cfg.split.val_fraction:g} of the documents"),
                    ("seed", cfg.run.seed)], ["setting", "value"])
    body += ["The full configuration is in `metadata.json` (`config`).", "",
             "Made with:", "", "```sh", command or invocation(), "```", ""]
    body += _license_section(cfg)
    return "\n".join(head + body).rstrip("\n") + "\n"


def parse_front_matter(text: str) -> dict[str, Any]:
    """Read a card's front matter back (needs PyYAML; used by tests and ``publish``)."""
    import yaml

    if not text.startswith("---\n"):
        raise ValueError("the card has no YAML front matter")
    end = text.index("\n---\n", 4)
    return yaml.safe_load(text[4:end])
