"""mkdocs hooks (`hooks:` in mkdocs.yml): fill the pages' markers from the repository at build time.

So that the site shows the measured numbers as they are committed, instead of copies that go
stale, a page may hold these markers, each alone on its line:

- `<!-- benchmark-summary: DEVICE -->`: the table `python -m benchmarks.summary --device DEVICE`
  prints, from `benchmarks/results/sampler_<backend>_<DEVICE>*.json`: per case, each
  implementation's forward+backward time over PyTorch's native kernel (forward in brackets),
  then the training-step line. It is computed here, the way `benchmarks/summary.py` does,
  because that module imports the benchmark itself (Keras and PyTorch), which a docs build
  does not install.
- `<!-- benchmark-tables -->`: every markdown file in `benchmarks/results/`, one section each,
  its headings moved below the page's.
- `<!-- include: PATH -->`: a file of the repository (relative to mkdocs.yml) without its
  `# title` line; `<!-- include: PATH from "HEADING" -->` only from that heading to the end.

A marker naming a file that does not exist stops the build.
"""

import glob
import json
import os
import re

from mkdocs.exceptions import PluginError

RESULTS = os.path.join("benchmarks", "results")
MARKER = re.compile(r"^<!--\s*(benchmark-summary|benchmark-tables|include)\s*(?::\s*(.*?))?\s*-->\s*$", re.MULTILINE)
INCLUDE = re.compile(r'^(?P<path>\S+)(?:\s+from\s+"(?P<heading>[^"]+)")?$')
HEADING = re.compile(r"^(#+)(\s)")
FENCE = re.compile(r"^\s*(```|~~~)")


def on_page_markdown(markdown, page, config, files):
    root = os.path.dirname(os.path.abspath(config["config_file_path"]))

    def replace(match):
        kind, argument = match.group(1), (match.group(2) or "").strip()
        where = f"{page.file.src_uri}: <!-- {kind}{': ' + argument if argument else ''} -->"
        if kind == "benchmark-summary":
            return benchmark_summary(os.path.join(root, RESULTS), argument or "cpu")
        if kind == "benchmark-tables":
            return benchmark_tables(os.path.join(root, RESULTS), where)
        return include(root, argument, where)

    return MARKER.sub(replace, markdown)


def benchmark_summary(results_dir, device):
    """What `python -m benchmarks.summary --device DEVICE --results-dir RESULTS_DIR` prints."""
    columns, cases, cells, shapes, notes = [], [], {}, {}, []
    for path in sorted(glob.glob(os.path.join(results_dir, f"sampler_*_{device}*.json"))):
        with open(path, encoding="utf-8") as f:
            result = json.load(f)
        backend = result["meta"]["backend"]
        tag = os.path.basename(path)[len(f"sampler_{backend}_{device}") : -len(".json")]
        label = f"{backend} {tag.strip('_-')}".strip()
        for row in result["rows"]:
            column = f"{label} {row['implementation']}"
            if column not in columns:
                columns.append(column)
            if row["case"] not in cases:
                cases.append(row["case"])
            shapes[row["case"]] = row["shape"]
            cells[row["case"], column] = f"{row['forward+backward ratio']:.2f} ({row['forward ratio']:.2f})"
        training = result.get("training")
        if training:
            notes.append(
                f"{label}: CNN {training['CNN ms']:.0f} ms, ST-CNN {training['ST-CNN ms']:.0f} ms "
                f"({100 * training['transformer share']:.0f}% of the step)"
            )
    if not columns:
        return f"*No {device.upper()} results in `benchmarks/results/` yet.*"
    lines = ["| case | shape | " + " | ".join(columns) + " |", "| --- | --- |" + " --- |" * len(columns)]
    for case in cases:
        lines.append(f"| {case} | {shapes[case]} | " + " | ".join(cells.get((case, c), "n/a") for c in columns) + " |")
    if notes:
        lines += ["", "Training step, batch 64, 60x60, affine ST-CNN vs the CNN alone: " + "; ".join(notes) + "."]
    return "\n".join(lines)


def benchmark_tables(results_dir, where):
    """Each markdown file of the results as a `###` section: under its own `# title` if it has
    one (its other headings moved down two levels), else under its file name."""
    paths = sorted(glob.glob(os.path.join(results_dir, "*.md")))
    if not paths:
        raise PluginError(f"{where}: no markdown files in {results_dir}")
    sections = []
    for path in paths:
        name = f"`{RESULTS}/{os.path.basename(path)}`"
        with open(path, encoding="utf-8") as f:
            lines = f.read().strip().splitlines()
        if lines and lines[0].startswith("# "):
            title, body = lines[0][2:].strip(), lines[1:]
            sections.append(f"### {title}\n\nFrom {name}.\n\n" + "\n".join(shift_headings(body, 2)).strip())
        else:
            sections.append(f"### {name}\n\n" + "\n".join(shift_headings(lines, 3)).strip())
    return "\n\n".join(sections)


def include(root, argument, where):
    match = INCLUDE.match(argument)
    if not match:
        raise PluginError(f'{where}: expected `include: PATH` or `include: PATH from "HEADING"`')
    path = os.path.join(root, match["path"])
    if not os.path.isfile(path):
        raise PluginError(f"{where}: {match['path']} does not exist")
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    heading = match["heading"]
    if heading is None:
        if lines and lines[0].startswith("# "):
            lines = lines[1:]
    else:
        starts = [i for i, line in enumerate(lines) if HEADING.match(line) and line.lstrip("#").strip() == heading]
        if not starts:
            raise PluginError(f"{where}: {match['path']} has no heading {heading!r}")
        lines = lines[starts[0] :]
    return "\n".join(lines).strip()


def shift_headings(lines, levels):
    """The lines with every heading outside code blocks `levels` deeper (at most `######`)."""
    shifted, in_code = [], False
    for line in lines:
        if FENCE.match(line):
            in_code = not in_code
        elif not in_code and HEADING.match(line):
            hashes = len(line) - len(line.lstrip("#"))
            line = "#" * min(hashes + levels, 6) + line[hashes:]
        shifted.append(line)
    return shifted
