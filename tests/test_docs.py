"""The documentation keeps up with the code: every config key is documented, every link works.

Config keys come from the same source as ``rayformers describe`` (``pipeline.cli.describe_all``:
the shared sections, then each job command's section), so a key added to a config dataclass
without a word in ``docs/`` fails here with its name.

The rule for "documented" is strict but fair: the full dotted key (``compute.batch_size``, never
just ``batch_size``) appears in a code span or a fenced code block of some ``docs/*.md`` page
(``--set output.mode=resume`` counts), or a ```yaml block of a page holds it at its place
(``compute: {batch_size: 4096}``). A YAML example must parse, and every key it sets under a
config section must exist, so an example cannot teach a misspelt key.

Links: every relative Markdown link in README.md, BENCHMARKS.md and docs/*.md resolves to a file
of the repository, and a ``#anchor`` to a heading of that file (GitHub's heading ids)."""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CONFIG_SECTIONS = ("input", "model", "tokenizer", "task", "compute", "output", "train", "etl")
FENCE = re.compile(r"^([ \t]*)(```|~~~)(.*?)$\n(.*?)^\1\2[ \t]*$", re.S | re.M)
INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)", re.M)
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$", re.M)
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"")


def config_keys() -> dict[str, str]:
    """Every key ``rayformers describe`` lists, mapped to its line (default and meaning)."""
    from rayformers.pipeline.cli import describe_all

    keys = {}
    for line in describe_all():
        match = re.match(r"^([a-z_][\w.]*) = ", line)
        if match:
            keys[match.group(1)] = line
    return keys


def shown(path: Path) -> str:
    """A path as the repository names it."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def doc_pages() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(info string, body) of every fenced code block."""
    return [(m.group(3).strip().lower(), textwrap.dedent(m.group(4))) for m in FENCE.finditer(text)]


def without_code(text: str) -> str:
    """The text with fenced blocks, code spans and HTML comments blanked, so links inside them
    are not taken for real ones."""
    text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    return INLINE_CODE.sub("", text)


def code_text(text: str) -> str:
    """Everything inside code spans and fenced blocks, one piece per line."""
    pieces = [body for _, body in fenced_blocks(text)]
    pieces += [m.group(2) for m in INLINE_CODE.finditer(FENCE.sub("", text))]
    return "\n".join(pieces)


def yaml_paths(node, prefix: str = "") -> set[str]:
    """Dotted paths of every mapping key in a parsed YAML document (``a``, ``a.b``, ...)."""
    paths = set()
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{prefix}{key}"
            paths.add(path)
            paths |= yaml_paths(value, path + ".")
    return paths


def yaml_examples(path: Path) -> list[tuple[str, object]]:
    """(location, parsed document) of every ```yaml block of a page; a block that does not
    parse raises, naming the page and the block's first line."""
    text = path.read_text(encoding="utf-8")
    examples = []
    for info, body in fenced_blocks(text):
        if info not in ("yaml", "yml"):
            continue
        where = f"{shown(path)}: block starting {body.splitlines()[0]!r}" if body.strip() else shown(path)
        try:
            examples.append((where, yaml.safe_load(body)))
        except yaml.YAMLError as e:
            raise AssertionError(f"{where} is not valid YAML: {e}") from e
    return examples


def undocumented_keys(pages: list[Path]) -> list[str]:
    """Config keys that none of ``pages`` documents (the rule in this module's docstring)."""
    code = "\n".join(code_text(p.read_text(encoding="utf-8")) for p in pages)
    in_yaml: set[str] = set()
    for page in pages:
        for _, document in yaml_examples(page):
            in_yaml |= yaml_paths(document)
    missing = []
    for key in config_keys():
        if key in in_yaml:
            continue
        if re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", code):
            continue
        missing.append(key)
    return missing


def test_every_config_key_is_documented_on_a_docs_page():
    assert doc_pages(), "docs/ has no Markdown pages"
    missing = undocumented_keys(doc_pages())
    assert not missing, (
        f"{len(missing)} config keys that `rayformers describe` lists are documented on no docs/ "
        "page (write the full dotted key in backticks, or show it in a ```yaml example):\n"
        + "\n".join(missing)
    )


MAPPING_KEYS_DEFAULTING_TO_NULL = {"task.json_schema"}
"""Keys whose value is a free-form mapping (a JSON Schema) though their default is null."""


def misspelt_yaml_keys(pages: list[Path]) -> list[str]:
    """Keys that the YAML examples of ``pages`` set under a config section and that ``rayformers
    describe`` does not know (below a mapping-valued key such as ``input.filesystem.options``
    anything goes)."""
    keys = config_keys()
    open_ended = {key for key, line in keys.items() if re.search(r" = \{", line)}
    open_ended |= MAPPING_KEYS_DEFAULTING_TO_NULL
    wrong = []
    for page in pages:
        for where, document in yaml_examples(page):
            if not isinstance(document, dict):
                continue
            for path in sorted(yaml_paths(document)):
                section = path.split(".")[0]
                if section not in CONFIG_SECTIONS or "." not in path:
                    continue
                if path in keys or any(path.startswith(k + ".") for k in open_ended):
                    continue
                if any(k.startswith(path + ".") for k in keys):  # a nested section (task.generation)
                    continue
                wrong.append(f"{where}: {path}")
    return wrong


