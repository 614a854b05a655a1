"""Synthetic Korean-like corpus for the scale benchmarks (issue 4).

Writes ``--docs N`` documents into ``--files K`` chunk files in both input shapes the pipeline reads:

* ``wikipedia_ko/part-*.jsonl``  ``{id, url, title, text, language}``, light markup (some headings);
* ``namuwiki/part-*.json``       raw Namuwiki dump shape ``{namespace, title, text, contributors}``
  as a JSON array, and every other Namuwiki file as ``part-*.parquet`` (same columns), with NamuMark
  markup: ``[[link|label]]``, ``'''bold'''``, ``''italic''``, ``== heading ==``, ``|| tables ||``
  with ``<cell attributes>``, ``[* footnotes]`` (some holding links), ``[include(...)]``, ``[목차]``,
  ``[[분류:...]]``, ``[[파일:...]]``, ``* lists``, ``## comments``, ``{{{+1 ...}}}``, ``~~strike~~``.

Text: syllables from the Hangul block (Zipf-weighted), words of 1-5 syllables (some with a particle),
sentences of 4-16 words ending in 다. / 요. / ?, paragraphs separated by a blank line. Document
lengths follow a lognormal (median ``--median`` = 1,500 chars, ``--sigma`` 0.9), clipped to
50..200,000 characters. Some records exercise the filters: redirects, other namespaces, exact
duplicates, very short texts, and (JSONL) a few malformed lines.

Speed: sentences are drawn from a bank of pre-built units (numpy-vectorized choices; a document
is one ``str.join`` of its units), so 1M documents take a few minutes; deterministic by ``--seed``
(each file has its own generator derived from the seed and the file number).

    python benchmarks/synth.py --docs 100000 --files 8 --out /tmp/synth_100k
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HANGUL_FIRST, HANGUL_COUNT = 0xAC00, 11172
PARTICLES = ["은", "는", "이", "가", "을", "를", "에", "의", "로", "와", "과", "에서", "으로", "도", "만"]
ENDINGS = ["다.", "다.", "다.", "다.", "다.", "다.", "다.", "요.", "요.", "?"]  # 다. 70 %, 요. 20 %, ? 10 %
WIKI_PREFIX = "https://ko.wikipedia.org/wiki/"


class Bank:
    """Vocabulary and pre-built text units (sentences and block markup), each with a trailing separator."""

    def __init__(self, seed: int, n_vocab: int = 60_000, n_sentences: int = 200_000):
        rng = np.random.default_rng([seed, 0])
        # syllables: a random permutation of the Hangul block, Zipf-weighted so some are common
        syl_perm = rng.permutation(HANGUL_COUNT)
        syl_w = 1.0 / np.arange(1, HANGUL_COUNT + 1) ** 0.9
        syl_w /= syl_w.sum()
        lens = rng.choice([1, 2, 3, 4, 5], size=n_vocab, p=[0.12, 0.38, 0.30, 0.13, 0.07])
        syl = syl_perm[rng.choice(HANGUL_COUNT, size=int(lens.sum()), p=syl_w)] + HANGUL_FIRST
        chars = "".join(map(chr, syl.tolist()))
        ends = np.cumsum(lens)
        starts = ends - lens
        self.vocab = [chars[s:e] for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]
        word_w = 1.0 / np.arange(1, n_vocab + 1) ** 1.05
        self.word_cdf = np.cumsum(word_w / word_w.sum())
        self.rng = rng
        self.plain = self._sentences(n_sentences, markup=False)
        self.marked = self._sentences(n_sentences, markup=True)
        self.blocks = self._blocks(20_000)

    # ---- words and sentences --------------------------------------------------------------
    def words(self, n: int, zipf: bool = True, rng: np.random.Generator | None = None) -> list[str]:
        """``n`` vocabulary words, Zipf-distributed (or uniform)."""
        rng = rng or self.rng
        if zipf:
            idx = np.minimum(np.searchsorted(self.word_cdf, rng.random(n)), len(self.vocab) - 1)
        else:
            idx = rng.integers(0, len(self.vocab), size=n)
        return [self.vocab[i] for i in idx.tolist()]

    def titles(self, n: int, rng: np.random.Generator) -> list[str]:
        """``n`` two-word titles (uniform words, so titles rarely collide)."""
        w = self.words(2 * n, zipf=False, rng=rng)
        return [f"{a} {b}" for a, b in zip(w[0::2], w[1::2], strict=True)]

    def _sentences(self, n: int, markup: bool) -> list[str]:
        rng = self.rng
        n_words = rng.integers(4, 17, size=n)
        words = self.words(int(n_words.sum()))
        particle = rng.random(len(words)) < 0.45
        pchoice = rng.integers(0, len(PARTICLES), size=len(words))
        numbers = rng.random(len(words)) < 0.03
        years = rng.integers(1392, 2025, size=len(words))
        out: list[str] = []
        pos = 0
        for k in n_words.tolist():
            ws = []
            for j in range(pos, pos + k):
                w = f"{years[j]}년" if numbers[j] else words[j]
                if particle[j] and j < pos + k - 1:
                    w += PARTICLES[pchoice[j]]
                ws.append(w)
            pos += k
            ws[-1] += ENDINGS[int(rng.integers(0, len(ENDINGS)))]
            if markup:
                ws = self._inline_markup(ws)
            out.append(" ".join(ws))
        return out

    def _inline_markup(self, ws: list[str]) -> list[str]:
        rng = self.rng
        r = rng.random(8)
        n = len(ws) - 1  # keep the sentence ending unmarked
        if r[0] < 0.35:  # one or two links
            for _ in range(1 + int(r[1] < 0.4)):
                j = int(rng.integers(0, n))
                ws[j] = f"[[{ws[j]}]]" if r[2] < 0.5 else f"[[{self.words(1)[0]} {ws[j]}|{ws[j]}]]"
        if r[3] < 0.12:
            j = int(rng.integers(0, n))
            ws[j] = f"'''{ws[j]}'''"
        if r[4] < 0.04:
            j = int(rng.integers(0, n))
            ws[j] = f"''{ws[j]}''"
        if r[5] < 0.10:  # footnote after a word, sometimes holding a link
            j = int(rng.integers(0, n))
            inner = " ".join(self.words(int(rng.integers(2, 7))))
            if r[6] < 0.3:
                inner += f" [[{self.words(1)[0]}]]"
            ws[j] += f"[* {inner}]"
        if r[7] < 0.02:
            j = int(rng.integers(0, n))
            ws[j] = f"~~{ws[j]}~~ {ws[j]}"
        return ws

    def _blocks(self, n: int) -> list[str]:
        """Line-level NamuMark: headings, table rows, macros, lists, comments, file/category links."""
        rng = self.rng
        out = []
        kinds = rng.choice(9, size=n, p=[0.30, 0.25, 0.06, 0.05, 0.10, 0.06, 0.06, 0.06, 0.06])
        for k in kinds.tolist():
            w = self.words(4)
            if k == 0:
                out.append(f"== {w[0]} ==" if rng.random() < 0.7 else f"=== {w[0]} {w[1]} ===")
            elif k == 1:
                out.append(f"||<bgcolor=#f0f0f0> {w[0]} || {w[1]} {w[2]} ||\n|| {w[3]} ||[[{w[1]}]] ||")
            elif k == 2:
                out.append(f"[include(틀:{w[0]} {w[1]})]")
            elif k == 3:
                out.append("[목차]")
            elif k == 4:
                out.append(f"* {w[0]} {w[1]}{PARTICLES[0]} {w[2]}이다.")
            elif k == 5:
                out.append(f"## {w[0]} {w[1]} 편집 주석")
            elif k == 6:
                out.append(f"[[분류:{w[0]}]]")
            elif k == 7:
                out.append(f"[[파일:{w[0]}.jpg|width=300]]")
            else:
                out.append(f"{{{{{{+1 '''{w[0]} {w[1]}'''}}}}}}[br]{w[2]}")
        return out


class UnitTable:
    """Units with their trailing separator as one object array, plus lengths, for vectorized draws."""

    def __init__(self, sentences: list[str], blocks: list[str], block_p: float):
        seps = [" "] * 15 + ["\n"] + ["\n\n"] * 4  # 75 % same paragraph, 5 % line break, 20 % new paragraph
        sent_units = [s + sep for s in sentences for sep in (" ", "\n", "\n\n")]
        self.n_sent = len(sentences)
        self.sep_p = np.array([seps.count(" "), seps.count("\n"), seps.count("\n\n")], dtype=float) / len(seps)
        block_units = ["\n" + b + "\n" for b in blocks]
        self.units = np.array(sent_units + block_units, dtype=object)
        self.lens = np.array([len(u) for u in self.units.tolist()], dtype=np.int64)
        self.n_block = len(blocks)
        self.block_p = block_p

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` unit indexes: sentences (uniform, with a separator) or, with ``block_p``, block units."""
        sent = rng.integers(0, self.n_sent, size=n) * 3 + rng.choice(3, size=n, p=self.sep_p)
        if self.block_p > 0:
            is_block = rng.random(n) < self.block_p
            blk = 3 * self.n_sent + rng.integers(0, self.n_block, size=n)
            sent = np.where(is_block, blk, sent)
        return sent

    def texts(self, rng: np.random.Generator, targets: np.ndarray) -> list[str]:
        """One text per target length: consecutive units of one random stream, cut at the targets."""
        mean_len = float(self.lens.mean())
        need = int(targets.sum() / mean_len * 1.15) + 64 * len(targets) + 1000
        stream = self.draw(rng, need)
        cum = np.cumsum(self.lens[stream])
        while cum[-1] < targets.sum() + 10_000:  # rare: extend the stream
            more = self.draw(rng, need // 4 + 1000)
            stream = np.concatenate([stream, more])
            cum = np.cumsum(self.lens[stream])
        bounds = np.searchsorted(cum, np.cumsum(targets)) + 1
        i = np.arange(len(bounds))
        bounds = np.maximum.accumulate(bounds - i) + i  # at least one unit per document
        starts = np.concatenate([[0], bounds[:-1]])
        units = self.units[stream[: bounds[-1]]]
        return ["".join(units[s:e]).strip() for s, e in zip(starts.tolist(), bounds.tolist(), strict=True)]


def doc_lengths(rng: np.random.Generator, n: int, median: float, sigma: float) -> np.ndarray:
    """Lognormal document lengths in characters, clipped to 50..200,000."""
    return np.clip(rng.lognormal(np.log(median), sigma, size=n), 50, 200_000).astype(np.int64)


def split_docs(n_docs: int, n_files: int) -> list[tuple[str, int, int]]:
    """(kind, first doc number, count) per file: half the files Wikipedia JSONL, half Namuwiki."""
    n_wiki_files = max(1, n_files // 2)
    n_namu_files = max(1, n_files - n_wiki_files)
    n_wiki = n_docs // 2
    plan = []
    for kind, nf, first, total in (("wiki", n_wiki_files, 0, n_wiki),
                                   ("namu", n_namu_files, n_wiki, n_docs - n_wiki)):
        edges = np.linspace(0, total, nf + 1).astype(int)
        for j in range(nf):
            plan.append((kind, first + int(edges[j]), int(edges[j + 1] - edges[j])))
    return plan


def generate_file(bank: Bank, tables: dict[str, UnitTable], kind: str, file_no: int, kind_no: int,
                  first: int, count: int, out: Path, seed: int, median: float, sigma: float) -> Path:
    """Write one chunk file and return its path."""
    rng = np.random.default_rng([seed, 1, file_no])
    targets = doc_lengths(rng, count, median, sigma)
    texts = tables[kind].texts(rng, targets)
    titles = bank.titles(count, rng)
    # exact duplicates of an earlier document in the same file (0.3 %)
    dup = np.nonzero(rng.random(count) < 0.003)[0]
    for j in dup.tolist():
        if j >= 7:
            texts[j] = texts[j - 7]
    if kind == "wiki":
        path = out / "wikipedia_ko" / f"part-{kind_no:04d}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        bad = rng.random(count) < 0.0002
        with open(path, "w", encoding="utf-8") as fh:
            buf = []
            for j in range(count):
                if bad[j]:
                    buf.append('{"id": "broken", "title": "' + titles[j] + '", "text": "잘린 줄')
                    continue
                buf.append(json.dumps({"id": str(first + j), "url": WIKI_PREFIX + titles[j].replace(" ", "_"),
                                       "title": titles[j], "text": texts[j], "language": "ko"},
                                      ensure_ascii=False))
                if len(buf) >= 2000:
                    fh.write("\n".join(buf) + "\n")
                    buf = []
            if buf:
                fh.write("\n".join(buf) + "\n")
        return path
    # Namuwiki raw shape: some redirects and other namespaces
    r = rng.random(count)
    namespace = np.where(r < 0.04, rng.choice([1, 2, 6, 10], size=count), 0).astype(np.int64)
    redirect = (r >= 0.04) & (r < 0.07)
    for j in np.nonzero(redirect)[0].tolist():
        texts[j] = ("#redirect " if j % 2 else "#넘겨주기 ") + titles[(j + 1) % count]
    n_contrib = rng.integers(1, 6, size=count)
    contributors = [[f"user{int(x)}" for x in rng.integers(0, 50_000, size=k)] for k in n_contrib.tolist()]
    if kind_no % 2 == 1:
        path = out / "namuwiki" / f"part-{kind_no:04d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        table = pa.table({"namespace": pa.array(namespace, pa.int64()), "title": pa.array(titles, pa.string()),
                          "text": pa.array(texts, pa.large_string()),
                          "contributors": pa.array(contributors, pa.list_(pa.string()))})
        pq.write_table(table, path, compression="zstd", row_group_size=10_000)
        return path
    path = out / "namuwiki" / f"part-{kind_no:04d}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("[\n")
        for j in range(count):
            rec = {"namespace": int(namespace[j]), "title": titles[j], "text": texts[j],
                   "contributors": contributors[j]}
            fh.write(("" if j == 0 else ",\n") + json.dumps(rec, ensure_ascii=False))
        fh.write("\n]\n")
    return path


def generate(out: Path, n_docs: int, n_files: int, seed: int = 0, median: float = 1500.0,
             sigma: float = 0.9, log=print) -> dict:
    """Write the corpus under ``out``; return a summary (files, bytes, seconds, length stats)."""
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    bank = Bank(seed)
    tables = {"wiki": UnitTable(bank.plain, bank.blocks[:1000], block_p=0.01),
              "namu": UnitTable(bank.marked, bank.blocks, block_p=0.18)}
    log(f"  bank built in {time.perf_counter() - t0:.1f}s")
    files = []
    counters = {"wiki": 0, "namu": 0}
    for file_no, (kind, first, count) in enumerate(split_docs(n_docs, n_files)):
        t1 = time.perf_counter()
        kind_no = counters[kind]
        counters[kind] += 1
        p = generate_file(bank, tables, kind, file_no, kind_no, first, count, out, seed, median, sigma)
        files.append(str(p))
        log(f"  {p.relative_to(out)}: {count:,} docs, {p.stat().st_size / 1e6:,.0f} MB, "
            f"{time.perf_counter() - t1:.1f}s")
    total_bytes = sum(Path(f).stat().st_size for f in files)
    summary = {"out": str(out), "docs": n_docs, "files": files, "bytes": total_bytes, "seed": seed,
               "median": median, "sigma": sigma, "seconds": round(time.perf_counter() - t0, 1)}
    (out / "synth.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


def source_overrides(out: Path) -> list[str]:
    """``--set`` overrides pointing the pipeline's two sources at a generated corpus."""
    out = Path(out).resolve()
    return [
        f'sources.0.paths=["{out}/wikipedia_ko/*.jsonl"]',
        f'sources.1.paths=["{out}/namuwiki/*.json", "{out}/namuwiki/*.parquet"]',
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=10_000)
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--median", type=float, default=1500.0)
    ap.add_argument("--sigma", type=float, default=0.9)
    a = ap.parse_args()
    s = generate(a.out, a.docs, a.files, a.seed, a.median, a.sigma)
    print(f"{s['docs']:,} docs in {len(s['files'])} files, {s['bytes'] / 1e9:.2f} GB, {s['seconds']}s")


if __name__ == "__main__":
    main()
