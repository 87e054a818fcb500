"""The README and docs/ pages: every relative link resolves, every #anchor names a heading, the README stays short.

External (http, https, mailto) links are not checked: the tests run offline.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README_MAX_LINES = 300
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BENCHMARKS = ROOT / "benchmarks"
BENCHMARK_PAGES = sorted(BENCHMARKS.rglob("*.md"))
# Folders of the machine a study ran on, which a reader does not have: a page names the store STORE and the
# archive /path/to/aclImdb_v1.tar.gz instead. Scripts may default to a scratch folder in the system's temporary
# folder; pages may not.
MACHINE_FOLDER = re.compile(r"(?<![\w.$}-])/(?:root|work|home)/")
MACHINE_FOLDER_IN_PAGES = re.compile(r"(?<![\w.$}-])/(?:root|work|home|tmp)/")

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
# [text](target) and ![alt](target), with an optional "title"; the text may hold one level of brackets.
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.M)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # http:, https:, mailto:, ...


def _prose(text: str) -> str:
    """The text without fenced code blocks and code spans, where brackets and hashes are not markdown."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation but hyphens dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor GitHub makes for the headings of a markdown file (repeats get -1, -2, ...)."""
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text())):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> list[str]:
    return [target for target in LINK.findall(_prose(path.read_text())) if not EXTERNAL.match(target)]


def broken_links(path: Path) -> list[str]:
    """Each relative link of `path` that names no file or folder, or an anchor no heading of its target has."""
    problems = []
    for target in links(path):
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            problems.append(f"{target}: no such file or folder")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{target}: no heading with anchor #{anchor} in {resolved.name}")
        elif anchor and resolved.suffix != ".md":
            problems.append(f"{target}: an anchor into a file that is not markdown")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_relative_link_resolves(page):
    assert broken_links(page) == []


@pytest.mark.parametrize("page", BENCHMARK_PAGES, ids=[str(p.relative_to(ROOT)) for p in BENCHMARK_PAGES])
def test_every_relative_link_of_a_benchmark_page_resolves(page):
    assert broken_links(page) == []


def test_the_benchmarks_index_links_every_study_folder():
    targets = [(BENCHMARKS / t.partition("#")[0]).resolve() for t in links(BENCHMARKS / "README.md")]
    linked = {t.relative_to(BENCHMARKS).parts[0] for t in targets if t.is_relative_to(BENCHMARKS)}
    folders = {d.name for d in BENCHMARKS.iterdir() if d.is_dir() and not d.name.startswith((".", "__"))}
    assert folders - linked == set(), "study folders missing from benchmarks/README.md"


def machine_folders(path: Path) -> list[str]:
    """Each line of `path` that names a folder of the machine it ran on."""
    pattern = MACHINE_FOLDER_IN_PAGES if path.suffix == ".md" else MACHINE_FOLDER
    return [
        f"{path.name}:{n}: {line.strip()}"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]


def test_no_benchmark_or_docs_file_names_a_folder_of_the_machine_it_ran_on(tmp_path):
    files = [*PAGES, *(p for p in sorted(BENCHMARKS.rglob("*")) if p.suffix in {".md", ".sh", ".py"})]
    assert [hit for path in files for hit in machine_folders(path)] == []
    # The checker's inputs: top-level folders of any machine, spelled from their names so that this file, too,
    # names none of them.
    tmp, work, root = (f"/{name}/" for name in ("tmp", "work", "root"))
    page, script = tmp_path / "page.md", tmp_path / "run.sh"
    page.write_text(f"STORE={tmp}bf16 x\nsqlite:///{work}studies/tune/mlflow.db\nfine: STORE, $TMPDIR/x, a{tmp}b\n")
    script.write_text(f'WORK="${{WORK:-{tmp}scratch}}"\ncd {root}x\n')
    assert machine_folders(page) == [
        f"page.md:1: STORE={tmp}bf16 x",
        f"page.md:2: sqlite:///{work}studies/tune/mlflow.db",
    ]
    assert machine_folders(script) == [f"run.sh:2: cd {root}x"]


def test_the_readme_is_a_front_page_of_at_most_300_lines():
    assert len((ROOT / "README.md").read_text().splitlines()) <= README_MAX_LINES


def test_every_docs_page_is_linked_from_the_readme_and_links_back():
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in links(ROOT / "README.md")}
    for page in PAGES[1:]:
        assert page.resolve() in linked, f"{page.name} is not linked from the README"
        assert "](../README.md)" in page.read_text().splitlines()[0], f"{page.name} does not start with a link back"


def test_the_checker_finds_a_missing_file_a_missing_anchor_and_ignores_code_and_external_links(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## Tuning each mode (Optuna)\n\n## `run/` and `sweep/`\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n## A shared tracking server for a team\n\n"
        "[fine](other.md) [fine](other.md#tuning-each-mode-optuna) [fine](other.md#run-and-sweep) "
        "[fine](#a-shared-tracking-server-for-a-team) ![fine](other.md) [web](https://example.org/x.md#nowhere)\n"
        "[gone](missing.md) ![gone](missing.png) [bad anchor](other.md#tuning) [bad anchor](#nowhere)\n\n"
        "`[code](not-a-link.md)`\n\n```\n[code](not-a-link.md)\n```\n"
    )
    assert broken_links(page) == [
        "missing.md: no such file or folder",
        "missing.png: no such file or folder",
        "other.md#tuning: no heading with anchor #tuning in other.md",
        "#nowhere: no heading with anchor #nowhere in page.md",
    ]


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("Tuning each mode (Optuna)", "tuning-each-mode-optuna"),
        ("Beyond one machine: Ray and the GPU plan", "beyond-one-machine-ray-and-the-gpu-plan"),
        ("Sweeps, comparisons and a reference", "sweeps-comparisons-and-a-reference"),
        ("`run/`: one run", "run-one-run"),
        ("Pooling inside the language model", "pooling-inside-the-language-model"),
    ],
)
def test_slug_follows_githubs_rules(heading, anchor):
    assert slug(heading) == anchor


BENCHMARK_PATH = re.compile(r"(?<![\w/.-])benchmarks/[\w./-]*\w")
GENERATED = ("benchmarks/gpu/payload",)  # made by benchmarks/gpu/pack.sh, git-ignored


def named_benchmark_paths(path: Path) -> list[str]:
    """Each `benchmarks/...` path that `path`'s text names and the checkout does not have (`path:line: name`)."""
    return [
        f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name}:{n}: {name}"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        for name in BENCHMARK_PATH.findall(line)
        if not (ROOT / name).exists() and not name.startswith(GENERATED)
    ]


def test_every_benchmarks_path_named_in_code_docs_or_tests_exists(tmp_path):
    """Comments and pages that cite a benchmark by a path it moved from send a reader nowhere (#30)."""
    tests = [p for p in sorted((ROOT / "tests").glob("*.py")) if p != Path(__file__).resolve()]
    files = [*PAGES, *sorted((ROOT / "bertpooled").rglob("*.py")), *tests]
    files += [p for p in sorted(BENCHMARKS.rglob("*")) if p.suffix in {".md", ".py", ".sh"}]
    assert [hit for path in files for hit in named_benchmark_paths(path)] == []
    cited = tmp_path / "cited.py"
    cited.write_text("# see benchmarks/README.md and benchmarks/reliability.md, not mybenchmarks/x.md\n")
    assert named_benchmark_paths(cited) == ["cited.py:1: benchmarks/reliability.md"]