def test_yaml_examples_parse_and_use_only_real_keys():
    wrong = misspelt_yaml_keys([ROOT / "README.md", *doc_pages()])
    assert not wrong, "YAML examples set keys that do not exist:\n" + "\n".join(wrong)


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: links reduced to their text, lower case, punctuation
    other than ``-`` and ``_`` dropped, spaces made hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text)
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = path.read_text(encoding="utf-8")
    seen: dict[str, int] = {}
    found = set(HTML_ANCHOR.findall(text))
    for match in HEADING.finditer(FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)):
        slug = github_anchor(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def linked_files() -> list[Path]:
    return [ROOT / "README.md", ROOT / "BENCHMARKS.md", *doc_pages()]


def broken_links(path: Path) -> list[str]:
    text = without_code(path.read_text(encoding="utf-8"))
    targets = LINK.findall(text) + REFERENCE_LINK.findall(text)
    broken = []
    for target in targets:
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:, ...
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        where = f"{shown(path)}: ({target})"
        if not resolved.exists():
            broken.append(f"{where}: no file {file_part}")
        elif not resolved.is_relative_to(ROOT):
            broken.append(f"{where}: points outside the repository")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{where}: no heading #{anchor} in {shown(resolved)}")
    return broken


@pytest.mark.parametrize("path", linked_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    broken = broken_links(path)
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_docs_page_is_reachable_from_the_index():
    index = DOCS / "index.md"
    text = without_code(index.read_text(encoding="utf-8"))
    linked = {(DOCS / t.partition("#")[0]).resolve() for t in LINK.findall(text) if t.partition("#")[0]}
    orphans = [p.name for p in doc_pages() if p != index and p.resolve() not in linked]
    assert not orphans, "docs pages that docs/index.md does not link: " + ", ".join(orphans)


def test_readme_stays_short_and_leads_to_the_docs():
    """The README is the pitch, the two commands, an example and a map; the reference lives in
    docs/. It must link the docs index and keep ``make demo`` / ``make test`` before any other
    section."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 220, "README.md grew past ~200 lines: move the detail to a docs/ page"
    assert "](docs/index.md)" in text
    first_section = text.split("\n## ", 2)[1]
    assert "make demo" in first_section and "make test" in first_section


def test_the_link_checker_catches_a_broken_link_and_anchor(tmp_path, monkeypatch):
    """The checks above can fail: a missing file and a missing heading are both reported."""
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Real heading\n", encoding="utf-8")
    page.write_text(
        "[ok](other.md#real-heading) [gone](missing.md) [bad anchor](other.md#nope) "
        "`[in code](missing.md)`\n",
        encoding="utf-8",
    )
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    broken = broken_links(page)
    assert len(broken) == 2
    assert "no file missing.md" in broken[0] and "no heading #nope" in broken[1]


def test_the_key_check_catches_an_undocumented_key(tmp_path):
    """A page showing one key in backticks and one in YAML documents exactly those two."""
    page = tmp_path / "page.md"
    page.write_text(
        "Set `compute.batch_size` or:\n\n```yaml\noutput: {mode: resume}\n```\n\nbatch_size alone is not enough: input.path neither.\n",
        encoding="utf-8",
    )
    missing = undocumented_keys([page])
    assert "compute.batch_size" not in missing and "output.mode" not in missing
    assert "input.path" in missing and "output.path" in missing


def test_the_yaml_check_catches_a_misspelt_key_and_invalid_yaml(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "```yaml\ntask: {poolng: mean, generation: {max_new_tokens: 8}}\n"
        "input: {filesystem: {options: {region: x}}}\n```\n",
        encoding="utf-8",
    )
    assert [w.split(": ")[-1] for w in misspelt_yaml_keys([page])] == ["task.poolng"]
    page.write_text("```yaml\ninput: {path: [unclosed\n```\n", encoding="utf-8")
    with pytest.raises(AssertionError, match="is not valid YAML"):
        yaml_examples(page)


def reference_row(key: str, line: str) -> str:
    """The config reference's table row for one ``rayformers describe`` line (what to paste when
    a key is added)."""
    import ast

    match = re.match(r"^[\w.]+ = (.*?)  # (.*)$", line)
    default, doc = match.groups()
    try:
        value = ast.literal_eval(default)
    except (ValueError, SyntaxError):
        value = default
    if value is None or isinstance(value, bool):
        default = {None: "null", True: "true", False: "false"}[value]
    elif isinstance(value, str):
        default = value or '""'
    doc = doc.replace("``", "`")
    accepted = ""
    one_of = re.search(r" \[one of: (.*)\]$", doc)
    if one_of:
        doc = doc[: one_of.start()]
        accepted = ", ".join(f"`{v}`" for v in one_of.group(1).split(", "))
    cell = lambda text: text.replace("|", "\\|")  # noqa: E731
    return f"| `{key}` | `{cell(default)}` | {cell(doc)} | {accepted} |"


def test_the_config_reference_lists_exactly_the_described_keys():
    """docs/config-reference.md has one row per key ``rayformers describe`` lists, and none for a
    key that no longer exists; the failure message holds the rows to paste."""
    text = (DOCS / "config-reference.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| `(\w+\.[\w.]+|models)` \|", text, re.M))  # dotted (and the top-level `models`): config keys only
    keys = config_keys()
    missing = [reference_row(key, line) for key, line in keys.items() if key not in listed]
    stale = sorted(listed - set(keys))
    assert not missing and not stale, (
        (f"rows to add to docs/config-reference.md (in its section's table):\n" + "\n".join(missing) if missing else "")
        + (f"\nrows of keys that no longer exist: {', '.join(stale)}" if stale else "")
    )
