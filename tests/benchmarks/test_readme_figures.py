"""The figures README.md and benchmarks/README.md quote equal those of the results files they name,
cell by cell, with their sign, in their place; and a block quoting figures names its results files.

Attribution. A block of a README (lines between blank lines, code fences skipped) that names results
files (``results/....md|txt|json``) or folders (``results/.../``: every ``.md`` / ``.txt`` file under
it, and every ``.json`` file that carries a ``markdown`` field) attributes its figures to them; a table
or list right after a block that names them and ends with ``:`` is attributed to them too. Any other
block that quotes a figure quotes one without a source.

Figures. Decimals (``90.23``), integers with thousands separators (``2,938``), scientific notation
(``7e-16``), figures with a unit (``596 MiB``, ``45 s``, ``12x``, ``32%``), signed figures (``+3``)
and counts (``200 of 200``). Settings are not figures: plain integers (``2000 episodes``), labels
(``5-way``, ``vig_small_28``, ``Conv-4``), dates, versions, commits, learning rates, "95% CI" (or
"95 % confidence") and code spans. A README figure equals a file figure when both have the same sign (in prose, a ``+`` or no
sign for a positive one), the file states it at least as precisely, its value rounded to the
README's precision reads the same (a README's 1.9 matches a file's 1.89, not 1.8 nor -1.89) and a
unit on both sides (a file's cell takes its column's: ``peak MiB``) is the same.

Place. Tables: every row of an attributed table equals a row of a table of the named files cell by
cell, columns matched by their header (every number and word of a cell; plain integers included).
Prose: every figure, with the ``+- half-width`` and ``(p=...)`` that follow it, is held by a cell (or
a line of text) of the named files, and the words around it name that cell: its row's words and its
column header, each matching word of the README counting more the nearer it is to the figure
(:func:`score`). The cell so named best among those holding the figure sign aside must hold it with
its sign, and no other table row may be named better by its row's words alone. The words around a
figure are those since the previous figure of its sentence and the first three after it (up to a
punctuation mark, a conjunction or the next figure); figures listed with ``/`` share them.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import List, Optional

import pytest

from .conftest import ROOT, split_row

READMES = {ROOT / "README.md": ROOT, ROOT / "benchmarks" / "README.md": ROOT / "benchmarks"}

PATH = re.compile(r"(?:benchmarks/)?results/[\w./-]*")
# replaced by blanks before figures are read (same length, so spans still index the original text)
NOT_FIGURES = re.compile("|".join([
    r"`[^`]*`", r"\]\([^)]*\)", r"https?://\S+",                      # code spans, link targets, URLs
    r"\b\d{4}-\d\d-\d\d(?:T[\d:]+)?\b", r"\b\d{1,2}:\d\d\b",          # dates, times
    r"\b\d+\.\d+\.\d+\b",                                            # versions
    r"(?i:\b(?:python|torch|torchvision|timm|easyfsl|learn2learn|scipy|numpy|mlflow|cu)\s*\d+(?:\.\d+)+\+?(?![\w%]))",
    r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{7,40}\b",              # commits, bank ids
    r"\b9[059] ?% (?:CI|confidence)\b", r"\blr\s+[\d.e-]+",            # settings
]))
NUMBER = re.compile(r"(?P<sign>[+-])?(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)(?P<exp>e[+-]?\d+)?"
                    r"(?P<unit>\s?%|x|M|k|\s?(?:ms|s|min|minutes|h|hours|KiB|MiB|GiB|MB|GB)(?![\w]))?")
UNITS = {"%", "ms", "s", "min", "minutes", "h", "hours", "kib", "mib", "gib", "mb", "gb"}  # headers are lower-cased
COUNT = re.compile(r"(?<![\w.])\d+ of \d+(?![\w.])")
HALF_WIDTH = re.compile(r"\s*\+-\s*")
P_VALUE = re.compile(r"\s*(?:\(|,)\s*(?:t |W )?p ?[=<] ?")
STOP = {"the", "and", "for", "with", "from", "over", "per", "than", "that", "this", "its", "are", "was", "were",
        "not", "but", "all", "each", "every", "both", "one", "two", "three", "into", "when", "where", "which",
        "while", "after", "before", "against", "between", "only", "also", "then", "these", "those", "what", "has",
        "had", "have", "gives", "gain", "gains", "loses", "costs", "points", "way", "shot", "here", "there",
        "same", "other", "more", "less", "most", "least", "about", "below", "above", "under", "run", "runs"}


# ----- figures -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Figure:
    sign: str       # "+", "-", "" or "\u00b1" (a half-width, after "+-")
    num: str        # as written, thousands separators removed: "2938", "0.28", "7"
    exp: str        # "e-16" or ""
    unit: str       # "%", "x", "s", "MiB", ... or ""
    start: int = field(default=0, compare=False)
    end: int = field(default=0, compare=False)
    raw: str = field(default="", compare=False)    # as written: "2,938 s"

    @property
    def value(self) -> float:
        return float(("-" if self.sign == "-" else "") + self.num + self.exp)

    @property
    def decimals(self) -> int:
        return len(self.num.split(".")[1]) if "." in self.num else 0

    @property
    def checked(self) -> bool:
        """A figure of a result (not a setting such as ``2000 episodes``) in prose."""
        return bool("." in self.num or self.exp or self.unit or self.sign or "," in self.raw)

    def __str__(self):
        return self.raw


def masked(text: str) -> str:
    return NOT_FIGURES.sub(lambda m: " " * len(m.group()), text)


def numbers(text: str) -> List[Figure]:
    """Every number of ``text`` that is not part of a label, a date, a version or code, in order."""
    text, out = masked(text), []
    for m in NUMBER.finditer(text):
        start, sign = m.start(), m.group("sign") or ""
        before = text[start - 1] if start else " "
        if sign and (before.isalnum() or before in ".)"):  # a hyphen (6.3-6.8, VTAB-1k), not a sign
            if before.isalpha():
                continue  # part of a name: Conv-4, VTAB-1k, ViG-Ti
            sign, start = "", start + 1
            before = text[start - 1]
        if before.isalnum() or before in "._,":
            continue
        if re.search(r"\+-\s*$", text[:start]) or (sign == "-" and before == "+"):
            sign, start = "\u00b1", m.start("num")  # a half-width (+- 0.31): never a signed difference
        end = m.end()
        after = text[end:end + 2]
        if after[:1].isalnum() or after[:1] == "_" or re.match(r"-[A-Za-z]", after) or re.match(r"[.,]\d", after):
            continue  # 5-way, vig_small_28, 3x3, 1.2.3
        unit = (m.group("unit") or "").strip()
        out.append(Figure(sign, m.group("num").replace(",", ""), m.group("exp") or "", unit, start, end,
                          text[start:end].strip()))
    return out


def equal(readme: Figure, file: Figure, prose: bool = False) -> bool:
    """``readme`` states ``file`` at the README's precision, with its sign (and unit, when both give one)."""
    if prose:
        if (readme.sign == "-") != (file.sign == "-") or (readme.sign == "+" and file.sign == "" and file.value == 0):
            return False
        if (readme.sign == "\u00b1") != (file.sign == "\u00b1") and (readme.sign or file.sign == "\u00b1"):
            return False  # a signed figure is not a half-width, nor the other way round
    elif readme.sign != file.sign:
        return False
    if readme.unit and file.unit and readme.unit != file.unit:
        return False
    if bool(readme.exp) == bool(file.exp) and file.decimals < readme.decimals:
        return False  # the README claims more precision than the file has
    form = f".{readme.decimals}{'e' if readme.exp else 'f'}"
    return format(abs(file.value), form) == format(abs(readme.value), form)


