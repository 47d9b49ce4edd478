"""The documentation stays true to the code: config reference, links, names.

`python tests/test_docs.py` prints the experiment-config table of docs/configuration.md
(paste it between the `config-matrix` markers when a config changes).
"""

import ast
import glob
import importlib
import os
import re
import sys

import pytest

from rpe_jax import config_utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = sorted(glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True))
PAGES = [os.path.join(ROOT, "README.md"), *DOCS]
CONFIG_DOC = os.path.join(ROOT, "docs", "configuration.md")
MATRIX_START, MATRIX_END = "<!-- config-matrix", "<!-- end config-matrix -->"
# Link targets that may be missing: written by other work (results of a real run, the demo
# figure the lead generates, the cloud launchers in progress). Every other target must exist.
MAY_BE_MISSING = {
    "docs/results.md",
    "docs/assets/demo_samples.png",
}
# The README's two set-up commands (also the CI's test command, .ci/run).
SETUP_COMMANDS = (
    "python -m venv .venv && . .venv/bin/activate && python -m pip install -e . && "
    "python -m rpe_jax.main --config=configs/demo.py --workdir=/tmp/rpe_demo",
    'python -m pip install -e ".[test]" && python -m pytest -q',
)


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _rel(path: str) -> str:
    return os.path.relpath(path, ROOT)


def experiment_configs() -> dict[str, dict]:
    """{file name: flattened config} of every configs/*.py, base.py first."""
    names = sorted(
        os.path.basename(p)[:-3]
        for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
        if not p.endswith("__init__.py")
    )
    names = ["base"] + [n for n in names if n != "base"]
    return {
        f"{n}.py": config_utils.leaf_fields(importlib.import_module(f"configs.{n}").get_config())
        for n in names
    }


def config_matrix() -> list[str]:
    """Markdown table: every field some experiment changes, its base default and each value."""
    configs = experiment_configs()
    base = configs["base.py"]
    changed = sorted({k for c in configs.values() for k, v in c.items() if base.get(k, object()) != v})
    lines = ["| field | " + " | ".join(f"`{n}`" for n in configs) + " |", "|---" * (len(configs) + 1) + "|"]
    for key in changed:
        others = [c for name, c in configs.items() if name != "base.py"]
        cells = [f"`{base[key]!r}`"] + [f"`{c[key]!r}`" if c[key] != base[key] else "" for c in others]
        lines.append(f"| `{key}` | " + " | ".join(cells) + " |")
    return lines


def documented_fields() -> dict[str, str]:
    """{field: default text} from the `| `field` | `default` | meaning |` rows of the reference."""
    text = _read(CONFIG_DOC).split(MATRIX_START)[0]
    rows = re.findall(r"^\| `([A-Za-z_][\w.]*)` \| `([^`]*)` \|", text, flags=re.M)
    fields = {}
    for field, default in rows:
        assert field not in fields, f"docs/configuration.md documents {field} twice"
        fields[field] = default
    return fields


def test_every_config_field_is_documented_with_its_default():
    from configs import base

    actual = config_utils.leaf_fields(base.get_config())
    documented = documented_fields()
    missing = sorted(set(actual) - set(documented))
    stale = sorted(set(documented) - set(actual))
    assert not missing, f"fields of configs/base.py missing from docs/configuration.md: {missing}"
    assert not stale, f"docs/configuration.md documents fields that configs/base.py lacks: {stale}"
    wrong = {
        field: (text, actual[field])
        for field, text in documented.items()
        if repr(ast.literal_eval(text)) != repr(actual[field])
    }
    assert not wrong, f"documented default differs from base.get_config() (doc, actual): {wrong}"


def test_experiment_config_table_matches_the_configs():
    text = _read(CONFIG_DOC)
    assert MATRIX_START in text and MATRIX_END in text, "config-matrix markers missing"
    block = text.split(MATRIX_START, 1)[1].split("\n", 1)[1].split(MATRIX_END)[0]
    documented = [line.strip() for line in block.strip().splitlines()]
    expected = config_matrix()
    assert documented == expected, (
        "docs/configuration.md's experiment table is stale; regenerate it with "
        "`python tests/test_docs.py`:\n" + "\n".join(expected)
    )


