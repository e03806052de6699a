"""mkdocs hooks (`hooks:` in mkdocs.yml): fill the pages' markers from the repository at build time.

So that the site shows the measured numbers as they are committed, instead of copies that go
stale, a page may hold these markers, each alone on its line:

- `<!-- benchmark-summary: DEVICE -->`: the table `python -m benchmarks.summary --device DEVICE`
  prints, from `benchmarks/results/sampler_<backend>_<DEVICE>*.json`: per case, each
  implementation's forward+backward time over PyTorch's native kernel (forward in brackets),
  then the training-step line, by `benchmarks/summary.py`'s own `summary_table`.
- `<!-- benchmark-tables -->`: every markdown file in `benchmarks/results/`, one section each,
  its headings moved below the page's.
- `<!-- include: PATH -->`: a file of the repository (relative to mkdocs.yml) without its
  `# title` line; `<!-- include: PATH from "HEADING" -->` only from that heading to the end.

A marker naming a file that does not exist stops the build.
"""

import glob
import importlib.util
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
    table = load_summary(os.path.dirname(results_dir)).summary_table(results_dir, device)
    return table or f"*No {device.upper()} results in `benchmarks/results/` yet.*"


def load_summary(benchmarks_dir):
    """benchmarks/summary.py, loaded from its file (it imports no framework, unlike its package's
    benchmark, and the docs build does not put the repository on the import path)."""
    spec = importlib.util.spec_from_file_location("benchmarks_summary", os.path.join(benchmarks_dir, "summary.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
