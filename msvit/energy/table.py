"""MSViT's ImageNet comparison table as this codebase sees it: `python -m msvit.zoo --table [--json] [--firing F ...]`.

One row per system of MSViT's published ImageNet table (its README, `PUBLISHED`), then the rows this codebase adds
(`ADDED`). Each row holds the table's printed figures (parameters, input, T, energy, top-1), the model that runs
here (ours, or timm's for the ANN rows) with its parameters counted on the meta device, the release followed, and
whether it runs here: `runs here`, `cited: no code released`, or `different protocol`.

Our energy column is one rule for every row: an ANN's MACs x 4.6 pJ (`energy.ann`); a spiking model's energy as
`python -m msvit.energy --json` measured it on a checkpoint, given with `--firing FILE` (a report, or `--compare`'s
`{"labels", "reports"}`; a report counts for the row of its model when it was measured on the registered model,
no model_kwargs); otherwise `not measured`: the papers' figures each follow their own counting and stay in the
printed column.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import timm
import torch

from ..errors import ConfigError
from ..models import count_parameters
from ..models._registry import ALL_ARCHS
from .ann import ann_energy
from .meter import E_MAC_PJ

__all__ = ["TableRow", "PUBLISHED", "ADDED", "comparison_table", "read_firing", "format_table", "STATUSES"]

log = logging.getLogger("msvit")

RUNS, NO_CODE, OTHER_PROTOCOL = "runs here", "cited: no code released", "different protocol"
STATUSES = (RUNS, NO_CODE, OTHER_PROTOCOL)


@dataclass(frozen=True)
class TableRow:
    system: str                 # the row's label (MSViT's table's, where it has one)
    params: str                 # as printed, in M ('' where the source gives none)
    input: int                  # the side of the square input, in pixels
    T: str                      # time steps as printed ('1' for the ANNs; '1x8' for E-SpikeFormer)
    energy_mj: float | None     # as printed (each paper's own rule)
    top1: float | None          # as printed
    model: str = ""             # the model that runs here: ours, or timm's ANN; '' for a cited row
    kwargs: dict[str, Any] = field(default_factory=dict)  # its arguments: the zoo row's (img_size: the input)
    status: str = RUNS
    follows: str = ""           # the release followed; '' : the zoo row's
    note: str = ""


_DEIT, _SWIN = "facebookresearch/deit via timm 1.0.31", "microsoft/Swin-Transformer via timm 1.0.31"
_V2_LABEL = "SDT v2-{} (the paper's {}M)"
_SWIN_NOTE = ("the printed {} mJ is Swin-B's ({}² GFLOPs x 4.6 pJ), as in QKFormer's table, where the row is "
              "labelled Swin-B; {} at 224² costs {} by the same rule")
_V2_NOTE = ("T 4 after T 1, distilled from CAFormer-B36 (ImageNet-21k); the count here includes head_kd (kd=True, "
            "as the zoo row and the released weights), which the paper's size leaves out")
_MSVIT = "Nanhu-AI-Lab/MSViT (partial release; this codebase's model)"
_QKFORMER = "zhouchenlin2096/QKFormer imagenet/"

# MSViT's README, 'Main results on ImageNet-1K', in its order (params in M, energy in mJ, top-1 in %)
PUBLISHED: tuple[TableRow, ...] = (
    TableRow("DeiT-B", "86.60", 224, "1", 80.50, 81.80, "deit_base_patch16_224", follows=_DEIT),
    TableRow("ViT-B/16 384²", "86.59", 384, "1", 254.84, 77.90, "vit_base_patch16_384",
             follows="google-research/vision_transformer via timm 1.0.31",
             note="86.59M does not match the 384² model (timm: 86,859,496; its position embedding has 577 tokens)"),
    TableRow("Swin-T", "28.50", 224, "1", 70.84, 81.35, "swin_tiny_patch4_window7_224", follows=_SWIN,
             note=_SWIN_NOTE.format("70.84", 224, "Swin-T", "about 20.7 mJ")),
    TableRow("Swin-S", "51.00", 224, "1", 216.20, 83.03, "swin_small_patch4_window7_224", follows=_SWIN,
             note=_SWIN_NOTE.format("216.20", 384, "Swin-S", "about 40.2 mJ")),
    TableRow("Spikformer 8-384", "16.80", 224, "4", 5.97, 70.24, "spikformer_8_384"),
    TableRow("Spikformer 8-768", "66.30", 224, "4", 20.0, 74.81, "spikformer_8_768"),
    TableRow("Spikformer V2-8-384", "29.11", 224, "4", 4.69, 78.80, status=NO_CODE,
             follows="arXiv 2401.02020 (ZK-Zhou/spikformer: 'will be released')"),
    TableRow("Spikformer V2-8-512", "51.55", 224, "4", 9.36, 80.38, status=NO_CODE,
             follows="arXiv 2401.02020 (ZK-Zhou/spikformer: 'will be released')"),
    TableRow("SDT 8-384", "16.81", 224, "4", 3.90, 72.28, "sdt_8_384"),
    TableRow("SDT 8-512", "29.68", 224, "4", 4.50, 74.57, "sdt_8_512"),
    TableRow("SDT 8-768", "66.34", 288, "4", 6.09, 77.07, "sdt_8_768", dict(img_size=288),
             note="77.07 is a 288² test of the model trained at 224² (the table says 224²)"),
    TableRow(_V2_LABEL.format("10-384", "15.1"), "15.10", 224, "4", 16.70, 74.10, "metaspikformer_8_256",
             dict(T=4, kd=True), note=_V2_NOTE),
    TableRow(_V2_LABEL.format("10-512", "31.3"), "31.30", 224, "4", 32.80, 77.20, "metaspikformer_8_384",
             dict(T=4, kd=True), note=_V2_NOTE),
    TableRow(_V2_LABEL.format("10-768", "55.4"), "55.40", 224, "4", 52.40, 80.00, "metaspikformer_8_512",
             dict(T=4, kd=True), note=_V2_NOTE),
    TableRow("QKFormer 10-384", "16.47", 224, "4", 15.13, 78.80, "qkformer_10_384", follows=_QKFORMER),
    TableRow("QKFormer 10-512", "29.08", 224, "4", 21.99, 82.04, "qkformer_10_512", follows=_QKFORMER),
    TableRow("QKFormer 10-768", "64.96", 224, "4", 38.91, 84.22, "qkformer_10_768", follows=_QKFORMER),
    TableRow("MSViT-10-384", "17.69", 224, "4", 16.65, 80.09, "msvit_10_384", follows=_MSVIT),
    TableRow("MSViT-10-512", "30.23", 224, "4", 24.74, 82.96, "msvit_10_512", follows=_MSVIT,
             note="30.23M as printed; the model has 31.23M"),
    TableRow("MSViT-10-768", "69.80", 224, "4", 45.88, 85.06, "msvit_10_768", follows=_MSVIT),
)

# the rows this codebase adds: models it runs that MSViT's table leaves out, and the systems that beat MSViT since
ADDED: tuple[TableRow, ...] = (
    TableRow("Spikingformer 8-768", "66.34", 224, "4", None, 75.85, "spikingformer_8_768"),
    TableRow("QKFormer 10-768 384²", "64.96", 384, "4", 113.64, 85.65, "qkformer_10_768", dict(img_size=384),
             follows=_QKFORMER, note="fine-tuned at 384² from the 224² weights; energy from QKFormer's paper"),
    TableRow("STMixer-8-768 (NeurIPS 2024)", "", 224, "1", 4.45, 76.68, "stmixer_8_768",
             note="top-1 and energy as SMixer (ICLR 2026) quotes them; 16 heads assumed (not released)"),
    TableRow("SpiLiFormer-10-768 (ICCV 2025)", "69.10", 224, "4", 44.17, 85.82, status=NO_CODE,
             follows="KirinZheng/SpiLiFormer (README only at 942ed57)"),
    TableRow("STAS (arXiv 2508.14138)", "", 224, "", None, None, status=NO_CODE,
             follows="no repository found", note="reports -30.1% energy on ImageNet; accuracy not found"),
    TableRow("E-SpikeFormer / SDT V3 (TPAMI 2025)", "173", 384, "1x8", None, 86.2, status=OTHER_PROTOCOL,
             follows="BICLab/Spike-Driven-Transformer-V3 (00fcd1f)",
             note="integer-valued training (1 step with 8-level spikes, 8 binary steps at inference), MAE "
                  "pre-training and distillation"),
)


def read_firing(paths: Iterable[str | Path]) -> dict[str, dict[str, Any]]:
    """The measured energies of `python -m msvit.energy --json` outputs, by model name: each {'energy_mj', 'T',
    'source'}. A report measured on a model with model_kwargs (another network than the registered one) is left
    out, said on stderr."""
    measured: dict[str, dict[str, Any]] = {}
    for path in map(Path, paths):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--firing {path}: cannot read it as JSON ({exc}); give the output of "
                              f"python -m msvit.energy --json") from None
        reports = data.get("reports", [data]) if isinstance(data, Mapping) else []
        if not reports or not all(isinstance(r, Mapping) and "model" in r and "energy_mj" in r for r in reports):
            raise ConfigError(f"--firing {path}: not an output of python -m msvit.energy --json (a report with "
                              f"'model' and 'energy_mj', or --compare's {{'labels', 'reports'}})")
        for report in reports:
            if report.get("model_kwargs"):
                log.info("--firing %s: %s was measured with model_kwargs %s, not the table's model: left out", path,
                         report["model"], report["model_kwargs"])
                continue
            measured[report["model"]] = dict(energy_mj=float(report["energy_mj"]), T=report.get("T"),
                                             dataset=report.get("dataset"), source=str(path))
    return measured


def _zoo_entry(row: TableRow, zoo: Sequence[Any]) -> Any:
    """The zoo's row of `row`'s model and arguments (None for an ANN or a cited row)."""
    return next((e for e in zoo if e.model == row.model and e.dataset == "imagenet" and e.kwargs == row.kwargs), None)


def _spiking_params(row: TableRow) -> int:
    with torch.device("meta"):
        return count_parameters(timm.create_model(row.model, **row.kwargs))


def _ours(row: TableRow, measured: Mapping[str, Mapping[str, Any]],
          e_mac_pj: float) -> tuple[int | None, float | None, str]:
    """(parameters counted here, energy by our rule, how it was obtained) of one row."""
    if row.status != RUNS:
        return None, None, "no model here"
    if row.model not in ALL_ARCHS:  # timm's ANN
        ann = ann_energy(row.model, img_size=row.input, e_mac_pj=e_mac_pj)
        return ann["params"], ann["energy_mj"], f"{ann['gmacs']:.3f} GMACs x {e_mac_pj:g} pJ"
    params = _spiking_params(row)
    found = measured.get(row.model)
    if found is None or row.kwargs.get("img_size", 224) != 224:
        return params, None, "not measured"
    return params, found["energy_mj"], f"measured: {found['source']} ({found['dataset']}, T {found['T']})"


def comparison_table(zoo: Sequence[Any], measured: Mapping[str, Mapping[str, Any]] | None = None,
                     e_mac_pj: float = E_MAC_PJ) -> list[dict[str, Any]]:
    """Every row of `PUBLISHED` then `ADDED` as a dict: the printed figures, the model here, its parameters
    counted on the meta device, our energy (`_ours`), the release followed (the zoo row's where the table names
    none) and the status. `zoo`: msvit.zoo.ZOO; `measured`: `read_firing`'s."""
    rows = []
    for section, table in (("published", PUBLISHED), ("added", ADDED)):
        for row in table:
            entry = _zoo_entry(row, zoo)
            params, energy, basis = _ours(row, measured or {}, e_mac_pj)
            rows.append(dict(system=row.system, section=section, model=row.model or None, kwargs=row.kwargs,
                             input=row.input, T=row.T, published_params=row.params or None, params=params,
                             published_energy_mj=row.energy_mj, energy_mj=energy, energy_basis=basis,
                             published_top1=row.top1, follows=row.follows or getattr(entry, "follows", ""),
                             status=row.status, note=row.note))
    return rows