def _without_code(text: str) -> str:
    """Text with fenced code blocks and inline code spans blanked (links inside them are not links)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    heading = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return heading.replace(" ", "-")


def _anchors(path: str) -> set[str]:
    text = re.sub(r"^```.*?^```", "", _read(path), flags=re.M | re.S)
    anchors, seen = set(), {}
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, flags=re.M):
        slug = _slug(heading)
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def _links(path: str) -> list[str]:
    text = _without_code(_read(path))
    links = re.findall(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", text)
    return links + re.findall(r"<img[^>]*\ssrc=\"([^\"]+)\"", text)


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_relative_links_point_to_existing_files(page):
    broken = []
    for link in _links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", link):  # http:, https:, mailto:
            continue
        target, _, anchor = link.partition("#")
        path = os.path.normpath(os.path.join(os.path.dirname(page), target)) if target else page
        rel = _rel(path)
        if rel.startswith(".."):
            broken.append(f"{link} (outside the repository)")
        elif not os.path.exists(path):
            if rel not in MAY_BE_MISSING:
                broken.append(f"{link} (no {rel})")
        elif anchor and path.endswith(".md") and anchor not in _anchors(path):
            broken.append(f"{link} (no heading #{anchor} in {rel})")
    assert not broken, f"{_rel(page)} has broken links: {broken}"


def test_named_config_files_exist():
    missing = set()
    for page in PAGES:
        for name in re.findall(r"configs/\w+\.py", _read(page)):
            if not os.path.exists(os.path.join(ROOT, name)):
                missing.add(f"{_rel(page)}: {name}")
    assert not missing, f"docs name config files that do not exist: {sorted(missing)}"


def _module_names() -> dict[str, set[str]]:
    """{module stem: top-level names} of every rpe_jax module, from its source (no import)."""
    modules = {}
    for path in glob.glob(os.path.join(ROOT, "rpe_jax", "**", "*.py"), recursive=True):
        stem = os.path.basename(path)[:-3]
        if stem == "__init__":
            continue
        assert stem not in modules, f"two rpe_jax modules named {stem}: the docs' `{stem}.x` is ambiguous"
        names = set()
        for node in ast.parse(_read(path)).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names.update(t.id for t in targets if isinstance(t, ast.Name))
        modules[stem] = names
    return modules


@pytest.mark.parametrize("page", [p for p in PAGES if p != CONFIG_DOC], ids=_rel)
def test_code_names_in_docs_exist(page):
    """`rope.make_rope`-style references name a real top-level function, class or constant."""
    modules = _module_names()
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"^```.*?^```", "", _read(page), flags=re.M | re.S))
    unknown = set()
    for span in spans:
        for stem, name in re.findall(r"(?<![\w./-])([a-z_]+)\.([A-Za-z_]\w*)", span):
            if stem in modules and name not in modules[stem] and name != "py":
                unknown.add(f"{stem}.{name}")
    assert not unknown, f"{_rel(page)} names code that does not exist: {sorted(unknown)}"


def test_method_page_names_every_registered_rule_and_method():
    from rpe_jax import methods, positions, rope

    text = _read(os.path.join(ROOT, "docs", "method.md"))
    registries = {
        "methods.METHODS": methods.METHODS,
        "rope.FREQUENCY_RULES": rope.FREQUENCY_RULES,
        "rope.ATTENTION_SCALE_RULES": rope.ATTENTION_SCALE_RULES,
        "positions.INFERENCE_RULES": positions.INFERENCE_RULES,
        "positions.TRAIN_RULES": positions.TRAIN_RULES,
    }
    missing = [
        f"{registry}[{name!r}]"
        for registry, names in registries.items()
        for name in names
        if f"`{name}`" not in text
    ]
    assert not missing, f"docs/method.md does not name {missing}"


def test_readme_keeps_the_two_setup_commands():
    readme = _read(os.path.join(ROOT, "README.md"))
    for command in SETUP_COMMANDS:
        assert command in readme, f"README.md lost its set-up command: {command}"
    ci = _read(os.path.join(ROOT, ".ci", "run"))
    assert SETUP_COMMANDS[1] in ci, "CI (.ci/run) no longer runs the README's test command"


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    print("\n".join(config_matrix()))