# ----- words: what a sentence names, what labels a row -------------------------------------------
def word_list(text: str, parts: str = "-_") -> List[set]:
    """Per word of ``text``, in order, its lower-case forms (the word, its hyphen-free form and its parts
    split at ``parts``), without figures and stop words; words left with no form are dropped. A README's
    words are split at hyphens and underscores, a label's at underscores only (so ``head-only`` names
    the row ``head``, and ``tuning`` does not name ``full fine-tuning``)."""
    out = []
    for f in reversed(numbers(text)):
        text = text[:f.start] + " " + text[f.end:]
    for token in re.split(r"[^a-z0-9_+-]+", text.lower().replace("'s ", " ")):
        token = token.strip("+-_")
        split = re.split(f"[{parts}]", token)
        forms = {w for w in {token, token.replace("-", "").replace("_", ""), *split}
                 if len(w) >= 3 and re.search("[a-z]", w) and w not in STOP}
        if forms:
            out.append(forms)
    return out


def words(text: str, parts: str = "-_") -> set:
    """All forms of the words of ``text`` (see :func:`word_list`)."""
    return set().union(*word_list(text, parts))


# ----- results files: rows and lines -------------------------------------------------------------
@dataclass
class Record:
    """One table cell (``cells``: its whole row by header; ``label``: the row's words and the cell's
    column header) or one line of text of a results file."""
    source: str
    text: str
    label: set              # the row's words and the cell's column header (a line: its words)
    figures: List[Figure]
    header: Optional[tuple] = None
    cells: Optional[dict] = None
    key: set = field(default_factory=set)   # the row's words alone


