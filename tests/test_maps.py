"""msvit.maps: the collected maps against values read by hand from the model's own modules, the sheet's size rule,
the inputs of image files, and one run of the command line on the digits recipe."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from msvit.errors import ConfigError, DataError
from msvit.maps.sheet import CELL_H, CELL_W, HEADER_H
from msvit.maps import check_block, collect_maps, draw_sheet, input_display, sheet_size
from msvit.maps.cli import file_transform, main as maps_main, read_image
from msvit.models import SpikingTransformer

ROOT = Path(__file__).resolve().parents[1]
T, B, HEADS = 2, 3, 2


def firing_model(token_attention: str, depths: tuple[int, ...] = (1, 1, 1), seed: int = 0) -> SpikingTransformer:
    """A tiny model (8x8 images, stage grids 8x8, 4x4, 2x2) whose batch norms scale up and shift every neuron's
    input so that roughly a third of them fire, differently per channel, token, time step and image."""
    torch.manual_seed(seed)
    model = SpikingTransformer(stem="cifar", img_size=8, in_chans=3, num_classes=5, T=T, embed_dim=16, depths=depths,
                               num_heads=HEADS, mlp_ratio=4.0, width_ratios=(0.5, 0.5, 1.0),
                               token_attention=token_attention, neuron_backend="torch")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) * 2 + 1)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.5 + 0.8)
    return model.train()  # collect_maps switches to eval mode and back


def images(seed: int = 1) -> torch.Tensor:
    return torch.randn(B, 3, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2


def by_hand(model: SpikingTransformer, x: torch.Tensor, block: int) -> tuple[dict, torch.Tensor]:
    """The outputs of every stage's last block, and of the chosen block's attention input and neurons, from the
    test's own hooks, and the logits, in eval mode."""
    seen, handles = {}, []

    def keep(key):
        return lambda module, args, out: seen.__setitem__(key, out.clone())

    for i in range(1, model.num_stages + 1):
        stage = getattr(model, f"stage{i}")
        handles.append(stage[-1].register_forward_hook(keep(f"stage{i}")))
        attn = stage[block].attn
        handles.append(attn.register_forward_pre_hook(lambda m, args, i=i: seen.__setitem__(f"x{i}", args[0])))
        for lif in ("attn_lif", "q_lif", "k_lif"):
            handles.append(getattr(attn, lif).register_forward_hook(keep(f"stage{i}.{lif}")))
    model.eval()
    with torch.no_grad():
        logits = model(x)
    for handle in handles:
        handle.remove()
    model.train()
    return seen, logits


def check_against_hooks(model: SpikingTransformer, x: torch.Tensor, block: int = -1, queries: int = 3) -> list[dict]:
    maps = collect_maps(model, x, block=block, queries=queries)
    assert model.training, "collect_maps restores the training mode"
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()), "hooks left behind"
    seen, logits = by_hand(model, x, block)
    assert len(maps) == x.shape[0]
    for b, image in enumerate(maps):
        assert np.array_equal(image["input"], x[b].numpy())
        np.testing.assert_allclose(image["logits"], logits[b].numpy(), rtol=1e-6, atol=1e-6)
        assert image["prediction"] == int(logits[b].argmax())
        assert [s["name"] for s in image["stages"]] == ["stage1", "stage2", "stage3"]
        for i, stage in enumerate(image["stages"], start=1):
            out = seen[f"stage{i}"]  # [T, B, C, H, W], counts on the residual stream
            expected = sum(out[t, b, c] for t in range(T) for c in range(out.shape[2]))
            assert np.array_equal(stage["spikes"], expected.numpy())
            H, W = seen[f"x{i}"].shape[-2:]
            assert stage["block"] == block % len(getattr(model, f"stage{i}"))
            if i < 3:
                assert stage["kind"] == ("MSSA" if model.config["token_attention"] == "mssa" else "QKTA")
                mask = seen[f"stage{i}.attn_lif"]  # [T, B, heads, 1, N]
                assert stage["mask"].shape == (HEADS, T, H, W)
                for h in range(HEADS):
                    for t in range(T):
                        assert np.array_equal(stage["mask"][h, t], mask[t, b, h, 0].reshape(H, W).numpy())
            else:
                assert stage["kind"] == "SSA" and "mask" not in stage
                check_ssa(stage, seen["stage3.q_lif"][:, b], seen["stage3.k_lif"][:, b], H, W, queries)
    return maps


