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
from busy import calibrate_batch_norms
import msvit.training.evaluate
import msvit.models
from msvit import layers as msvit_layers
from msvit.config import parse_args
from msvit.console import rounded
from msvit.energy import EnergyMeter, format_report, format_totals
from msvit.energy.cli import USAGE as ENERGY_USAGE
from msvit.energy.cli import main as energy_main
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
        assert set(table[stage]) - {"per_step"} == set(rows), stage
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



def _hand_rates(out: torch.Tensor, T: int, B: int) -> tuple[float, list[float]]:
    """(the mean as the meter has always computed it, the rate at each step from a per-sample, per-step loop)
    of a neuron output `[T, B, ...]`, or `[T*B, ...]` (sample b of step t at row t*B + b) when coupled."""
    out = out.double()
    rows = out.reshape(T, B, -1)
    per_step = [sum(rows[t, b].sum().item() for b in range(B)) / (B * rows.shape[2]) for t in range(T)]
    return out.sum().item() / out.numel(), per_step


@pytest.mark.parametrize("coupled", [True, False], ids=["batch-coupled", "per-sample"])
def test_rates_per_time_step_match_a_loop_and_the_mean_is_unchanged(coupled):
    """Every neuron's rate per step equals a per-sample, per-step loop over its outputs (two batches, T 3), the
    mean over T is exactly today's sum / count, and the layers' input rates per step likewise."""
    model = _busy(timm.create_model("msvit_cifar_4_384", embed_dim=16, num_heads=2, depths=(1, 1, 1), T=3,
                                    num_classes=3, neuron_backend="torch"))
    msvit.set_batch_coupled_ssa(model, coupled)
    outputs: dict[str, list] = {}
    handles = [m.register_forward_hook(lambda m, i, o, name=name: outputs.setdefault(name, []).append(o))
               for name, m in model.named_modules() if isinstance(m, msvit.neurons.LIF)]
    handles.append(model.stage1[0].mlp.fc1_conv.register_forward_pre_hook(
        lambda m, i: outputs.setdefault("fc1 input", []).append(i[0])))
    with torch.no_grad(), EnergyMeter(model) as meter:
        model(torch.randn(2, 3, 8, 8))
        model(torch.randn(3, 3, 8, 8))
    for handle in handles:
        handle.remove()
    report = meter.report()
    assert report["T"] == 3 and report["images"] == 5
    varying = 0
    for name, (first, second) in ((n, o) for n, o in outputs.items() if n != "fc1 input"):
        (mean1, steps1), (mean2, steps2) = _hand_rates(first, 3, 2), _hand_rates(second, 3, 3)
        n1, n2 = first.numel(), second.numel()
        total = first.double().sum().item() + second.double().sum().item()
        assert report["neurons"][name] == total / (n1 + n2), name  # exactly the mean of before
        expected = [(a * n1 + b * n2) / (n1 + n2) for a, b in zip(steps1, steps2)]
        assert report["neurons_per_step"][name] == pytest.approx(expected, rel=1e-12, abs=1e-15), name
        assert sum(report["neurons_per_step"][name]) / 3 == pytest.approx(report["neurons"][name], rel=1e-12)
        varying += len({round(r, 12) for r in expected}) > 1
    assert varying >= 5  # rates differ between steps: the test can see a step mixed up
    fc1 = next(layer for layer in report["layers"] if layer["name"] == "stage1.0.mlp.fc1_conv")
    (_, a), (_, b) = (_hand_rates(x, 3, x.shape[0] // 3) for x in outputs["fc1 input"])
    assert fc1["firing_rate_per_step"] == pytest.approx([(2 * u + 3 * v) / 5 for u, v in zip(a, b)], rel=1e-12)
    assert report["layers"][0]["firing_rate_per_step"] is None  # the dense image layer has no rate
    # the stage and network rates weigh every neuron update equally
    spikes = {s: sum(o.double().sum().item() for n, os_ in outputs.items() if n.startswith(s + ".") for o in os_)
              for s in report["stage_firing_rates"]}
    updates = {s: sum(o.numel() for n, os_ in outputs.items() if n.startswith(s + ".") for o in os_)
               for s in report["stage_firing_rates"]}
    for stage, rate in report["stage_firing_rates"].items():
        assert rate == pytest.approx(spikes[stage] / updates[stage], rel=1e-12), stage
    assert report["firing_rate"] == pytest.approx(sum(spikes.values()) / sum(updates.values()), rel=1e-12)
    # the training watch's neuron-only meter reads the same rates
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad(), EnergyMeter(model, neurons_only=True) as light:
        model(x)
    with torch.no_grad(), EnergyMeter(model) as full:
        model(x)
    firing, again = light.firing(), full.report()
    assert firing == {key: again[key] for key in ("firing_rate", "stage_firing_rates", "neurons", "neurons_per_step")}
    assert not light.layers and list(firing["neurons"]) == list(report["neurons"])
    with pytest.raises(RuntimeError, match="neurons_only"):
        light.report()
    text = format_report(report)
    first_q = " ".join(f"{r:.3f}" for r in report["neurons_per_step"]["stage1.0.attn.q_lif"])
    assert "per step t=1..3" in text and first_q in text


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


def test_energy_compare_plots_both_models(tmp_path, capsys):
    """--compare with model names (random weights) and --plot, in-process: one JSON object with both reports
    in order and the figures' paths."""
    argv = ["--config", str(DIGITS), "--compare", *VARIANTS, "--labels", "MSViT", "QKFormer", "--plot",
            str(tmp_path / "figures"), "--batches", "1", "--workers", "0", "--img-size", "8", "--json"]
    result = energy_main(argv)
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(rounded(result))) and printed["labels"] == ["MSViT", "QKFormer"]
    assert [r["model"] for r in printed["reports"]] == list(VARIANTS)
    assert [r["firing_rates"]["stage1"]["attention"] for r in printed["reports"]] == ["MSSA", "QKTA"]
    assert all(r["images"] == 120 and r["T"] == 2 for r in printed["reports"])
    assert [Path(p).name for p in printed["figures"]] == ["firing_rates.png", "energy.png", "firing_table.png"]
    assert all(Path(p).stat().st_size > 10_000 for p in printed["figures"])


def test_energy_of_random_weights_is_the_same_every_run(capsys):
    """Without a checkpoint the model's weights come from the run's seed, not from whatever ran before."""
    argv = ["--config", str(DIGITS), "--batches", "1", "--workers", "0", "--img-size", "8", "--json"]
    reports = []
    for seed in (1, 2):
        torch.manual_seed(seed)  # the global generator's state before the call differs
        reports.append(energy_main(argv))
    capsys.readouterr()
    assert reports[0]["firing_rate"] == reports[1]["firing_rate"] and reports[0]["energy_mj"] == reports[1]["energy_mj"]
    torch.manual_seed(1)
    assert energy_main([*argv, "--seed", "7"])["firing_rate"] != reports[0]["firing_rate"]


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
    assert {"top1", "top5", "loss", "n", "energy_mj", "mac_flops", "sops", "neurons_per_step"} <= set(line)
    assert all(len(steps) == 2 for steps in line["neurons_per_step"].values())  # digits: T 2
    assert line["mac_flops"] == 16 * 3 * 9 * 8 * 8 and line["energy_mj"] > 0


def test_test_py_energy_text(digits_checkpoint, capsys):
    cfg = parse_args(["--checkpoint", str(digits_checkpoint), "--energy", "--workers", "0", "--img-size", "8"],
                     DIGITS)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is faster, and much faster on a busy machine
    try:
        metrics = msvit.training.evaluate.run(cfg, VARIANTS)
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out.strip().splitlines()
    at = next(i for i, line in enumerate(out) if "mJ/image" in line)
    assert "top-1" in out[at - 1] and "per step t=1..2" in out[at + 3]
    q = "stage1.0.attn.q_lif"
    steps = " ".join(f"{r:.3f}" for r in metrics["neurons_per_step"][q])
    assert any(line.startswith(q) and line.endswith(steps) for line in out) and out[-1].startswith("network")
    assert {"top1", "n", "energy_mj", "mac_flops", "sops", "firing_rate", "neurons"} <= set(metrics)
    assert metrics["n"] == 360 and len(metrics["neurons_per_step"][q]) == 2
    assert metrics["mac_flops"] == 16 * 3 * 9 * 8 * 8  # once per image


@pytest.fixture(scope="module")
def two_reports() -> list[tuple[str, dict]]:
    """Reports of a tiny MSViT and a tiny QKFormer (T 3, two images), neurons firing."""
    runs = []
    for name in VARIANTS:
        model = _busy(timm.create_model(name, embed_dim=16, num_heads=2, depths=(1, 1, 1), T=3, num_classes=3,
                                        neuron_backend="torch"))
        with torch.no_grad(), EnergyMeter(model) as meter:
            model(torch.randn(2, 3, 8, 8))
        runs.append((name, meter.report()))
    return runs


def test_figure_data_is_the_report(two_reports):
    """What each figure draws is read from the report, number for number."""
    _, report = two_reports[0]
    data = msvit.energy.figure_data(report)
    firing = data["firing"]
    assert firing["names"] == list(report["neurons"]) and len(firing["names"]) == 30
    assert firing["rates"] == [report["neurons"][n] for n in firing["names"]]
    assert firing["per_step"] == [report["neurons_per_step"][n] for n in firing["names"]]
    assert firing["network"] == report["firing_rate"] and firing["stages"][0] == "patch_embed1"
    assert any(len(set(steps)) > 1 for steps in firing["per_step"])
    energy = data["energy"]
    assert energy["stages"] == list(report["stages"]) and energy["energy_mj"] == report["energy_mj"]
    for kind in ("MAC", "AC", "attention"):
        assert energy["by_kind"][kind] == [report["stages"][s]["by_kind"][kind] for s in energy["stages"]]
    for i, stage in enumerate(energy["stages"]):  # the split covers each stage's energy
        assert sum(energy["by_kind"][k][i] for k in ("MAC", "AC", "attention")) == \
            pytest.approx(report["stages"][stage]["energy_mj"], rel=1e-12)
    assert energy["by_kind"]["MAC"][0] > 0 and energy["by_kind"]["attention"][1] > 0
    table = data["firing_table"]
    assert table["stages"] == ["stage1", "stage2", "stage3"] and table["attention"] == ["MSSA", "MSSA", "SSA"]
    assert table["keys"] == ["q", "k", "p", "v", "attn_mask", "masked_k", "attn_out", "projection", "mlp1", "mlp2"]
    for key, row in zip(table["keys"], table["rates"]):
        assert row == [report["firing_rates"][s].get(key) for s in table["stages"]]
    assert table["rates"][table["keys"].index("v")][:2] == [None, None]  # token attention has no V


def test_figures_are_pngs_of_the_expected_size(two_reports, tmp_path):
    from PIL import Image

    from msvit.energy.figures import figure_size
    from msvit.plotting import DPI

    for runs, folder in ((two_reports[:1], tmp_path / "one"), (two_reports, tmp_path / "two")):
        paths = msvit.energy.write_figures(runs, folder)
        assert [p.name for p in paths] == ["firing_rates.png", "energy.png", "firing_table.png"]
        data = [msvit.energy.figure_data(report) for _, report in runs]
        for path in paths:
            with Image.open(path) as image:
                assert image.format == "PNG"
                width, height = figure_size(path.stem, data)
                assert image.size == (round(width * DPI), round(height * DPI)), path.name
                assert len(image.getcolors(1 << 16) or range(1 << 16)) > 8  # something is drawn
    # the documented sizes: 30 (MSViT) / 28 (QKFormer) spiking layers, 7 stages, 10 Table 4 rows
    assert [Image.open(tmp_path / "one" / f"{n}.png").size for n in ("firing_rates", "energy", "firing_table")] \
        == [(800, 440), (760, 450), (590, 520)]
    assert Image.open(tmp_path / "two" / "firing_rates.png").size == (800, 820)


@pytest.mark.parametrize("name,kwargs", [("sdt_dvs_2_256", dict(pooling_stat="0011", dvs_mode=True)),
                                         ("spikingformer_dvs_2_256", {})], ids=["sdt", "spikingformer"])
def test_baseline_blocks_by_hand(name, kwargs):
    """The membrane-shortcut attention's branches are charged at the shortcut neuron's rate, SDSA's products at
    K's and Q's spikes (one addition each), SDT's head at its neuron's spikes, Spikingformer's head as MACs."""
    T, B, dim, classes = 2, 2, 32, 3
    torch.manual_seed(0)
    model = timm.create_model(name, T=T, embed_dim=dim, num_heads=2, depth=1, num_classes=classes, img_size=32,
                              neuron_backend="torch", **kwargs)
    x = torch.rand(B, T, 2, 32, 32).round()
    with torch.no_grad():  # every neuron's input shifted up, statistics of this batch: the neurons fire
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)):
            bn.bias.uniform_(0.2, 0.8)
    calibrate_batch_norms(model, x).eval()
    attn = model.block[0].attn
    seen = {}
    handles = [m.register_forward_hook(lambda m, i, o, key=key: seen.__setitem__(key, o.clone()))
               for key, m in (("shortcut", attn.shortcut_lif), ("q", attn.q_lif), ("k", attn.k_lif),
                              ("head_in", getattr(model, "head_lif", attn.q_lif)))]
    with torch.no_grad(), EnergyMeter(model) as meter:
        model(x)
    for handle in handles:
        handle.remove()
    layers = {layer["name"]: layer for layer in meter.report()["layers"]}
    assert 0 < seen["shortcut"].mean() < 1 and seen["q"].sum() > 0 and seen["k"].sum() > 0
    tokens = seen["shortcut"][0, 0, 0].numel()
    q_conv = layers["block.0.attn.q_conv"]  # a 1x1 conv: dim x dim per token, at the shortcut neuron's rate
    assert q_conv["flops"] == dim * dim * tokens
    assert q_conv["sops"] == pytest.approx(float(seen["shortcut"].sum()) * dim / B)
    head = layers["head"]
    if name.startswith("sdt"):
        assert layers["block.0.attn.k_v_sum"]["sops"] == pytest.approx(float(seen["k"].sum()) / B)
        assert layers["block.0.attn.q_mask"]["sops"] == pytest.approx(float(seen["q"].sum()) / B)
        assert head["kind"] == "AC" and head["sops"] == pytest.approx(float(seen["head_in"].sum()) * classes / B)
    else:
        assert head["kind"] == "MAC" and head["mac_flops"] == dim * classes and head["sops"] == 0