def fixed_width(line: str) -> list:
    return [c for c in re.split(r"\s{2,}", line.strip()) if c]


def normal_header(cell: str) -> str:
    return re.sub(r"\s+", " ", cell.replace("**", "").replace("`", "")).strip().lower()


def header_names(cells: list) -> list:
    """Normalised column headers, a repeated one numbered (``x vs smallest``, ``x vs smallest #2``)."""
    out = []
    for cell in cells:
        name = normal_header(cell)
        out.append(name if name not in out else f"{name} #{sum(n.split(' #')[0] == name for n in out) + 1}")
    return out


def header_unit(header: str) -> str:
    """The unit a column header gives its figures: ``peak MiB`` -> MiB, ``train s/episode`` -> s (not ``ep/s``)."""
    for token in re.split(r"[\s()]+", header):
        base = token.split("/")[0]
        if base in UNITS:
            return {"mib": "MiB", "gib": "GiB", "kib": "KiB", "mb": "MB", "gb": "GB"}.get(base, base)
    return ""


def tables(lines: list):
    """``(header, rows, consumed line indices)`` of the Markdown and fixed-width tables of ``lines``."""
    i, out = 0, []
    while i < len(lines):
        line = lines[i]
        if line.startswith("|") and i + 1 < len(lines) and re.fullmatch(r"\|[\s:|-]+\|?", lines[i + 1].strip()):
            j = i + 2
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            out.append((split_row(line), [split_row(r) for r in lines[i + 2:j]], set(range(i, j))))
            i = j
            continue
        width = len(fixed_width(line))
        if width >= 3 and not line.startswith(("#", "|")):
            j = i + 1
            while j < len(lines) and len(fixed_width(lines[j])) == width and not lines[j].startswith("|"):
                j += 1
            if j - i >= 2:
                out.append((fixed_width(line), [fixed_width(r) for r in lines[i + 1:j]], set(range(i, j))))
                i = j
                continue
        i += 1
    return out


def file_texts(path: Path) -> list:
    """The texts a results file offers: a JSON file's ``markdown`` field, else its lines."""
    text = path.read_text()
    if path.suffix == ".json":
        data = json.loads(text)
        if isinstance(data, dict) and isinstance(data.get("markdown"), str):
            return [data["markdown"]]
    return [text]


