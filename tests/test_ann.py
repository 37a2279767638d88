"""timm's ANNs by the same energy rule (MACs x 4.6 pJ, counted on the meta device), accepted by the settings, and
MSViT's comparison table (`python -m msvit.zoo --table`). The ANN's run on digits: test_training.py."""
import json
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

import msvit.zoo
from msvit.config import ConfigError, parse_args
from msvit.config.ann import ann_run_settings, is_ann
from msvit.energy.ann import ann_energy, count_macs
from msvit.energy.table import ADDED, NO_CODE, OTHER_PROTOCOL, PUBLISHED, RUNS, comparison_table, read_firing

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "digits" / "digits.yml"
TINY_VIT = dict(img_size=8, patch_size=4, embed_dim=8, depth=1, num_heads=2, mlp_ratio=4, num_classes=3)


def test_the_macs_of_an_mlp_by_hand():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    assert count_macs(model, (3, 2, 2)) == 12 * 16 + 16 * 4


def test_the_macs_of_a_tiny_vit_by_hand():
    # 4 patches of 3x4x4 and a class token: N 5 tokens of width 8, 2 heads of 4, MLP 32, 3 classes
    patches, tokens, width, hidden = 4, 5, 8, 32
    by_hand = (patches * width * 3 * 4 * 4              # the patch embedding's convolution
               + tokens * width * 3 * width             # q, k, v
               + 2 * tokens * tokens * width            # q k^T and (q k^T) v over the 2 heads
               + tokens * width * width                 # the projection
               + 2 * tokens * width * hidden            # the MLP
               + width * 3)                             # the head on the class token
    with torch.device("meta"):
        model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY_VIT)
    assert count_macs(model, (3, 8, 8)) == by_hand
    assert ann_energy("vit_tiny_patch16_224", **TINY_VIT)["macs"] == by_hand


@pytest.mark.parametrize("name, gmacs, mj", [("deit_base_patch16_224", 17.564, 80.79),
                                             ("vit_base_patch16_384", 55.484, 255.23),
                                             ("swin_tiny_patch4_window7_224", 4.491, 20.66),
                                             ("swin_base_patch4_window7_224", 15.431, 70.98)])
def test_the_spec_figures_of_the_ann_rows(name, gmacs, mj):
    cost = ann_energy(name)
    assert round(cost["gmacs"], 3) == gmacs and round(cost["energy_mj"], 2) == mj


def test_an_ann_name_is_accepted_and_its_spiking_settings_are_refused_on_the_command_line():
    assert is_ann("deit_tiny_patch16_224") and not is_ann("msvit_10_384") and not is_ann("deit_tiny_patch16_22")
    cfg = parse_args(["--model", "deit_tiny_patch16_224", "--model-kwargs", "{patch_size: 4, embed_dim: 16, "
                      "depth: 1, num_heads: 2}"], DIGITS)
    msvit.zoo.check_dataset_model(cfg, ("msvit_cifar_4_384",))  # any image dataset
    line = ann_run_settings(cfg)
    assert line.startswith("an ANN (timm's VisionTransformer): no T, no spikes") and "time_step 2" in line
    assert cfg["time_step"] == 1 and cfg["batch_coupled_ssa"] is False and cfg["watch_firing"] is False
    with pytest.raises(ConfigError, match="--time-step: deit_tiny_patch16_224 is an ANN"):
        parse_args(["--model", "deit_tiny_patch16_224", "--time-step", "3"], DIGITS)
    with pytest.raises(ConfigError, match="did you mean 'msvit_cifar_4_384'"):
        msvit.zoo.check_dataset_model({"model": "msvit_cifar_4_38"}, ("msvit_cifar_4_384",))


def test_the_table_has_every_row_of_msvits_table():
    rows = comparison_table(msvit.zoo.ZOO)
    assert len(PUBLISHED) == 20 and len(rows) == len(PUBLISHED) + len(ADDED)
    systems = {row["system"]: row for row in rows}
    for name in ("DeiT-B", "ViT-B/16 384²", "Swin-T", "Swin-S", "Spikformer 8-384", "Spikformer 8-768",
                 "Spikformer V2-8-384", "Spikformer V2-8-512", "SDT 8-384", "SDT 8-512", "SDT 8-768",
                 "QKFormer 10-384", "QKFormer 10-512", "QKFormer 10-768", "MSViT-10-384", "MSViT-10-512",
                 "MSViT-10-768"):
        assert name in systems
    assert [row["model"] for row in rows if row["system"].startswith("SDT v2")] == [
        "metaspikformer_8_256", "metaspikformer_8_384", "metaspikformer_8_512"]
    assert {row["system"].split()[0]: row["status"] for row in rows if row["status"] != RUNS} == {
        "Spikformer": NO_CODE, "SpiLiFormer-10-768": NO_CODE, "STAS": NO_CODE, "E-SpikeFormer": OTHER_PROTOCOL}
    assert systems["SpiLiFormer-10-768 (ICCV 2025)"]["published_top1"] == 85.82
    swin_t = systems["Swin-T"]  # the printed value (Swin-B's) beside ours
    assert swin_t["published_energy_mj"] == 70.84 and round(swin_t["energy_mj"], 2) == 20.66 and swin_t["note"]
    assert all(row["energy_basis"] == "not measured" for row in rows if row["model"] in msvit.zoo.ALL_ARCHS)


def test_the_tables_counts_are_the_zoos():
    rows = {(row["model"], row["input"]): row for row in comparison_table(msvit.zoo.ZOO)}
    for model, size in (("msvit_10_384", None), ("sdt_8_768", 288), ("metaspikformer_8_256", None)):
        entry = next(e for e in msvit.zoo.ZOO if e.model == model and e.dataset == "imagenet"
                     and e.kwargs.get("img_size") == size)
        counted = msvit.zoo.parameter_table([entry])[0]["params"]
        assert rows[(model, entry.kwargs.get("img_size", 224))]["params"] == counted


def test_measured_energy_fills_our_column(tmp_path):
    path = tmp_path / "compare.json"
    path.write_text(json.dumps({"labels": ["a", "b"], "reports": [
        {"model": "msvit_10_384", "model_kwargs": {}, "dataset": "imagenet", "T": 4, "energy_mj": 17.5},
        {"model": "qkformer_10_384", "model_kwargs": {"embed_dim": 64}, "dataset": "digits", "T": 2,
         "energy_mj": 0.01}]}))
    measured = read_firing([path])
    assert set(measured) == {"msvit_10_384"}  # a reduced model is not the table's row
    rows = {row["system"]: row for row in comparison_table(msvit.zoo.ZOO, measured)}
    assert rows["MSViT-10-384"]["energy_mj"] == 17.5 and "measured" in rows["MSViT-10-384"]["energy_basis"]
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ConfigError, match="not an output of python -m msvit.energy --json"):
        read_firing([tmp_path / "bad.json"])


def test_json_is_one_object(capsys):
    msvit.zoo.main(["--table", "--json"])
    out = capsys.readouterr().out
    data = json.loads(out)
    assert isinstance(data, dict) and len(data["rows"]) == len(PUBLISHED) + len(ADDED)
    msvit.zoo.main(["--table"])
    assert "| Swin-T [" in capsys.readouterr().out