def check_ssa(stage: dict, q: torch.Tensor, k: torch.Tensor, H: int, W: int, queries: int) -> None:
    """q, k: one sample's spikes [T, C, N]; the scores by a loop over time steps, channels and tokens."""
    C, N = q.shape[1:]
    d = C // HEADS
    count = min(queries, N)
    assert stage["scores"].shape == (HEADS, count, H, W)
    for h in range(HEADS):
        channels = range(h * d, (h + 1) * d)
        spikes = [sum(float(q[t, c, i]) for t in range(T) for c in channels) for i in range(N)]
        chosen = sorted(range(N), key=lambda i: (-spikes[i], i))[:count]
        assert list(stage["queries"][h]) == chosen
        assert list(stage["query_spikes"][h]) == [spikes[i] for i in chosen]
        for j, i in enumerate(chosen):
            scores = [sum(float(q[t, c, i] * k[t, c, key]) for t in range(T) for c in channels) for key in range(N)]
            assert np.array_equal(stage["scores"][h, j].reshape(-1), np.array(scores))


def assert_maps_vary(maps: list[dict]) -> None:
    """The test would pass trivially on silent neurons: the maps differ between heads, time steps and images."""
    for i in (0, 1):
        mask = [image["stages"][i]["mask"] for image in maps]
        assert 0 < mask[0].mean() < 1
        assert (mask[0][0] != mask[0][1]).any(), "heads"
        assert (mask[0][:, 0] != mask[0][:, 1]).any(), "time steps"
        assert (mask[0] != mask[1]).any(), "images"
    for i in range(3):
        assert not np.array_equal(maps[0]["stages"][i]["spikes"], maps[1]["stages"][i]["spikes"])
    ssa = [image["stages"][2] for image in maps]
    assert (ssa[0]["scores"] > 0).any() and not np.array_equal(ssa[0]["scores"], ssa[1]["scores"])
    assert (ssa[0]["scores"][0] != ssa[0]["scores"][1]).any(), "SSA heads"


@pytest.mark.parametrize("attention", ["mssa", "qkta"])
def test_maps_match_the_model_s_own_neurons(attention):
    assert_maps_vary(check_against_hooks(firing_model(attention), images()))


def test_the_block_option_picks_that_block_of_every_stage():
    model, x = firing_model("mssa", depths=(2, 2, 2), seed=3), images(4)
    first, last = check_against_hooks(model, x, block=0, queries=2), check_against_hooks(model, x, block=-1)
    assert first[0]["stages"][0]["block"] == 0 and last[0]["stages"][0]["block"] == 1
    assert not np.array_equal(first[0]["stages"][0]["mask"], last[0]["stages"][0]["mask"])
    assert np.array_equal(first[0]["stages"][0]["spikes"], last[0]["stages"][0]["spikes"])  # the stage's output


def test_queries_beyond_the_token_count_take_every_token():
    maps = check_against_hooks(firing_model("qkta", seed=5), images(6), queries=9)  # SSA stage: 2x2 tokens
    assert maps[0]["stages"][2]["scores"].shape[1] == 4


def test_a_block_or_query_count_out_of_range_is_refused():
    model = firing_model("mssa", depths=(2, 1, 3))
    check_block(model, 0)
    check_block(model, -1)
    for block in (1, -2, 5):
        with pytest.raises(ConfigError, match=rf"--block {block} is out of range.*2, 1, 3 blocks.*from -1 to 0"):
            collect_maps(model, images(), block=block)
    with pytest.raises(ConfigError, match="--queries must be 1 or more"):
        collect_maps(model, images(), queries=0)


def test_the_sheet_has_the_predicted_size(tmp_path):
    maps = collect_maps(firing_model("mssa"), images())
    # columns: max(input + 3 stages, T = 2 mask steps, K = 3 queries); rows: the top row + 2 heads x 3 stages
    assert sheet_size(maps[0]) == (4 * CELL_W, HEADER_H + 7 * CELL_H)
    shown = input_display(maps[0]["input"], mean=(0.5,) * 3, std=(0.25,) * 3)
    path = draw_sheet(maps[0], tmp_path / "sheet.png", image=shown, title="a test image")
    with Image.open(path) as sheet:
        assert sheet.format == "PNG" and sheet.size == (4 * CELL_W, HEADER_H + 7 * CELL_H)
    assert [p.name for p in tmp_path.iterdir()] == ["sheet.png"]  # no partial file left


