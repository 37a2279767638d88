"""Knowledge distillation as a loop option any family can use (`distillation_type: hard | soft`), DeiT-style as the
Spike-driven Transformer V2 release trains its T=4 fine-tune (`util/kd_loss.py` of BICLab/Spike-Driven-Transformer-V2,
after facebookresearch/deit's `losses.py`):

    loss = (1 - alpha) x criterion(outputs, targets) + alpha x distillation(outputs_kd, teacher(inputs))
    hard: cross-entropy of outputs_kd to the teacher's top class
    soft: KL(log_softmax(outputs_kd / tau) || log_softmax(teacher / tau)) summed, x tau^2 / outputs_kd.numel()

A student with a distillation head (V2's `kd=True`) returns the pair (head, head_kd) in training; one without
distils from its single output, which then takes both terms; a student with SML side branches
(`training.sml`) distils from its main output, the SML loss taking the criterion's place. The criterion is the
loop's own (smoothing, mixup's soft targets, TET). The teacher, any timm model, is built once: frozen, in eval mode, run under `no_grad` inside
the student's autocast; it is not part of the student, so neither checkpoints nor DDP see it.
"""
from __future__ import annotations

import logging
import sys
from typing import Any, Callable, Mapping

import timm
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..models._checkpoint import CheckpointError, extract_state_dict, read_checkpoint

__all__ = ["DistillationLoss", "distillation_term", "build_teacher", "distillation_criterion", "describe"]

log = logging.getLogger("msvit")

Outputs = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def distillation_term(student: torch.Tensor, teacher: torch.Tensor, kind: str, tau: float = 1.0) -> torch.Tensor:
    """The distillation loss of `student` logits `[B, K]` against the `teacher`'s, as DeiT computes it."""
    if kind == "hard":
        return F.cross_entropy(student, teacher.argmax(dim=1))
    if kind == "soft":
        kl = F.kl_div(F.log_softmax(student / tau, dim=1), F.log_softmax(teacher / tau, dim=1), reduction="sum",
                      log_target=True)
        return kl * (tau * tau) / student.numel()  # DeiT's normalisation: by numel, not by the batch
    raise ValueError(f"distillation type {kind!r}: hard or soft")


class DistillationLoss(nn.Module):
    """`DistillationLoss(criterion, teacher, kind, alpha, tau)(inputs, outputs, targets)`: the training loop's
    criterion. `kind` none (or no teacher) is the criterion on the (first) output alone."""

    def __init__(self, criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], teacher: nn.Module | None,
                 kind: str = "none", alpha: float = 0.5, tau: float = 1.0) -> None:
        super().__init__()
        if kind != "none" and teacher is None:
            raise ValueError(f"distillation type {kind} needs a teacher")
        self.criterion, self.teacher = criterion, teacher
        self.kind, self.alpha, self.tau = kind if teacher is not None else "none", float(alpha), float(tau)

    def train(self, mode: bool = True) -> "DistillationLoss":
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # always: its BatchNorm statistics and dropout stay as loaded
        return self

    def forward(self, inputs: torch.Tensor, outputs: Outputs, targets: torch.Tensor) -> torch.Tensor:
        if getattr(self.criterion, "reads_all_outputs", False):  # SML: its loss reads (main, sides...)
            base, outputs_kd = self.criterion(outputs, targets), outputs[0]
        else:
            outputs, outputs_kd = outputs if isinstance(outputs, (tuple, list)) else (outputs, outputs)
            base = self.criterion(outputs, targets)
        if self.kind == "none":
            return base
        with torch.no_grad():
            teacher = self.teacher(inputs)
        if outputs_kd.dim() == 3:  # per-step logits (TET): the distillation reads their mean, the model's output
            outputs_kd = outputs_kd.mean(1)
        return (1 - self.alpha) * base + self.alpha * distillation_term(outputs_kd, teacher, self.kind, self.tau)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, alpha={self.alpha:g}, tau={self.tau:g}"


