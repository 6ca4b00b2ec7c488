"""The front page and the docs stay true to the checkout: short, every module named, no dead link, two set-up commands.

The README is read by newcomers; a module added without a line in the layout, a page renamed under a link, or a
third set-up step would each make it quietly wrong, so these fail instead.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def section(text: str, heading_start: str) -> str:
    """The text under the first `## ` heading that starts with `heading_start`, up to the next `## ` heading."""
    match = re.search(rf"^## {re.escape(heading_start)}.*?$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"README.md has no section '## {heading_start}...'"
    return match.group(1)


def code_blocks(text: str) -> list[list[str]]:
    blocks, current = [], None
    for line in text.splitlines():
        if FENCE.match(line):
            if current is None:
                current = []
            else:
                blocks.append(current)
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def prose_lines(text: str):
    """Lines outside code fences (a `#` in a bash block is a comment, not a heading)."""
    inside = False
    for line in text.splitlines():
        if FENCE.match(line):
            inside = not inside
        elif not inside:
            yield line


def layout_names(lines: list[str]) -> dict[str, set[str]]:
    """Package path -> the words listed for it, from an indented tree in which `name/` opens a package.

    A line belongs to the innermost package opened at a smaller indent; a continuation line (indented deeper
    than any package) to the last one opened."""
    names: dict[str, set[str]] = {}
    stack: list[tuple[int, str]] = []
    for line in lines:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        while stack and stack[-1][0] >= indent:
            stack.pop()
        first, _, rest = line.strip().partition(" ")
        if first.endswith("/"):
            stack.append((indent, first.rstrip("/")))
        else:
            rest = line
        package = "/".join(name for _, name in stack)
        words = {word.removesuffix(".py") for word in re.findall(r"[A-Za-z_][A-Za-z0-9_]*(?:\.py)?", rest)}
        names.setdefault(package, set()).update(words)
    return names


def modules() -> list[tuple[str, str]]:
    """(package path, module name) of every module file in the package, `__init__` included."""
    found = []
    for path in sorted((ROOT / "medcot_pipeline").rglob("*.py")):
        relative = path.relative_to(ROOT)
        found.append(("/".join(relative.parent.parts), path.stem))
    return found


def test_readme_is_a_front_page_under_15000_characters():
    size = len(README.read_text(encoding="utf-8"))
    assert size < 15_000, f"README.md is {size:,} characters; move reference material into docs/"


@pytest.mark.parametrize("page", ["README.md", "docs/layout.md"])
def test_layout_names_every_module(page):
    text = (ROOT / page).read_text(encoding="utf-8")
    if page == "README.md":
        text = section(text, "Layout")
    tree = next((block for block in code_blocks(text) if block and block[0].strip() == "medcot_pipeline/"), None)
    assert tree is not None, f"{page}: no code block opening with 'medcot_pipeline/'"
    names = layout_names(tree)
    missing = [f"{package}/{name}.py" for package, name in modules() if name not in names.get(package, set())]
    assert not missing, f"{page}'s layout does not name: {', '.join(missing)}"


def test_layout_parser_places_a_module_in_its_own_package():
    # The check above is only as good as this: a name listed under another package must not count.
    names = layout_names(
        [
            "medcot_pipeline/",
            "  cli  settings",
            "  defs/      checks",
            "    assets/  data",
            "             model",
            "    jobs.py  the jobs",
            "  data/      sources",
            "profiles/    demo",
        ]
    )
    assert names["medcot_pipeline"] == {"cli", "settings"}
    assert names["medcot_pipeline/defs"] == {"checks", "jobs", "the"}
    assert names["medcot_pipeline/defs/assets"] == {"data", "model"}
    assert "data" not in names["medcot_pipeline/data"] and "sources" in names["medcot_pipeline/data"]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(line.lstrip("#")) for line in prose_lines(page.read_text(encoding="utf-8")) if line.startswith("#")}


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_points_at_a_file_that_exists(page):
    broken = []
    for line in prose_lines(page.read_text(encoding="utf-8")):
        for target in LINK.findall(line):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{target} (no file {file.relative_to(ROOT) if file.is_relative_to(ROOT) else file})")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                broken.append(f"{target} (no heading '#{anchor}' in {file.relative_to(ROOT)})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {'; '.join(broken)}"


def test_setup_section_has_exactly_the_two_commands():
    text = section(README.read_text(encoding="utf-8"), "Set-up")
    commands = [line.split("#", 1)[0].strip() for block in code_blocks(text) for line in block if line.split("#", 1)[0].strip()]
    assert commands == ["bash scripts/run-demo.sh", "bash scripts/run-tests.sh"], commands
    for command in commands:
        assert (ROOT / command.split()[1]).is_file(), command