def test_event_frames_are_shown_as_counts_over_time_and_polarity(tmp_path):
    torch.manual_seed(0)
    model = SpikingTransformer(stem="dvs", img_size=32, in_chans=2, num_classes=3, T=T, embed_dim=16, depths=(1, 1),
                               num_heads=HEADS, width_ratios=(0.5, 1.0), neuron_backend="torch")
    frames = torch.randint(0, 3, (2, T, 2, 32, 32)).float()
    maps = collect_maps(model, frames)
    assert maps[0]["input"].shape == (T, 2, 32, 32) and maps[0]["stages"][0]["mask"].shape == (HEADS, T, 4, 4)
    assert np.array_equal(input_display(maps[0]["input"]), frames[0].sum(dim=(0, 1)).numpy())
    path = draw_sheet(maps[0], tmp_path / "frames.png")
    with Image.open(path) as sheet:  # columns: max(1 + 2 stages, T, K = 3); rows: 1 + 2 heads x 2 stages
        assert sheet.size == sheet_size(maps[0]) == (3 * CELL_W, HEADER_H + 5 * CELL_H)


def test_image_files_go_through_the_digits_evaluation_transform(tmp_path):
    Image.new("L", (8, 8), 255).save(tmp_path / "white.png")
    x = file_transform({"img_size": 16, "mean": None, "std": None}, "digits")(read_image(str(tmp_path / "white.png")))
    assert x.shape == (3, 16, 16) and torch.allclose(x, torch.ones_like(x))  # (1 - 0.5) / 0.5
    assert np.allclose(input_display(x.numpy(), (0.5,) * 3, (0.5,) * 3), 1.0)
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(DataError, match=r"cannot read image file .*notes.png .*: give a PNG or JPEG image"):
        read_image(str(tmp_path / "notes.png"))
    with pytest.raises(DataError, match="image file .*gone.png not found: check the path"):
        read_image(str(tmp_path / "gone.png"))


def test_command_line_on_the_digits_recipe(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run([sys.executable, "-m", "msvit.maps", "--config", "digits/digits.yml", "--images", "2",
                           "--json", "--out", str(tmp_path), "--model-kwargs", "{embed_dim: 32, num_heads: 2}"],
                          cwd=ROOT, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)  # stdout holds the JSON object alone
    assert "random weights" in proc.stderr
    assert result["dataset"] == "digits" and result["checkpoint"] is None and result["block"] == -1
    sheets = result["sheets"]
    assert [s["index"] for s in sheets] == [0, 1] and all(isinstance(s["label"], int) for s in sheets)
    # the reduced model is named with its arguments, not taken for the full one
    assert all(s["title"].endswith("msvit_cifar_4_384 (embed_dim 32, num_heads 2), random weights") for s in sheets)
    for sheet in sheets:
        path = Path(sheet["path"])
        assert path.parent == tmp_path and path.name == f"image_{sheet['index']:03d}_label_{sheet['label']}.png"
        assert set(sheet["stage_spikes"]) == {"stage1", "stage2", "stage3"} and 0 <= sheet["prediction"] < 10
        with Image.open(path) as png:  # T 2, 2 heads, 3 queries of 4x4 SSA tokens: 4 columns, 7 rows
            assert png.size == (4 * CELL_W, HEADER_H + 7 * CELL_H)


def test_maps_help_is_one_usage_of_this_program(capsys):
    with pytest.raises(SystemExit) as exit_:
        maps_main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if "usage:" in line] == [
        "usage: python -m msvit.maps --config FILE [--checkpoint PATH] [--images N | --files IMAGE ...]"]
    assert "maps.py" not in out and "zoo.py" not in out and "\n  --model-kwargs " in out
    assert "--mixup" not in out and "--energy" not in out


def test_maps_refuses_a_model_name_with_a_typo(capsys):
    with pytest.raises(SystemExit) as exit_:
        maps_main(["--config", str(ROOT / "digits" / "digits.yml"), "--model", "qkformer_cifar_4_38"])
    assert exit_.value.code == 2
    assert "did you mean 'qkformer_cifar_4_384'?" in capsys.readouterr().err