def _load_teacher_weights(teacher: nn.Module, name: str, path: str) -> None:
    """`path`'s weights into `teacher`, strictly; a file in the model's original layout (the release's
    `caformer_b36_in21ft1k.pth`) goes through timm's `checkpoint_filter_fn` of the model's module first."""
    state = extract_state_dict(read_checkpoint(path))
    target = teacher.state_dict()
    remap = getattr(sys.modules.get(type(teacher).__module__), "checkpoint_filter_fn", None)
    if set(state) != set(target) and remap is not None:
        try:
            state = remap(state, teacher)
        except Exception:  # a layout the filter does not know: the key listing below says what differs
            pass
    missing = [key for key in target if key not in state]
    unexpected = [key for key in state if key not in target]
    shapes = [key for key in target if key in state and state[key].shape != target[key].shape]
    if missing or unexpected or shapes:
        parts = [f"{len(keys)} {label} ({', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''})"
                 for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                     ("shape mismatches", shapes)) if keys]
        raise CheckpointError(f"teacher_checkpoint {path} does not fit the teacher {name}: {'; '.join(parts)}; "
                              f"check --teacher-model and the run's num_classes")
    teacher.load_state_dict(state)


def build_teacher(cfg: Mapping[str, Any], device: torch.device) -> nn.Module | None:
    """The configured teacher on `device`, frozen and in eval mode; None without distillation. A pretrained head of
    another class count than the run's is refused: its scores would be noise."""
    if cfg["distillation_type"] == "none":
        return None
    name, path = cfg["teacher_model"], cfg["teacher_checkpoint"]
    num_classes = cfg["num_classes"]
    pretrained = bool(cfg["teacher_pretrained"]) and not path
    if pretrained:
        known = timm.models.get_pretrained_cfg(name)
        classes = getattr(known, "num_classes", None)
        if classes is not None and classes != num_classes:
            raise ConfigError(f"teacher_model {name}'s pretrained head has {classes} classes, the run {num_classes}: "
                              f"give --teacher-checkpoint with a teacher trained on the run's classes")
    try:
        teacher = timm.create_model(name, pretrained=pretrained, num_classes=num_classes)
    except (RuntimeError, ValueError) as exc:  # an unknown pretrained tag, a download that failed
        raise ConfigError(f"cannot build teacher_model {name} (pretrained {pretrained}): {exc}") from None
    if path:
        _load_teacher_weights(teacher, name, path)
    elif not pretrained:
        log.warning("warning: the teacher %s has random weights (no teacher_checkpoint, teacher_pretrained false): "
                    "it teaches noise; fit only for testing the loop", name)
    if cfg["channels_last"]:
        teacher = teacher.to(memory_format=torch.channels_last)
    teacher.requires_grad_(False)
    return teacher.to(device).eval()


def distillation_criterion(criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                           teacher: nn.Module | None, cfg: Mapping[str, Any]) -> DistillationLoss:
    """The loop's criterion wrapped: it takes (inputs, outputs, targets), with or without a teacher."""
    kind = cfg["distillation_type"] if teacher is not None else "none"
    return DistillationLoss(criterion, teacher, kind, cfg["distillation_alpha"], cfg["distillation_tau"])


def describe(cfg: Mapping[str, Any], model: nn.Module) -> str | None:
    """The run header's line: teacher, type, alpha, tau, where its weights come from, what the student distils
    from; None without distillation."""
    if cfg["distillation_type"] == "none":
        return None
    weights = (f"weights {cfg['teacher_checkpoint']}" if cfg["teacher_checkpoint"]
               else "timm's pretrained weights" if cfg["teacher_pretrained"] else "random weights")
    student = ("the student's head_kd" if hasattr(model, "head_kd") and getattr(model, "kd", True)
               else "the student's main output" if getattr(model, "side_branch_count", 0)
               else "the student's single output")
    return (f"distillation: {cfg['distillation_type']} from {cfg['teacher_model']} ({weights}, frozen), "
            f"alpha {cfg['distillation_alpha']:g}, tau {cfg['distillation_tau']:g}; into {student}")
