"""The energy estimate: every count of a tiny model whose spikes are set by hand equals the hand computation,
the first convolution is the only MAC layer, totals add up, the meter leaves the model untouched, a fused
q/k/v forward is measured the same, and `python -m msvit.energy` / `test.py --energy` print the results."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

import msvit
import msvit.evaluate
import msvit.models
from msvit import layers as msvit_layers
from msvit.config import parse_args
from msvit.energy import EnergyMeter, format_report, format_totals
from msvit.models import SpikingTransformer
from msvit.zoo import create_dataset_model

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "digits" / "digits.yml"
VARIANTS = ("msvit_cifar_4_384", "qkformer_cifar_4_384")
T = 2
PJ = 1e-9  # mJ per pJ
TOP_KEYS = {"energy_mj", "mac_flops", "sops", "layers", "stages", "firing_rates", "images", "e_mac_pj", "e_ac_pj"}

# ----------------------------------------------------------------------------------------------- crafted model
# Every convolution is zero and every batch norm an identity plus a bias of +10 (the channel fires at every
# step: v = 5 >= 1) or -10 (never fires), so each neuron's spikes are a fixed set of channels, whatever the
# input. Widths 8, 8, 16 (embed_dim 16, width ratios 0.5, 0.5, 1), 2 heads, one block per stage, 8x8 images:
# stage 1 has 8x8 tokens, stage 2 4x4, stage 3 2x2.
FIRING = {
    "patch_embed1.proj_lif": range(1),          # 1 of 4
    "patch_embed1.proj1_lif": range(3),         # 3 of 8
    "patch_embed1.proj_res_lif": range(2),      # 2 of 8
    "stage1.0.attn.q_lif": [0, 1, 2],           # head 0 (channels 0-3) counts 3, head 1 counts 0
    "stage1.0.attn.p_lif": [0, 4],              # MSSA: head 0 counts 3 + 1, head 1 counts 1 (below threshold)
    "stage1.0.attn.k_lif": [0, 1, 4, 5, 6],
    "stage1.0.attn.proj_lif": [0],
    "stage1.0.mlp.fc1_lif": range(4),           # 4 of 32
    "stage1.0.mlp.fc2_lif": range(2),           # 2 of 8
    "patch_embed2.proj3_lif": range(4),
    "patch_embed2.proj4_lif": range(1),
    "patch_embed2.proj_res_lif": range(2),
    "stage2.0.attn.q_lif": [4, 5],              # head 1 (channels 4-7) counts 2 (+1 from P), head 0 none
    "stage2.0.attn.p_lif": [6],
    "stage2.0.attn.k_lif": [3, 4],
    "stage2.0.attn.proj_lif": range(3),
    "stage2.0.mlp.fc1_lif": range(8),           # 8 of 32
    "stage2.0.mlp.fc2_lif": range(1),
    "patch_embed3.proj3_lif": range(8),         # 8 of 16
    "patch_embed3.proj4_lif": range(4),
    "patch_embed3.proj_res_lif": range(2),
    "stage3.0.attn.q_lif": range(5),            # SSA, head 0 = channels 0-7: q.k = 5 on every token
    "stage3.0.attn.k_lif": range(6),
    "stage3.0.attn.v_lif": [0, 1, 8],
    "stage3.0.attn.proj_lif": range(4),
    "stage3.0.mlp.fc1_lif": range(16),          # 16 of 64
    "stage3.0.mlp.fc2_lif": range(8),
}


def crafted_model(token_attention: str) -> SpikingTransformer:
    model = SpikingTransformer(stem="cifar", img_size=8, in_chans=3, num_classes=5, T=T, embed_dim=16,
                               depths=(1, 1, 1), num_heads=2, mlp_ratio=4.0, width_ratios=(0.5, 0.5, 1.0),
                               token_attention=token_attention,
                               attn_threshold=1.0 if token_attention == "mssa" else 0.5,
                               neuron_backend="torch").eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d)):
                m.weight.zero_()
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
                m.weight.fill_(1.0)
                m.bias.fill_(-10.0)
        for lif, channels in FIRING.items():
            if token_attention == "qkta" and ".p_lif" in lif:
                continue
            bn = model.get_submodule(lif.replace("_lif", "_bn"))
            bn.bias[list(channels)] = 10.0
    return model


def hand_layers(mssa: bool) -> list[tuple[str, str, float | None, int]]:
    """(layer, kind, firing rate of its input, FLOPs per image and time step), from the shapes by hand.

    Residual streams add the firing rates of the spike tensors summed into them:
    stem output 3/8 + 2/8 = 5/8; stage 1: + 1/8 (projection) = 6/8, + 2/8 (MLP) = 1;
    patch_embed2 output 1/8 + 2/8 = 3/8; stage 2: + 3/8 = 6/8, + 1/8 = 7/8;
    patch_embed3 output 4/16 + 2/16 = 3/8; stage 3: + 4/16 = 5/8, + 8/16 = 9/8.
    """
    rows = [
        # stem, 8x8: conv 3 -> 4 (dense image), conv 4 -> 8, shortcut 1x1 4 -> 8 from the first layer
        ("patch_embed1.proj_conv", "MAC", None, 4 * 3 * 9 * 64),
        ("patch_embed1.proj1_conv", "AC", 1 / 4, 8 * 4 * 9 * 64),
        ("patch_embed1.proj_res_conv", "AC", 1 / 4, 8 * 4 * 64),
        # stage 1, C = 8, N = 64; mask: head 0 open, head 1 closed -> 1/2; A*K keeps K's channels 0, 1
        ("stage1.0.attn.q_conv", "AC", 5 / 8, 8 * 8 * 64),
        ("stage1.0.attn.k_conv", "AC", 5 / 8, 8 * 8 * 64),
        *([("stage1.0.attn.p_conv", "AC", 5 / 8, 8 * 8 * 3 * 64)] if mssa else []),
        ("stage1.0.attn.q_channel_sum", "attention", 3 / 8, 8 * 64),
        *([("stage1.0.attn.p_channel_sum", "attention", 2 / 8, 8 * 64)] if mssa else []),
        ("stage1.0.attn.mask_k", "attention", 1 / 2, 8 * 64),
        ("stage1.0.attn.proj_conv", "AC", 2 / 8, 8 * 8 * 64),
        ("stage1.0.mlp.fc1_conv", "AC", 6 / 8, 32 * 8 * 64),
        ("stage1.0.mlp.fc2_conv", "AC", 4 / 32, 8 * 32 * 64),
        # downsample: conv 8 -> 8 at 8x8, conv 8 -> 8 at 8x8 then max-pool, shortcut 1x1/2 8 -> 8 to 4x4
        ("patch_embed2.proj3_conv", "AC", 1.0, 8 * 8 * 9 * 64),
        ("patch_embed2.proj4_conv", "AC", 4 / 8, 8 * 8 * 9 * 64),
        ("patch_embed2.proj_res_conv", "AC", 1.0, 8 * 8 * 16),
        # stage 2, C = 8, N = 16; mask: head 1 open -> 1/2; A*K keeps K's channel 4
        ("stage2.0.attn.q_conv", "AC", 3 / 8, 8 * 8 * 16),
        ("stage2.0.attn.k_conv", "AC", 3 / 8, 8 * 8 * 16),
        *([("stage2.0.attn.p_conv", "AC", 3 / 8, 8 * 8 * 3 * 16)] if mssa else []),
        ("stage2.0.attn.q_channel_sum", "attention", 2 / 8, 8 * 16),
        *([("stage2.0.attn.p_channel_sum", "attention", 1 / 8, 8 * 16)] if mssa else []),
        ("stage2.0.attn.mask_k", "attention", 1 / 2, 8 * 16),
        ("stage2.0.attn.proj_conv", "AC", 1 / 8, 8 * 8 * 16),
        ("stage2.0.mlp.fc1_conv", "AC", 6 / 8, 32 * 8 * 16),
        ("stage2.0.mlp.fc2_conv", "AC", 8 / 32, 8 * 32 * 16),
        # downsample: conv 8 -> 16 at 4x4, conv 16 -> 16 at 4x4 then max-pool, shortcut 1x1/2 8 -> 16 to 2x2
        ("patch_embed3.proj3_conv", "AC", 7 / 8, 16 * 8 * 9 * 16),
        ("patch_embed3.proj4_conv", "AC", 8 / 16, 16 * 16 * 9 * 16),
        ("patch_embed3.proj_res_conv", "AC", 7 / 8, 16 * 8 * 4),
        # stage 3 (SSA), C = 16, N = 4, d = 8: Q(K^T V) * 0.125 = 4 tokens * 5 * 0.125 = 2.5 on V's channels
        # 0, 1 (head 0), so the attention neuron fires there at both steps: 2 of 16
        ("stage3.0.attn.q_conv", "AC", 3 / 8, 16 * 16 * 4),
        ("stage3.0.attn.k_conv", "AC", 3 / 8, 16 * 16 * 4),
        ("stage3.0.attn.v_conv", "AC", 3 / 8, 16 * 16 * 4),
        ("stage3.0.attn.k_t_v", "attention", 6 / 16, 4 * 16 * 8),
        ("stage3.0.attn.q_kv", "attention", 5 / 16, 4 * 16 * 8),
        ("stage3.0.attn.proj_conv", "AC", 2 / 16, 16 * 16 * 4),
        ("stage3.0.mlp.fc1_conv", "AC", 5 / 8, 64 * 16 * 4),
        ("stage3.0.mlp.fc2_conv", "AC", 16 / 64, 16 * 64 * 4),
        # head: Linear 16 -> 5 on the mean of the last stage output
        ("head", "AC", 9 / 8, 16 * 5),
    ]
    return rows


def hand_table4(mssa: bool) -> dict:
    p1, p2 = ({"p": 2 / 8}, {"p": 1 / 8}) if mssa else ({}, {})
    kind = "MSSA" if mssa else "QKTA"
    return {
        "stage1": {"attention": kind, "blocks": 1, "q": 3 / 8, "k": 5 / 8, **p1, "attn_mask": 1 / 2,
                   "masked_k": 2 / 8, "projection": 1 / 8, "mlp1": 4 / 32, "mlp2": 2 / 8},
        "stage2": {"attention": kind, "blocks": 1, "q": 2 / 8, "k": 2 / 8, **p2, "attn_mask": 1 / 2,
                   "masked_k": 1 / 8, "projection": 3 / 8, "mlp1": 8 / 32, "mlp2": 1 / 8},
        "stage3": {"attention": "SSA", "blocks": 1, "q": 5 / 16, "k": 6 / 16, "v": 3 / 16, "attn_out": 2 / 16,
                   "projection": 4 / 16, "mlp1": 16 / 64, "mlp2": 8 / 16},
    }


@pytest.mark.parametrize("token_attention", ["mssa", "qkta"])
def test_counts_and_energy_match_the_hand_computation(token_attention):
    mssa = token_attention == "mssa"
    model = crafted_model(token_attention)
    torch.manual_seed(0)
    with torch.no_grad(), EnergyMeter(model) as meter:
        model(torch.randn(3, 3, 8, 8))  # two batches of different sizes: 5 images
        model(torch.randn(2, 3, 8, 8))
    report = meter.report()
    json.dumps(report)  # plain JSON types
    assert TOP_KEYS <= set(report)
    assert report["images"] == 5 and report["T"] == T
    assert report["e_mac_pj"] == 4.6 and report["e_ac_pj"] == 0.9
    assert report["unmetered"] == []

    expected = hand_layers(mssa)
    assert [layer["name"] for layer in report["layers"]] == [name for name, *_ in expected]
    for layer, (name, kind, rate, flops) in zip(report["layers"], expected):
        assert layer["kind"] == kind, name
        assert layer["flops"] == flops, name
        assert layer["stage"] == name.split(".")[0], name
        if kind == "MAC":
            assert layer["firing_rate"] is None
            # a static image: the first convolution is charged once per image, not per time step
            assert layer["mac_flops"] == flops and layer["sops"] == 0.0, name
            assert layer["energy_mj"] == pytest.approx(4.6 * flops * PJ, rel=1e-12), name
        else:
            assert layer["firing_rate"] == pytest.approx(rate, rel=1e-12), name
            assert layer["mac_flops"] == 0.0, name
            assert layer["sops"] == pytest.approx(rate * T * flops, rel=1e-12), name
            assert layer["energy_mj"] == pytest.approx(0.9 * rate * T * flops * PJ, rel=1e-12), name

    # the first convolution is the only MAC layer
    assert [layer["name"] for layer in report["layers"] if layer["kind"] == "MAC"] == ["patch_embed1.proj_conv"]
    macs = 4 * 3 * 9 * 64
    sops = sum(rate * T * flops for _, kind, rate, flops in expected if kind != "MAC")
    assert report["mac_flops"] == macs
    assert report["sops"] == pytest.approx(sops, rel=1e-12)
    assert report["energy_mj"] == pytest.approx((4.6 * macs + 0.9 * sops) * PJ, rel=1e-12)

    # totals = sum over layers = sum over stages
    stages = report["stages"]
    assert list(stages) == ["patch_embed1", "stage1", "patch_embed2", "stage2", "patch_embed3", "stage3", "head"]
    for key in ("mac_flops", "sops", "energy_mj"):
        assert sum(layer[key] for layer in report["layers"]) == pytest.approx(report[key], rel=1e-12)
        assert sum(stage[key] for stage in stages.values()) == pytest.approx(report[key], rel=1e-12)
    for stage, values in stages.items():
        mine = [(kind, rate, flops) for name, kind, rate, flops in expected if name.split(".")[0] == stage]
        assert values["sops"] == pytest.approx(sum(r * T * f for k, r, f in mine if k != "MAC"), rel=1e-12)
        assert values["mac_flops"] == sum(f for k, r, f in mine if k == "MAC")

    table = report["firing_rates"]
    assert list(table) == ["stage1", "stage2", "stage3"]
    for stage, rows in hand_table4(mssa).items():
        assert set(table[stage]) == set(rows), stage
        for key, value in rows.items():
            assert table[stage][key] == pytest.approx(value, rel=1e-12) if isinstance(value, float) \
                else table[stage][key] == value, (stage, key)
    assert report["neurons"]["stage1.0.attn.attn_lif"] == 0.5
    assert report["neurons"]["patch_embed1.proj_lif"] == 0.25

    # the constants are options; the table names every layer and the totals
    custom = EnergyMeter(model, e_mac_pj=1.0, e_ac_pj=0.0)
    with torch.no_grad(), custom:
        model(torch.randn(1, 3, 8, 8))
    assert custom.report()["energy_mj"] == pytest.approx(macs * PJ, rel=1e-12)
    text = format_report(report)
    assert all(name in text for name, *_ in expected) and "total" in text and "masked K" in text
    assert "mJ/image" in format_totals(report)


def _busy(model: torch.nn.Module) -> torch.nn.Module:
    """Random weights with enlarged batch-norm gains, so that neurons fire in eval mode."""
    torch.manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.weight.fill_(6.0)
    return model.eval()


def _hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("name,kwargs,x,first_conv_flops,charged_steps", [
    ("msvit_cifar_4_384", dict(embed_dim=16, num_heads=2, depths=(1, 1, 1), T=2), torch.randn(2, 3, 8, 8),
     4 * 3 * 9 * 8 * 8, 1),                                 # a static image: once per image
    ("qkformer_10_384", dict(embed_dim=32, num_heads=2, depths=(1, 1, 1), T=2), torch.randn(2, 3, 32, 32),
     4 * 3 * 9 * 32 * 32, 1),                               # 3 -> 32 * 0.25 / 2 = 4 channels, pooled after
    ("msvit_dvs_2_256", dict(embed_dim=32, num_heads=2, T=3), torch.rand(2, 3, 2, 16, 16).round(),
     2 * 2 * 9 * 16 * 16, 3),                               # event frames [B, T, 2, H, W]: 2 -> 32 / 2 / 8 = 2
])
def test_meter_leaves_the_model_unchanged_and_only_the_first_conv_is_mac(name, kwargs, x, first_conv_flops,
                                                                        charged_steps):
    model = _busy(timm.create_model(name, num_classes=3, neuron_backend="torch", **kwargs))
    with torch.no_grad():
        before = model(x)
        assert _hooks(model) == 0
        with EnergyMeter(model) as meter:
            assert _hooks(model) > 0
            during = model(x)
        assert _hooks(model) == 0  # every hook is gone
        after = model(x)
    assert torch.equal(before, during) and torch.equal(before, after)
    report = meter.report()
    assert report["T"] == kwargs["T"] and report["images"] == 2 and report["unmetered"] == []
    mac = [layer for layer in report["layers"] if layer["kind"] == "MAC"]
    assert [layer["name"] for layer in mac] == ["patch_embed1.proj_conv"]
    assert mac[0]["flops"] == first_conv_flops and report["mac_flops"] == first_conv_flops * charged_steps
    assert report["sops"] > 0 and 0 < report["firing_rates"]["stage1"]["q"] < 1
    # hooks are removed when the block raises, too
    with pytest.raises(RuntimeError, match="boom"), EnergyMeter(model):
        raise RuntimeError("boom")
    assert _hooks(model) == 0


class _UnhookedConv1d(torch.nn.Conv1d):
    """Calls `forward` directly: like a fused path that uses the weights functionally, no hook can fire."""
    __call__ = torch.nn.Conv1d.forward


def test_branch_convolutions_are_measured_without_their_hooks():
    """The q/k/v/p convolutions are measured from the attention's input, so a forward path that never
    calls those modules (a fused projection) gives the same report."""
    model = _busy(timm.create_model("msvit_cifar_4_384", embed_dim=16, num_heads=2, depths=(1, 1, 1), T=2,
                                    num_classes=3, neuron_backend="torch"))
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad(), EnergyMeter(model) as plain:
        model(x)
    branch_convs = [m for name, m in model.named_modules() if re.search(r"attn\.[qkvp]_conv$", name)]
    assert len(branch_convs) == 3 + 3 + 3
    for conv in branch_convs:
        conv.__class__ = _UnhookedConv1d
    with torch.no_grad(), EnergyMeter(model) as unhooked:
        model(x)
    assert unhooked.report() == plain.report()


def test_reference_and_optimised_paths_give_the_same_report():
    use_reference = getattr(msvit.models, "use_reference_implementation", None)
    if use_reference is None:
        pytest.skip("no separate reference forward path")
    model = _busy(timm.create_model("qkformer_cifar_4_384", embed_dim=16, num_heads=2, depths=(1, 1, 1), T=2,
                                    num_classes=3, neuron_backend="torch"))
    x = torch.randn(2, 3, 8, 8)
    reports = []
    for reference in (True, False):
        use_reference(model, reference)
        with torch.no_grad(), EnergyMeter(model) as meter:
            model(x)
        reports.append(meter.report())
    use_reference(model, False)
    ref, fast = reports
    assert [(l["name"], l["kind"], l["flops"]) for l in ref["layers"]] == \
        [(l["name"], l["kind"], l["flops"]) for l in fast["layers"]]
    for key in ("energy_mj", "mac_flops", "sops"):  # the same spikes up to float rounding
        assert fast[key] == pytest.approx(ref[key], rel=1e-3)
    assert ref["sops"] > 0


def test_meter_on_a_single_block():
    """Blocks and attentions alone take [T, B, C, H, W]; images are counted along B."""
    torch.manual_seed(0)
    attn = msvit_layers.TokenAttention(8, 2, attn_threshold=0.5, multi_scale=False).eval()
    x = (torch.rand(3, 4, 8, 2, 2) < 0.5).float()  # T 3, B 4, C 8, 2x2 tokens
    with torch.no_grad(), EnergyMeter(attn) as meter:
        attn(x)
    report = meter.report()
    assert report["images"] == 4 and report["T"] == 3 and report["mac_flops"] == 0
    q = next(layer for layer in report["layers"] if layer["name"] == "q_conv")
    assert q["flops"] == 8 * 8 * 4 and q["firing_rate"] == pytest.approx(x.mean().item())
    assert q["sops"] == pytest.approx(x.mean().item() * 3 * 8 * 8 * 4)


@pytest.mark.parametrize("coupled", [True, False], ids=["batch-coupled", "per-sample"])
def test_batch_coupled_output_neuron_is_counted_per_image(coupled):
    """Stage 3's SSA output neuron gets a constant 1.2 on channels 0-3. Per sample (T 2) its membrane
    reaches 0.6, 0.9: no spike. Coupled, one sequence of T*B = 6 steps: 0.6, 0.9, 1.05 (spike), 0.6, 0.9,
    1.05 (spike), so 2 of 6 steps fire on 4 of 16 channels: rate 1/12, all of it in sample 2."""
    model = crafted_model("mssa")
    msvit.set_batch_coupled_ssa(model, coupled)
    with torch.no_grad():
        model.stage3[0].attn.proj_bn.bias[:4] = 1.2
    spikes = {}
    model.stage3[0].attn.proj_lif.register_forward_hook(lambda m, i, o: spikes.__setitem__("out", o))
    with torch.no_grad(), EnergyMeter(model) as meter:
        model(torch.randn(3, 3, 8, 8))
    report = meter.report()
    projection = 1 / 12 if coupled else 0.0
    assert report["images"] == 3 and report["T"] == T
    assert spikes["out"].mean().item() == pytest.approx(projection)
    assert report["neurons"]["stage3.0.attn.proj_lif"] == pytest.approx(projection, rel=1e-12)
    assert report["firing_rates"]["stage3"]["projection"] == pytest.approx(projection, rel=1e-12)
    layers = {layer["name"]: layer for layer in report["layers"]}
    fc1 = layers["stage3.0.mlp.fc1_conv"]  # its input: patch_embed3's 3/8 plus the projection's spikes
    assert fc1["firing_rate"] == pytest.approx(3 / 8 + projection, rel=1e-12)
    assert fc1["sops"] == pytest.approx((3 / 8 + projection) * T * 64 * 16 * 4, rel=1e-12)
    assert layers["head"]["firing_rate"] == pytest.approx(3 / 8 + projection + 8 / 16, rel=1e-12)


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_energy_cli_json_on_digits():
    proc = _run("-m", "msvit.energy", "--config", str(DIGITS), "--batches", "2", "--workers", "0", "--json",
                "--e-mac-pj", "5")
    report = json.loads(proc.stdout)  # stdout holds the JSON object alone
    assert TOP_KEYS <= set(report)
    assert report["images"] == 2 * 120 and report["e_mac_pj"] == 5.0 and report["e_ac_pj"] == 0.9
    assert report["mac_flops"] == 16 * 3 * 9 * 16 * 16  # digits: 3 -> 16 channels at 16x16, once per image
    assert report["layers"][0]["name"] == "patch_embed1.proj_conv" and report["energy_mj"] > 0


@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory) -> Path:
    """A randomly initialised digits model in our checkpoint format, at 8x8."""
    cfg = parse_args(["--img-size", "8", "--workers", "0"], DIGITS)
    torch.manual_seed(0)
    model = create_dataset_model(cfg, VARIANTS)
    path = tmp_path_factory.mktemp("ckpt") / "random.pth"
    torch.save({"model": model.state_dict(), "config": cfg}, path)
    return path


def test_test_py_energy_json(digits_checkpoint):
    proc = _run("digits/test.py", "--checkpoint", str(digits_checkpoint), "--energy", "--json",
                "--workers", "0", "--img-size", "8")
    line = json.loads(proc.stdout)
    assert {"top1", "top5", "loss", "n", "energy_mj", "mac_flops", "sops"} <= set(line)
    assert line["mac_flops"] == 16 * 3 * 9 * 8 * 8 and line["energy_mj"] > 0


def test_test_py_energy_text(digits_checkpoint, capsys):
    cfg = parse_args(["--checkpoint", str(digits_checkpoint), "--energy", "--workers", "0", "--img-size", "8"],
                     DIGITS)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is faster, and much faster on a busy machine
    try:
        metrics = msvit.evaluate.run(cfg, VARIANTS)
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out.strip().splitlines()
    assert "top-1" in out[-2] and "mJ/image" in out[-1]
    assert {"top1", "n", "energy_mj", "mac_flops", "sops"} <= set(metrics) and metrics["n"] == 360
    assert metrics["mac_flops"] == 16 * 3 * 9 * 8 * 8  # once per image
