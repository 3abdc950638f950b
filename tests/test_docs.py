from __future__ import annotations

from pathlib import Path

from chainwatch.store import schema_doc

ROOT = Path(__file__).resolve().parent.parent


def test_readme_schema_matches_migrations() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index(schema_doc.BEGIN)
    end = readme.index(schema_doc.END) + len(schema_doc.END)
    assert readme[start:end] == schema_doc.schema_markdown(), (
        "README schema is stale: run python -m chainwatch.store.schema_doc --write README.md"
    )


def test_every_column_is_documented() -> None:
    text = schema_doc.schema_markdown()
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    undocumented = [line for line in rows if line.endswith("|  |")]
    assert undocumented == []


def test_readme_starts_with_demo_and_test_commands() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = [b.split("```", 1)[0].strip() for b in readme.split("```bash\n")[1:3]]
    assert "chainwatch demo" in blocks[0]
    assert "pytest" in blocks[1]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert blocks[1] in ci, "the CI script must run exactly the README's test command"
