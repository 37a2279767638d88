"""Collecting the maps of one image: the stages' spike counts, the token attentions' masks and the SSA's query
scores (see the package's docstring), with forward hooks that exist only during the call."""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from ..errors import ConfigError
from ..layers import SpikingSelfAttention, TokenAttention

__all__ = ["collect_maps", "check_block"]


def _stages(model: nn.Module) -> list[tuple[str, nn.Module, nn.Sequential]]:
    """(name, patch embedding, blocks) of every stage of a SpikingTransformer."""
    return [(f"stage{i}", getattr(model, f"patch_embed{i}"), getattr(model, f"stage{i}"))
            for i in range(1, model.num_stages + 1)]


def check_block(model: nn.Module, block: int) -> None:
    """Raise ConfigError unless `block` indexes a block in every stage that has blocks."""
    depths = [len(blocks) for _, _, blocks in _stages(model)]
    shallowest = min((d for d in depths if d), default=0)
    if not shallowest:
        return
    if not -shallowest <= block < shallowest:
        raise ConfigError(f"--block {block} is out of range: the stages have {', '.join(map(str, depths))} blocks; "
                          f"give an index from {-shallowest} to {shallowest - 1} (-1: the last block of each stage)")


def _attention_kind(attn: nn.Module) -> str | None:
    if isinstance(attn, TokenAttention):
        return "MSSA" if attn.multi_scale else "QKTA"
    return "SSA" if isinstance(attn, SpikingSelfAttention) else None


def _top_queries(q: torch.Tensor, k: torch.Tensor, heads: int, count: int) -> tuple[torch.Tensor, ...]:
    """SSA scores of the `count` queries with the most Q spikes per sample and head, from the spikes `q`, `k`
    `[T, B, C, N]`: (query tokens [B, heads, K], their Q spikes [B, heads, K], scores [B, heads, K, N])."""
    T, B, C, N = q.shape
    q, k = q.reshape(T, B, heads, C // heads, N).double(), k.reshape(T, B, heads, C // heads, N).double()
    spikes = q.sum(dim=(0, 3))                                       # [B, heads, N]
    order = torch.sort(spikes, dim=-1, descending=True, stable=True).indices[..., :count]  # ties: lower token
    chosen = q.gather(-1, order.unsqueeze(0).unsqueeze(3).expand(T, B, heads, C // heads, order.shape[-1]))
    scores = torch.einsum("tbhdi,tbhdj->bhij", chosen, k)
    return order, spikes.gather(-1, order), scores


@torch.no_grad()
def collect_maps(model: nn.Module, inputs: torch.Tensor, block: int = -1, queries: int = 3) -> list[dict[str, Any]]:
    """Run `model` (a SpikingTransformer) on `inputs` (`[B, C, H, W]` images or `[B, T, C, H, W]` frames) and
    return per image a dict: `input` (the sample as the model got it), `logits`, `prediction` (int) and
    `stages`, one dict per stage with `name` ('stage1'), `spikes` `[H, W]`, and for the stages with attention
    `kind` ('MSSA', 'QKTA' or 'SSA'), `block` (the index into the stage) and either `mask` `[heads, T, H, W]`
    (token attention) or `queries` (token indices `[heads, K]`), `query_spikes` `[heads, K]` and `scores`
    `[heads, K, H, W]` (SSA). Arrays are numpy; the model's training mode is restored afterwards."""
    if queries < 1:
        raise ConfigError(f"--queries must be 1 or more, got {queries}")
    check_block(model, block)
    seen: dict[str, Any] = {}
    handles = []

    def keep(key: str) -> Callable:
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            seen[key] = out.detach()
        return hook

    def keep_grid(key: str) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            seen[key] = tuple(args[0].shape[-2:])
        return hook

    plan = []
    for name, embed, blocks in _stages(model):
        last = blocks[-1] if len(blocks) else embed  # an empty stage passes the embedding's output on
        handles.append(last.register_forward_hook(keep(f"{name}.out")))
        attn = blocks[block].attn if len(blocks) else None
        kind = _attention_kind(attn) if attn is not None else None
        plan.append((name, attn, kind, block % len(blocks) if len(blocks) else None))
        if kind is None:
            continue
        handles.append(attn.register_forward_pre_hook(keep_grid(f"{name}.grid")))
        lifs = ("attn_lif",) if kind != "SSA" else ("q_lif", "k_lif")
        handles += [getattr(attn, lif).register_forward_hook(keep(f"{name}.{lif}")) for lif in lifs]
    training = model.training
    model.eval()
    try:
        logits = model(inputs)
    finally:
        for handle in handles:
            handle.remove()
        model.train(training)

    batch = inputs.shape[0]
    images = [{"input": inputs[b].detach().float().cpu().numpy(), "logits": logits[b].float().cpu().numpy(),
               "prediction": int(logits[b].argmax()), "stages": []} for b in range(batch)]
    for name, attn, kind, index in plan:
        spikes = seen[f"{name}.out"].double().sum(dim=(0, 2)).cpu().numpy()  # [B, H, W]
        per_image: list[dict[str, Any]] = [{"name": name, "spikes": spikes[b]} for b in range(batch)]
        if kind is not None:
            H, W = seen[f"{name}.grid"]
            heads = attn.num_heads
            if kind == "SSA":
                order, q_spikes, scores = _top_queries(seen[f"{name}.q_lif"], seen[f"{name}.k_lif"], heads, queries)
                order, q_spikes = order.cpu().numpy(), q_spikes.cpu().numpy()
                scores = scores.reshape(*scores.shape[:3], H, W).cpu().numpy()
                for b, entry in enumerate(per_image):
                    entry.update(queries=order[b], query_spikes=q_spikes[b], scores=scores[b])
            else:
                mask = seen[f"{name}.attn_lif"]                           # [T, B, heads, 1, N]
                mask = mask[:, :, :, 0].permute(1, 2, 0, 3).reshape(batch, heads, -1, H, W).cpu().numpy()
                for b, entry in enumerate(per_image):
                    entry["mask"] = mask[b]
            for entry in per_image:
                entry.update(kind=kind, block=index)
        for image, entry in zip(images, per_image):
            image["stages"].append(entry)
    return images
