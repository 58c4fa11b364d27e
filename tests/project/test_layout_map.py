"""The README's layout map lists the repository's top-level folders one to one, and its import names are the
ones ``setup.py`` maps (``MAPPED``: folder ``X/`` -> ``beit3_plugins.X``)."""
import ast
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _layout_rows():
    text = (REPO / "README.md").read_text()
    section = text.split("## Layout\n", 1)[1].split("\n## ", 1)[0]
    return {m.group(1): m.group(2) for m in re.finditer(r"^\| `([^`/]+)/` \| ([^|]+) \|", section, re.M)}


def test_readme_layout_map_matches_the_folders_and_setup_mapping():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    folders = {line.split("/", 1)[0] for line in tracked.splitlines() if "/" in line}
    folders = {f for f in folders if not f.startswith(".")}
    rows = _layout_rows()
    assert set(rows) == folders, (sorted(set(rows) - folders), sorted(folders - set(rows)))
    tree = ast.parse((REPO / "setup.py").read_text())
    mapped = next(ast.literal_eval(node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "MAPPED")
    assert all(name == folder for name, folder in mapped.items())
    for folder in mapped:
        assert rows[folder].strip() == f"`beit3_plugins.{folder}`", (folder, rows[folder])
    assert rows["beit3_plugins"].strip() == "`beit3_plugins`"
