"""Model cards: one per released checkpoint, generated from the variant table, every number sourced, snippet runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

from fastfcn_hub import FastFCN, list_models, variant_config
from fastfcn_hub.cli import main
from fastfcn_hub.model_cards import card_path, model_card, usage_snippet, write_model_cards
from fastfcn_hub.variants import VARIANTS, get_variant

ROOT = Path(__file__).parents[1]
CARDS = ROOT / "MODEL_CARDS"
RELEASED = list_models(released=True)


def test_one_committed_card_per_released_checkpoint_and_up_to_date():
    assert len(RELEASED) == 15
    assert sorted(p.stem for p in CARDS.glob("*.md")) == sorted(RELEASED)
    stale = write_model_cards(CARDS, check=True)
    assert not stale, f"stale cards {stale}: run `python scripts/make_model_cards.py`"


@pytest.mark.parametrize("name", RELEASED)
def test_card_content_and_model_index(name):
    variant = get_variant(name)
    card = ModelCard.load(card_path(variant, CARDS))
    data = card.data.to_dict()
    assert data["license"] == "apache-2.0" and data["pipeline_tag"] == "image-segmentation"
    results = card.data.eval_results
    assert [(r.metric_name, r.metric_value) for r in results] == [
        ("mIoU", variant.miou),
        ("mIoU (ms+flip)", variant.miou_ms_flip),
    ]
    assert all(r.metric_type == "mean_iou" and r.source_url == variant.metrics_source for r in results)
    assert all(r.source_url.startswith("https://github.com/open-mmlab/mmsegmentation/blob/v1.2.2/") for r in results)

    text = card.text
    for needle in (variant.mmseg_config, variant.mmseg_checkpoint, variant.checkpoint_hash, "Apache-2.0",
                   "How the conversion was verified", "## Limitations", variant.hub_repo_id):  # fmt: skip
        assert needle in text, needle
    assert f"| {variant.miou:.2f} | {variant.miou_ms_flip:.2f} |" in text


def test_every_score_in_a_card_is_a_sourced_table_value():
    """Numbers that look like mIoU (two decimals, 30-100) are the variant's own, whose source the card names."""
    for name in RELEASED:
        variant = get_variant(name)
        text = card_path(variant, CARDS).read_text()
        computed = ("- Parameters:", "- Input:")  # counted from the model; mmseg's normalisation constants
        text = "\n".join(line for line in text.splitlines() if not line.startswith(computed))
        scores = {float(s) for s in re.findall(r"(?<![\d.])(\d{2}\.\d{1,2})(?![\d.])", text) if 30 <= float(s) < 100}
        assert scores <= {variant.miou, variant.miou_ms_flip}, (name, scores)
        assert "999" not in text
        assert variant.metrics_source in text


def test_reference_table_placeholder_row_uses_the_metafile():
    variant = get_variant("fastfcn_r50_jpu_aspp.cityscapes_4xb2")
    assert (variant.miou, variant.miou_ms_flip) == (79.12, 80.58)
    text = card_path(variant, CARDS).read_text()
    assert "placeholder" in text and "fastfcn/metafile.yaml" in text


def test_baseline_scores_cite_their_own_metafiles():
    for arch in ("deeplabv3", "pspnet", "encnet"):
        assert get_variant(f"{arch}_r50_d8.cityscapes").metrics_source.endswith(f"/configs/{arch}/metafile.yaml")


def test_unreleased_variants_have_no_card():
    with pytest.raises(ValueError, match="no released checkpoint"):
        model_card("fastfcn_r18_jpu_psp")
    assert not [v for v in VARIANTS if not v.released and card_path(v, CARDS).exists()]


def test_cards_script_checks_and_writes(tmp_path):
    import subprocess
    import sys

    script = ROOT / "scripts" / "make_model_cards.py"
    run = [sys.executable, str(script), "--output-dir", str(tmp_path)]
    assert subprocess.run([*run, "--check"], capture_output=True).returncode == 1  # empty dir: all stale
    assert subprocess.run(run, capture_output=True).returncode == 0
    assert len(list(tmp_path.glob("*.md"))) == 15
    assert subprocess.run([*run, "--check"], capture_output=True).returncode == 0


def test_usage_snippet_runs_against_a_converted_directory(tmp_path, capsys):
    """The card's snippet, with the hub id replaced by a locally converted directory of that variant."""
    name = "deeplabv3_r50_d8.cityscapes"
    variant = get_variant(name)
    model = FastFCN(variant_config(name))
    state_dict = {
        key.replace("backbone.bn1.", "backbone.stem.7.").replace("backbone.conv1.", "backbone.stem."): value
        for key, value in model.state_dict().items()
    }
    checkpoint = tmp_path / Path(variant.mmseg_checkpoint).name
    torch.save({"meta": {}, "state_dict": state_dict}, checkpoint)
    assert main(["convert", str(checkpoint), str(tmp_path / "model")]) == 0
    capsys.readouterr()

    snippet = usage_snippet(variant)
    assert snippet in card_path(variant, CARDS).read_text()
    exec(compile(snippet.replace(variant.hub_repo_id, str(tmp_path / "model")), "card_snippet", "exec"), {})
    printed = capsys.readouterr().out
    assert "torch.Size([128, 256])" in printed
    assert any(label in printed for label in model.config.id2label.values())


def test_readme_pretrained_table_is_generated_from_the_variant_table():
    from fastfcn_hub.model_cards import pretrained_table_markdown

    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Pretrained weights", 1)[1].split("\n## ", 1)[0]
    assert pretrained_table_markdown() in section
