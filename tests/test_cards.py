"""Model cards and the README model table are generated from docs/models/meta/*.yaml and must be up to date."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import visionzoo
from visionzoo import cards

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def rendered() -> dict[Path, str]:
    return cards.render(ROOT)


def test_committed_cards_and_readme_are_up_to_date(rendered):
    stale = [
        str(p.relative_to(ROOT)) for p, text in rendered.items() if not p.is_file() or p.read_text() != text
    ]
    assert not stale, (
        f"regenerate with `python -m visionzoo.cards`: {stale} differ from docs/models/meta/*.yaml"
    )


def test_every_zoo_model_has_a_card():
    missing = cards.uncovered(ROOT)
    assert not missing, (
        f"{missing} have no model card: list them under 'variants' of docs/models/meta/<family>.yaml "
        "and run `python -m visionzoo.cards`"
    )


def test_card_content(rendered):
    card = rendered[ROOT / "docs" / "models" / "biformer.md"]
    # measured numbers
    assert "| `biformer_tiny` | 13,142,760 | 13.1 M | 2.22 | 2.2 | 81.4 |" in card
    # the prose kept from the metadata, and the generated weights table inside it
    for heading in (
        "## Numerics",
        "## Weights",
        "## Differences from the official code",
        "## Recipes",
        "## Routing picture",
    ):
        assert heading in card
    assert "`biformer_small.in1k-content`" in card and "not pinned" in card
    assert "{{" not in card


def test_readme_table(rendered):
    readme = rendered[ROOT / "README.md"]
    table = readme[readme.index(cards.README_START) : readme.index(cards.README_END)]
    for name in visionzoo.list_models():
        assert f"| `{name}` |" in table
    assert "[BiFormer](docs/models/biformer.md)" in table
    # the rest of the README is untouched
    original = (ROOT / "README.md").read_text()
    assert readme[: readme.index(cards.README_START)] == original[: original.index(cards.README_START)]


def test_bad_metadata_is_one_sentence(tmp_path):
    meta = tmp_path / "docs" / "models" / "meta"
    meta.mkdir(parents=True)
    shutil.copy(ROOT / "docs" / "models" / "meta" / "biformer.yaml", meta / "biformer.yaml")
    (tmp_path / "README.md").write_text("# x\n\n## Models\n\n<!-- models:start -->\n<!-- models:end -->\n")
    files = cards.render(tmp_path)
    assert "biformer_base" in files[tmp_path / "README.md"]
    text = (meta / "biformer.yaml").read_text()
    (meta / "biformer.yaml").write_text(text.replace("model: biformer_base", "model: biformer_huge"))
    with pytest.raises(cards.CardError, match="'biformer_huge' is not a registered model"):
        cards.render(tmp_path)
    (meta / "biformer.yaml").write_text(text.replace("{{ weights_table }}", "{{ weight_table }}"))
    with pytest.raises(cards.CardError, match="unknown template tokens"):
        cards.render(tmp_path)
    (meta / "biformer.yaml").write_text(text)
    (tmp_path / "README.md").write_text("# x\n")
    with pytest.raises(cards.CardError, match="no <!-- models:start -->"):
        cards.render(tmp_path)