def test_zoo_dense_costs_of_a_baseline_by_hand():
    """The rate-independent energy of `python -m msvit.zoo --energy`: the first convolution's MACs (3 -> 4 channels,
    3x3, 32 x 32, once per image) and the implied rate that makes the published figure."""
    from msvit.energy.dense import dense_costs
    from msvit.zoo import ZooEntry

    entry = ZooEntry("sdt_cifar_2_512", "cifar10", dict(embed_dim=32, num_heads=2, depth=1, T=3),
                     published_energy_mj=0.05)
    row = dense_costs(entry)
    first_conv = 4 * 3 * 9 * 32 * 32
    assert row["mac_mj"] == pytest.approx(first_conv * 4.6e-9) and row["T"] == 3
    # 1x1 q/k/v/proj at 8 x 8 tokens (32 x 32 -> 8 x 8 with pooling '0011') are part of the dense FLOPs
    assert row["dense_gflops"] * 1e9 > 4 * 32 * 32 * 64
    spent = row["mac_mj"] + 0.9e-9 * 3 * row["dense_gflops"] * 1e9 * row["implied_rate"]
    assert spent == pytest.approx(0.05)


def test_energy_help_is_one_usage_of_this_program(capsys):
    with pytest.raises(SystemExit) as exit_:
        energy_main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if "usage:" in line] == [
        line for line in ENERGY_USAGE.splitlines() if "usage:" in line]
    assert out.startswith("usage: python -m msvit.energy ") and "maps.py" not in out and "zoo.py" not in out
    assert "\n  --val-batch-size " in out and "\n  --model-kwargs " in out
    assert "--mixup" not in out and "--warmup-epochs" not in out and "--compare-ssa-coupling" not in out


def test_energy_compare_applies_test_pys_model_rule(digits_checkpoint, tmp_path, capsys):
    """A model name with a typo, a --model that is not the checkpoint's: refused; another dataset: a warning."""
    refusals = ((["--compare", "msvit_cifar_4_38"],
                 ["--compare 'msvit_cifar_4_38'", "did you mean 'msvit_cifar_4_384'"]),
                (["--compare", str(digits_checkpoint), "--model", "qkformer_cifar_4_384"],
                 ["--model qkformer_cifar_4_384", "trained as msvit_cifar_4_384"]))
    for argv, parts in refusals:
        with pytest.raises(SystemExit) as exit_:
            energy_main(["--config", str(DIGITS), *argv])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.startswith("error: ") and all(p in err for p in parts), err
    saved = torch.load(digits_checkpoint, weights_only=False)
    saved["config"] = {**saved["config"], "dataset": "cifar100"}
    torch.save(saved, tmp_path / "cifar100.pth")
    energy_main(["--config", str(DIGITS), "--compare", str(tmp_path / "cifar100.pth"), "--batches", "1",
                "--workers", "0", "--json"])
    assert "trained on cifar100 but runs here on digits" in capsys.readouterr().err