def _mj(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as a Markdown table, then the notes and the releases followed, numbered."""
    head = ("| system | model here | input | T | params (table) | params (here) | energy mJ (table) | "
            "energy mJ (our rule) | top-1 (table) | status | release followed |")
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    notes: list[str] = []
    for row in rows:
        mark = ""
        if row["note"]:
            notes.append(row["note"])
            mark = f" [{len(notes)}]"
        params = f"{row['params']:,}" if row["params"] is not None else "-"
        ours = _mj(row["energy_mj"]) if row["energy_mj"] is not None else row["energy_basis"]
        top1 = f"{row['published_top1']:.2f}" if row["published_top1"] is not None else "not found"
        model = f"`{row['model']}`" if row["model"] else "-"
        lines.append(f"| {row['system']}{mark} | {model} | {row['input']}² | {row['T'] or '-'} | "
                     f"{row['published_params'] or '-'} | {params} | {_mj(row['published_energy_mj'])} | {ours} | "
                     f"{top1} | {row['status']} | {row['follows'] or '-'} |")
    lines += ["", "Our rule: an ANN's MACs x 4.6 pJ (FlopCounterMode, meta device); a spiking model's energy as "
              "python -m msvit.energy measured it (--firing FILE), else not measured."]
    lines += [f"[{i}] {note}" for i, note in enumerate(notes, 1)]
    return "\n".join(lines)