def records(path: Path) -> List[Record]:
    out = []
    for text in file_texts(path):
        lines = text.splitlines()
        in_table = set()
        for header, rows, consumed in tables(lines):
            in_table |= consumed
            names = tuple(header_names(header))
            for row in rows:
                if len(row) != len(header):
                    continue
                row_words, cells = set().union(*(words(c, "_") for c in row)), dict(zip(names, row))
                for h, c in cells.items():
                    figures = [f if f.unit else replace(f, unit=header_unit(h)) for f in numbers(c)]
                    out.append(Record(path.name, c, row_words | words(h, "_"), figures, names, cells, row_words))
        for i, line in enumerate(lines):
            if i not in in_table and line.strip():
                out.append(Record(path.name, line, words(line, "_"), numbers(line)))
    return out


def files_named(path: str, base: Path) -> list:
    full = ROOT / path if path.startswith("benchmarks/") else base / path
    if path.endswith("/"):
        found = sorted(p for p in full.rglob("*") if p.suffix in (".md", ".txt") or
                       (p.suffix == ".json" and "markdown" in json.loads(p.read_text())))
        return found or [full]  # a folder without results files: reported as missing
    return [full]


# ----- READMEs: attributed blocks ----------------------------------------------------------------
def blocks(text: str) -> list:
    """Blocks of consecutive non-blank lines outside code fences."""
    out, current, fenced = [], [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            if current:
                out.append(current)
            current = []
            continue
        if fenced:
            continue
        if line.strip():
            current.append(line)
        elif current:
            out.append(current)
            current = []
    if current:
        out.append(current)
    return out


def named_paths(text: str) -> list:
    """Results files (``.md``, ``.txt``, ``.json``) and folders (ending in ``/``) named in ``text``."""
    out = []
    for m in PATH.finditer(text):
        path = m.group().rstrip(".,;:")
        if path.endswith((".md", ".txt", ".json", "/")) and path not in out:
            out.append(path)
    return out


def sources(text: str) -> list:
    """``(block lines, [named paths])`` for every block: the results files a block names, or for a table
    or list right after a block that names them and ends with ``:``, that block's; ``[]`` for the others."""
    out, carried = [], []
    for block in blocks(text):
        paths = named_paths("\n".join(block))
        is_table = all(line.startswith("|") for line in block)
        is_list = re.match(r"(?:[*-]|\d+\.) ", block[0]) is not None
        out.append((block, paths or (carried if is_table or is_list else [])))
        if is_table or is_list:
            continue  # consecutive tables and lists share the intro's files
        carried = paths if paths and block[-1].rstrip().endswith(":") else []
    return out


def attributed(text: str) -> list:
    """``(block lines, [named paths])`` of the blocks whose figures come from results files."""
    return [(block, paths) for block, paths in sources(text) if paths]


# ----- the checks --------------------------------------------------------------------------------
def same_cell(readme: str, file: str) -> bool:
    """Cell equality: the same words, and the same numbers (every one, with its sign) at the README's precision."""
    a, b = readme.replace("**", "").strip(), file.replace("**", "").strip()
    fa, fb = numbers(a), numbers(b)

    def residue(text, figures):
        for f in reversed(figures):
            text = text[:f.start] + "#" + text[f.end:]
        return re.sub(r"\s+", " ", text.replace("`", "")).strip()

    return (residue(a, fa) == residue(b, fb) and len(fa) == len(fb)
            and all(equal(x, y) for x, y in zip(fa, fb)))


def check_table(rows: list, recs: List[Record]) -> list:
    header = header_names(split_row(rows[0]))
    body = [split_row(r) for r in rows[2:]] if len(rows) > 1 and set(rows[1]) <= set("|-: ") else \
        [split_row(r) for r in rows[1:]]
    rows_seen = {id(r.cells): r for r in recs if r.cells is not None}  # a row's cells are one record each
    candidates = [r for r in rows_seen.values() if all(h in r.cells for h in header)]
    if not candidates:
        return [f"table with columns {header} matches no table of the named files"]
    problems = []
    for row in body:
        if len(row) != len(header):
            problems.append(f"row {row} has {len(row)} cells for {len(header)} columns")
            continue
        scored = [(sum(same_cell(c, r.cells[h]) for h, c in zip(header, row)), r) for r in candidates]
        best, rec = max(scored, key=lambda s: s[0])
        if best < len(header):
            wrong = [f"{h!r} reads {c!r}, the file {rec.cells[h]!r}" for h, c in zip(header, row)
                     if not same_cell(c, rec.cells[h])]
            problems.append(f"row {' | '.join(row)!r}: nearest file row ({rec.source}) differs: {'; '.join(wrong)}")
    return problems


def items(text: str):
    """Prose figures as ``(context words, [figures] or count, position)``: each figure with the
    half-width and p-values that follow it. Its context is the words since the previous figure of its
    sentence and the first three words after it (up to a punctuation mark, a conjunction or the next
    figure); figures
    listed with ``/`` share the words before the first and after the last."""
    figs = [f for f in numbers(text) if f.checked]
    counts = [m for m in COUNT.finditer(masked(text))]
    figs = [f for f in figs if not any(c.start() <= f.start < c.end() for c in counts)]
    tokens = sorted([(f.start, f.end, f) for f in figs] + [(c.start(), c.end(), c.group()) for c in counts],
                    key=lambda t: t[0])
    found, i, previous_end = [], 0, 0
    while i < len(tokens):
        start, end, tok = tokens[i]
        group = [tok]
        while isinstance(tok, Figure) and i + 1 < len(tokens) and isinstance(tokens[i + 1][2], Figure):
            gap = text[end:tokens[i + 1][0]]
            if HALF_WIDTH.fullmatch(gap) or P_VALUE.fullmatch(gap):
                i += 1
                end, group = tokens[i][1], group + [tokens[i][2]]
            else:
                break
        gap = text[previous_end:start]
        listed = bool(found) and "/" in gap and re.fullmatch(r"[\s()/]*(?:\(n\.s\.\)|\(t\b)?[\s()/]*", gap)
        following = text[end:tokens[i + 1][0] if i + 1 < len(tokens) else len(text)]
        after = " ".join(re.split(r"[,.;:()]|\b(?:and|or|but|while|against|than|vs)\b", following)[0].split()[:3])
        found.append([group, start, word_list(re.split(r"(?<=[a-z)%*])[.;]\s", gap)[-1])[::-1],
                      word_list(after), listed])
        previous_end = end
        i += 1
    out = []
    for k, (group, start, before, after, listed) in enumerate(found):
        first = k
        while found[first][4]:
            first -= 1
        last = k
        while last + 1 < len(found) and found[last + 1][4]:
            last += 1
        before, after = found[first][2], found[last][3]
        nearest_first = [w for pair in zip(before + [set()] * len(after), after + [set()] * len(before)) for w in pair if w]
        out.append((nearest_first, group, start))
    return out


def score(context: List[set], label: set) -> float:
    """How well ``context`` (word forms, nearest the figure first) names ``label``: each word of the
    context found in it adds ``1 / rank``."""
    return sum(1.0 / rank for rank, forms in enumerate(context, 1) if forms & label)


def cell_score(context: List[set], record: "Record") -> float:
    """How well ``context`` names a cell: its row's words first, its column's at half weight, so that
    "VGP gains +1.93 over the bare backbone" names VGP's cell against none, not none's against VGP
    (whose words are the same two names)."""
    if record.cells is None:
        return score(context, record.label)
    return score(context, record.key) + 0.5 * score(context, record.label - record.key)


def check_prose(text: str, recs: List[Record]) -> list:
    """Each prose figure is in the named files; of the rows holding it, the one its words name best
    holds it with its sign; and no other row of a table is named better by its own words than that one
    by its words and column."""
    problems, rows = [], {id(r.cells): r for r in recs if r.cells is not None}
    for context, group, _ in items(text):
        if isinstance(group[0], str):  # a count
            shown = group[0]
            holding = signed = [r for r in recs if shown in masked(r.text)]
        else:
            shown = " ".join(text[group[0].start:group[-1].end].split())
            holding = [r for r in recs if contains(r.figures, group, signed=False)]
            signed = [r for r in holding if contains(r.figures, group)]
        if not holding:
            problems.append(f"figure {shown!r} is in no named file")
            continue
        seen = " ".join(sorted(set().union(*context)))[:160] or "none"
        scores = [cell_score(context, r) for r in holding]
        if max(scores) == 0:
            labels = "; ".join(sorted({" ".join(sorted(r.label))[:60] for r in holding})[:3])
            problems.append(f"figure {shown!r}: the words around it ({seen}) name none of the rows holding it "
                            f"({labels})")
            continue
        named = [r for r, v in zip(holding, scores) if v == max(scores)]
        if not any(r in signed for r in named):
            problems.append(f"figure {shown!r}: the row its words name holds {named[0].text.strip()!r}")
            continue
        mine = max(score(context, r.label) for r in named if r in signed)
        better = [r for r in rows.values() if score(context, r.key) > mine + 1e-9]
        if better:
            problems.append(f"figure {shown!r}: the words around it ({seen}) name the row "
                            f"{' | '.join(better[0].cells.values())[:80]!r} better than the one holding it")
    return problems


def contains(figures: List[Figure], group: List[Figure], signed: bool = True) -> bool:
    """``group`` occurs in ``figures`` in order (a subsequence), each figure equal at the README's precision
    (``signed=False``: sign aside)."""
    if not signed:
        unsigned = lambda f: replace(f, sign="") if f.sign in ("+", "-") else f  # a half-width stays one
        figures, group = [unsigned(f) for f in figures], [unsigned(f) for f in group]
    i = 0
    for f in figures:
        if i < len(group) and equal(group[i], f, prose=True):
            i += 1
    return i == len(group)


def check_block(block: list, recs: List[Record]) -> list:
    """Problems (empty: none) of one attributed block against the rows and lines of its files."""
    problems, prose, table = [], [], []
    for line in block + [""]:
        if line.startswith("|"):
            table.append(line)
            continue
        if table:
            problems += check_table(table, recs)
            table = []
        prose.append(line)
    return problems + check_prose("\n".join(prose), recs)


def unattributed_figures(text: str) -> list:
    """``(first words of the block, figures)`` of the blocks that quote result figures (or counts) but are
    attributed to no results file."""
    out = []
    for block, paths in sources(text):
        if paths:
            continue
        joined = "\n".join(block)
        found = [str(f) for f in numbers(joined) if f.checked] + COUNT.findall(masked(joined))
        if found:
            out.append((" ".join(joined.split())[:60], found))
    return out


CASES = [(readme, block, paths) for readme in READMES for block, paths in attributed(readme.read_text())]


def test_the_readmes_attribute_figures_to_results_files():
    named = {p for _, _, paths in CASES for p in paths}
    for must in ("results/throughput_quick.txt", "results/matchers_quick.txt", "results/prompts/results.md",
                 "results/vig_scaling.json", "results/train_throughput.json", "results/transfer/transfer.md"):
        assert any(p.endswith(must) for p in named), must
    assert any(p.endswith("results/meta_prompts/glyphs/") for p in named)  # a folder


@pytest.mark.parametrize("readme", list(READMES), ids=[str(r.relative_to(ROOT)) for r in READMES])
def test_every_figure_of_a_readme_names_its_results_file(readme):
    """A figure in a block that names no results file (nor follows, as a table, one that does) has no source."""
    unsourced = unattributed_figures(readme.read_text())
    assert unsourced == [], "\n".join(f"{start!r}...: {', '.join(found)}" for start, found in unsourced)


@pytest.mark.parametrize("readme,block,paths", CASES,
                         ids=[f"{r.relative_to(ROOT)}:{b[0][:40]}" for r, b, _ in CASES])
def test_every_attributed_figure_equals_the_named_file(readme, block, paths):
    files = [f for p in paths for f in files_named(p, READMES[readme])]
    missing = [str(f) for f in files if not f.is_file()]
    assert not missing, f"{readme.name} names results files that do not exist: {missing}"
    problems = check_block(block, [r for f in files for r in records(f)])
    assert problems == [], "\n".join(problems)


# ----- the checker itself ------------------------------------------------------------------------
RESULTS = """# Generated by `python x.py --episodes 2000` at commit abc1234 on 2026-11-29 (2 CPUs, load average 1.2)
setting          ours ep/s   ratio  same episodes
5-way 1-shot         392.5   38.2x     1998 of 2000
20-way 5-shot        473.3  265.3x     2000 of 2000

| backbone | img size | train s/episode | x vs smallest | peak MiB |
|---|---:|---:|---:|---:|
| vig_small_28 | 84 | 5.686 | 12.1x | 2,938 |
| conv4 | 84 | 1.685 | 11.4x | 596 |

| method | paired diff vs none (t p, W p) |
|---|---|
| VGP | +0.28 +- 0.21 (t p=0.0077, W p=6.4e-06) |
| add | -2.48 +- 0.37 (t p=2.2e-34, W p=1.4e-32) |

| method | paired diff vs VGP |
|---|---|
| none | -0.28 +- 0.21 |
max relative difference 2.9e-15
"""


@pytest.fixture
def results(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "results.md").write_text(RESULTS)
    return records(tmp_path / "r" / "results.md")


def test_the_shipped_checks_pass_on_a_faithful_readme(results):
    readme = ["Figures (`results/r/`):", "", "| setting | ours ep/s | ratio | same episodes |", "|---|---:|---:|---|",
              "| 5-way 1-shot | 392.5 | **38.2x** | 1998 of 2000 |", "",
              "ViG costs 12x per episode at 84 px against Conv-4's 11x; ViG needs 2,938 MiB, conv4 596 MiB; "
              "VGP gains +0.28 +- 0.21 (p=0.0077), add loses -2.5 (t p=2.2e-34). In 5-way 1-shot 1998 of "
              "2000 episodes agree; the relative difference is 2.9e-15, at load average 1.2."]
    (block, paths), = [(b, p) for b, p in attributed("\n".join(readme[:1])) if p]
    assert paths == ["results/r/"]
    assert check_block(readme[2:5], results) == []
    assert check_block(readme[6:], results) == [], check_block(readme[6:], results)


@pytest.mark.parametrize("readme,problem", [
    # tables: cell by cell, column by header
    ("| setting | ours ep/s | ratio |\n|---|---|---|\n| 5-way 1-shot | 473.3 | 38.2x |", "'ours ep/s' reads '473.3'"),
    ("| backbone | train s/episode |\n|---|---|\n| vig_small_28 | 1.685 |\n| conv4 | 5.686 |", "'train s/episode'"),
    ("| method | paired diff vs none (t p, W p) |\n|---|---|\n| add | +2.48 +- 0.37 (t p=2.2e-34, W p=1.4e-32) |",
     "reads '+2.48"),
    ("| setting | same episodes |\n|---|---|\n| 5-way 1-shot | 0 of 2000 |", "reads '0 of 2000'"),
    ("| setting | episodes/s |\n|---|---|\n| 5-way 1-shot | 392.5 |", "matches no table"),
    # prose: sign, value, unit, place
    ("VGP gains -0.28 over none.", "figure '-0.28': the row its words name holds '+0.28"),
    ("add gains 2.48 over none.", "figure '2.48': the row its words name holds '-2.48"),
    ("In 20-way 5-shot 1998 of 2000 episodes agree.", "name the row '20-way 5-shot"),
    ("VGP gains +0.29 over none.", "figure '+0.29' is in no named file"),
    ("ViG costs 11x per episode against Conv-4's 12x.", "figure '11x': the words around it"),
    ("The relative difference is at most 7e-16.", "figure '7e-16' is in no named file"),
    ("It needs 2,937 MiB.", "figure '2,937 MiB' is in no named file"),
    ("It needs 596 GiB.", "figure '596 GiB' is in no named file"),
    ("It took 2,939 s.", "figure '2,939 s' is in no named file"),
    ("Only 0 of 4 episodes agree.", "figure '0 of 4' is in no named file"),
    ("VGP gains +0.28 +- 0.37.", "figure '+0.28 +- 0.37' is in no named file"),
    # a half-width is no signed difference; the row's own name outweighs a column's (none vs VGP, VGP vs none)
    ("VGP gains +0.21 over none.", "figure '+0.21' is in no named file"),
    ("VGP loses -0.28 against none.", "figure '-0.28': the row its words name holds '+0.28"),
    ("none is +0.28 against VGP.", "figure '+0.28': the row its words name holds '-0.28"),
])
def test_the_check_catches_a_figure_out_of_place(results, readme, problem):
    problems = check_block(readme.splitlines(), results)
    assert any(problem in p for p in problems), problems


def test_settings_dates_commits_and_code_are_not_figures():
    text = ("On 2026-11-29 at 09:55, commit 8390ce4, torch 2.14.1, torch 2.14, Python 3.11+, `--episodes 2000`, "
            "5-way 20-way vig_small_28, 600 episodes, VTAB-1k, Conv-4, +- the 95 % confidence interval, 95% CI")
    assert [f for f in numbers(text) if f.checked] == []
    assert [str(f) for f in numbers("+0.40 +- 0.19, 2,938 s, 596 MiB, 3.6e-5, 12x, 32%, 6.3-6.8, N^1.13, easyfsl 1.01x")] == [
        "+0.40", "0.19", "2,938 s", "596 MiB", "3.6e-5", "12x", "32%", "6.3", "6.8", "1.13", "1.01x"]
    assert equal(numbers("1.9")[0], numbers("1.89")[0]) and not equal(numbers("1.8")[0], numbers("1.89")[0])
    assert not equal(numbers("1.89")[0], numbers("1.9")[0])  # more precision than the file has
    assert equal(numbers("3.6e-5")[0], numbers("3.6e-05")[0]) and not equal(numbers("7e-16")[0], numbers("2.9e-15")[0])
    assert not equal(numbers("+0.28")[0], numbers("-0.28")[0], prose=True)
    half = numbers("+0.40 +- 0.19, +0.40 +-0.19")
    assert [f.sign for f in half] == ["+", "\u00b1", "+", "\u00b1"] and half[3].value == 0.19
    assert not equal(numbers("+0.19")[0], half[1], prose=True) and not equal(numbers("0.19")[0], half[1], prose=True)
    assert equal(half[3], half[1], prose=True) and equal(half[3], half[1])


def test_a_figure_in_a_block_that_names_no_results_file_is_reported():
    text = ("Measured (`results/r.txt`): 1.5 points.\n\nIt also reaches 81.4 +- 1.2 % in 7 minutes, 2 CPUs, "
            "2000 episodes, at most 7e-16.\n\nLast figures (`results/r.txt`):\n\n| a | b |\n|---|---|\n| x | 3.5 |\n\n"
            "* a list right after it: 4.5\n")
    assert unattributed_figures(text) == [("It also reaches 81.4 +- 1.2 % in 7 minutes, 2 CPUs, 2000 epi",
                                          ["81.4", "1.2 %", "7 minutes", "7e-16"])]
