"""The figures README.md and benchmarks/README.md quote equal those of the results file they name.

A block of a README (text between blank lines, code fences skipped) that names a results file
(``results/....md|txt|json``) attributes its figures to it; a table right after a block that names
files and ends with ``:`` is attributed to those files too. Every decimal figure of such a block
must be a figure of the named files at the README's precision (a README's 1.9 matches a file's
1.89), every "N of M" count must appear as such, and each row of an attributed table must match
one line of a file as a whole. JSON files are read as text and through their ``markdown`` field.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
READMES = {ROOT / "README.md": ROOT, ROOT / "benchmarks" / "README.md": ROOT / "benchmarks"}

PATH = re.compile(r"(?:benchmarks/)?results/[\w./-]+?\.(?:md|txt|json)\b")
DECIMAL = re.compile(r"(?<![\w.])[+-]?\d+\.\d+e[+-]?\d+|(?<![\w.])[+-]?\d{1,3}(?:,\d{3})*\.\d+|(?<![\w.])[+-]?\d+\.\d+")
NUMBER = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?|[+-]?\d+(?:\.\d+)?(?:e[+-]?\d+)?")
COUNT = re.compile(r"\b\d+ of \d+\b")


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


def attributed(text: str) -> list:
    """``(block lines, [named paths])`` for every block whose figures come from results files: one
    that names them, and the tables right after a block that names them and ends with ``:``."""
    out, carried = [], []
    for block in blocks(text):
        paths = PATH.findall("\n".join(block))
        is_table = all(line.startswith("|") for line in block)
        if paths:
            out.append((block, paths))
        elif is_table and carried:
            out.append((block, carried))
        if is_table:
            continue  # consecutive tables share the intro's files
        carried = paths if paths and block[-1].rstrip().endswith(":") else []
    return out


def resolve(path: str, base: Path) -> Path:
    return ROOT / path if path.startswith("benchmarks/") else base / path


def file_lines(path: Path) -> list:
    text = path.read_text()
    lines = text.splitlines()
    if path.suffix == ".json":
        data = json.loads(text)
        if isinstance(data, dict) and isinstance(data.get("markdown"), str):
            lines += data["markdown"].splitlines()
    return lines


def _value(s: str) -> float:
    return abs(float(s.replace(",", "")))


def matches(figure: str, numbers: list) -> bool:
    """The README's ``figure`` is one of ``numbers`` (file figures) at the README's precision."""
    mantissa = figure.lower().split("e")[0]
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    form = "e" if "e" in figure.lower() else "f"
    want = f"{_value(figure):.{decimals}{form}}"
    return any(f"{_value(n):.{decimals}{form}}" == want for n in numbers)


def check_block(block: list, files: list) -> list:
    """Problems (empty: none) with one attributed block against the lines of its files."""
    lines = [line for path in files for line in file_lines(path)]
    everything = "\n".join(lines)
    numbers = NUMBER.findall(everything)
    problems = []
    for count in COUNT.findall("\n".join(block)):
        if count not in everything:
            problems.append(f"count {count!r} is in no named file")
    if all(line.startswith("|") for line in block):
        for row in block:
            figures = DECIMAL.findall(row)
            if figures and not any(all(matches(f, NUMBER.findall(line)) for f in figures) for line in lines):
                problems.append(f"row {row!r} matches no line of the named files")
    else:
        for figure in DECIMAL.findall("\n".join(block)):
            if not matches(figure, numbers):
                problems.append(f"figure {figure} is in no named file")
    return problems


CASES = [(readme, block, paths) for readme in READMES for block, paths in attributed(readme.read_text())]


def test_the_readmes_attribute_figures_to_results_files():
    named = {p for _, _, paths in CASES for p in paths}
    for must in ("results/throughput_quick.txt", "results/matchers_quick.txt", "results/prompts/results.md",
                 "results/vig_scaling.json", "results/train_throughput.json"):
        assert any(p.endswith(must) for p in named), must
    assert any("meta_prompts/glyphs" in p for p in named)  # README.md's meta-prompt figures


@pytest.mark.parametrize("readme,block,paths", CASES,
                         ids=[f"{r.relative_to(ROOT)}:{b[0][:40]}" for r, b, _ in CASES])
def test_every_attributed_figure_equals_the_named_file(readme, block, paths):
    files = [resolve(p, READMES[readme]) for p in paths]
    missing = [str(f) for f in files if not f.is_file()]
    assert not missing, f"{readme.name} names results files that do not exist: {missing}"
    assert check_block(block, files) == []


def test_the_check_catches_a_figure_that_differs_from_its_file(tmp_path):
    results = tmp_path / "r.txt"
    results.write_text("| 5-way | 392.5 | 38.2x | 1998 of 2000 |\n| 20-way | 473.3 | 265.3x | True |\n")
    readme = ("Last figures (`results/r.txt`):\n\n| setting | ours | ratio |\n|---|---|---|\n"
              "| 5-way | 392.5 | 38.2x |\n| 20-way | 473.3 | 38.2x |\n\n| setting | ratio |\n|---|---|\n| x | 265.3x |\n\n"
              "Unrelated prose, 1.5 points.\n\n| not | attributed |\n|---|---|\n| y | 7.7 |\n\n"
              "Identical episodes (`results/r.txt`): 1998 of 2000, 2000 of 2000; ratio 265.3x and 265.4x.\n")
    found = attributed(readme)
    assert [b[-1] for b, _ in found] == ["Last figures (`results/r.txt`):", "| 20-way | 473.3 | 38.2x |", "| x | 265.3x |",
                                        found[-1][0][-1]] and found[-1][0][0].startswith("Identical")
    (table, paths), (prose, _) = found[1], found[3]
    assert paths == ["results/r.txt"]
    assert check_block(table, [results]) == ["row '| 20-way | 473.3 | 38.2x |' matches no line of the named files"]
    assert check_block(prose, [results]) == ["count '2000 of 2000' is in no named file",
                                             "figure 265.4 is in no named file"]
    assert matches("1.9", ["+1.89"]) and matches("-4.6", ["-4.61"]) and not matches("1.8", ["1.89"])
    assert matches("3.6e-07", ["3.6e-07"]) and not matches("3.6e-07", ["3.6", "2.4e-07"])
