"""Sparsifiner's two-phase distillation as a LightningModule (``model.task: distillation``).

Phase 1 (``recon_epochs`` epochs, official 5): only the connectivity predictors train, to reconstruct the frozen
teacher's softmax attention (rows without the cls query; MSE with reduction sum, averaged over layers, weight 0.01);
the student runs dense attention. Phase 2 (the rest, official 45): only the backbone trains (predictors frozen, sparse
attention) with CE 1.0 + KL(teacher || student) on the logits 0.5 (batchmean) + MSE on the final-norm patch tokens
0.5. The teacher is timm's dense DeiT with the weights the student starts from, frozen and in eval mode.

Learning rates (AdamW): predictors ``recon_lr`` (3e-4) warm up then cosine to ``recon_min_lr`` (2e-4) over phase 1;
backbone ``lr`` (8e-5) warms up then cosine to ``min_lr`` (2e-6) over phase 2; ``warmup_epochs`` (3) per phase.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from .classification import ClassificationTask

__all__ = ["DistillationTask", "build_distillation_task"]

RECON, DISTILL = "recon", "distill"


def _no_decay(name: str, p: nn.Parameter) -> bool:
    return p.ndim <= 1 or name.endswith((".bias", "pos_embed", "cls_token"))


def _phase_lambda(start: int, length: int, warmup: int, min_ratio: float):
    """LR factor at global step ``s``: 0 before ``start``, linear warm-up, cosine to ``min_ratio`` by ``start+length``."""

    def fn(step: int) -> float:
        s = step - start
        if s < 0 or length <= 0:
            return 0.0
        if s < warmup:
            return (s + 1) / warmup
        t = min(1.0, (s - warmup) / max(1, length - warmup))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))

    return fn


class DistillationTask(ClassificationTask):
    """Two-phase Sparsifiner training of ``model`` (a :class:`~visionzoo.models.sparsifiner.Sparsifiner`).

    Logs ``train/loss`` plus ``train/recon`` (phase 1) or ``train/ce``, ``train/kl``, ``train/token_mse`` (phase 2);
    validation and test are the classification metrics of the student (sparse attention in eval mode).
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        teacher: nn.Module | None = None,
        recon_epochs: int = 5,
        recon_weight: float = 0.01,
        ce_weight: float = 1.0,
        kl_weight: float = 0.5,
        token_weight: float = 0.5,
        lr: float = 8e-5,
        min_lr: float = 2e-6,
        recon_lr: float = 3e-4,
        recon_min_lr: float = 2e-4,
        warmup_epochs: int = 3,
        weight_decay: float = 0.05,
        label_smoothing: float = 0.0,
        mixup: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(model, num_classes=num_classes, label_smoothing=label_smoothing, mixup=mixup)
        self.save_hyperparameters(ignore=["model", "teacher"])
        if not all(hasattr(model, a) for a in ("set_recon", "approx_attentions", "predictor_parameters")):
            raise TypeError(f"DistillationTask needs a Sparsifiner student, got {type(model).__name__}")
        if teacher is None:
            from ..models.sparsifiner import dense_teacher

            teacher = dense_teacher(model)
        self.teacher = teacher.requires_grad_(False).eval()
        self.phase = RECON if recon_epochs > 0 else DISTILL
        self._teacher_attn: list[torch.Tensor] = []
        self._hooks = [blk.attn.register_forward_hook(self._grab_teacher_attn) for blk in self.teacher.blocks]
        self._record_attn = False

    # -- phases --------------------------------------------------------------------------------------------------
    def set_phase(self, phase: str) -> None:
        """Freeze/unfreeze and switch the student's attention for ``recon`` or ``distill``."""
        if phase not in (RECON, DISTILL):
            raise ValueError(f"phase must be '{RECON}' or '{DISTILL}', got {phase!r}")
        self.phase = phase
        predictor = {id(p) for p in self.model.predictor_parameters()}
        for p in self.model.parameters():
            p.requires_grad_((id(p) in predictor) == (phase == RECON))
        self.model.set_recon(phase == RECON)

    def setup(self, stage: str) -> None:
        # DDP registers the parameters that require grad when it wraps the module (after this hook), so every
        # student parameter must be trainable now; the phases then freeze by requires_grad, which DDP sees as
        # unused parameters (the experiment config sets strategy ddp_find_unused_parameters_true).
        if stage == "fit":
            self.model.requires_grad_(True)

    def on_train_epoch_start(self) -> None:
        self.set_phase(RECON if self.current_epoch < self.hparams.recon_epochs else DISTILL)

    def on_validation_epoch_start(self) -> None:
        self.model.set_recon(False)

    def on_validation_epoch_end(self) -> None:
        self.model.set_recon(self.phase == RECON)

    def train(self, mode: bool = True) -> DistillationTask:
        super().train(mode)
        self.teacher.eval()  # always frozen, eval mode
        return self

    # -- teacher attention -------------------------------------------------------------------------------------
    def _grab_teacher_attn(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if not self._record_attn:
            return
        x = inputs[0]
        B, N, C = x.shape
        q, k, _ = (
            module.qkv(x).reshape(B, N, 3, module.num_heads, module.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        )
        q, k = module.q_norm(q), module.k_norm(k)
        attn = ((q * module.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        self._teacher_attn.append(attn[:, :, 1:])

    def _teacher_forward(self, images: torch.Tensor, record_attn: bool) -> tuple[torch.Tensor, torch.Tensor]:
        self._teacher_attn = []
        self._record_attn = record_attn
        with torch.no_grad():
            feats = self.teacher.forward_features(images)
            logits = self.teacher.forward_head(feats)
        self._record_attn = False
        return feats, logits

    # -- steps -------------------------------------------------------------------------------------------------
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, targets = batch
        if self.phase == RECON:
            self.model(images)
            _, _ = self._teacher_forward(images, record_attn=True)
            approx = self.model.approx_attentions()
            recon = torch.stack(
                [F.mse_loss(a, t, reduction="sum") for a, t in zip(approx, self._teacher_attn, strict=True)]
            ).mean()
            loss = self.hparams.recon_weight * recon
            self.log("train/recon", recon.detach(), on_step=True, on_epoch=True)
        else:
            if self.mixup_fn is not None and images.shape[0] % 2 == 0:
                images, targets = self.mixup_fn(images, targets)
            feats = self.model.forward_features(images)
            logits = self.model.forward_head(feats)
            t_feats, t_logits = self._teacher_forward(images, record_attn=False)
            ce = (
                self.train_criterion(logits, targets)
                if targets.ndim > 1 or self.mixup_fn is None
                else F.cross_entropy(logits, targets, label_smoothing=self.hparams.label_smoothing)
            )
            kl = F.kl_div(
                F.log_softmax(logits, dim=-1),
                F.log_softmax(t_logits, dim=-1),
                reduction="batchmean",
                log_target=True,
            )
            prefix = self.model.num_prefix_tokens
            token_mse = F.mse_loss(feats[:, prefix:], t_feats[:, prefix:])
            loss = (
                self.hparams.ce_weight * ce
                + self.hparams.kl_weight * kl
                + self.hparams.token_weight * token_mse
            )
            self.log_dict(
                {"train/ce": ce.detach(), "train/kl": kl.detach(), "train/token_mse": token_mse.detach()}
            )
        self.train_loss(loss.detach())
        self.log("train/loss", self.train_loss, on_step=True, on_epoch=True, prog_bar=True)
        if self._trainer is not None and self._trainer.optimizers:
            self.log(
                "train/lr",
                self.trainer.optimizers[0].param_groups[0 if self.phase == RECON else -1]["lr"],
                on_step=True,
                on_epoch=False,
            )
        return loss

    # -- optimisation ------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        predictor = {id(p) for p in self.model.predictor_parameters()}
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for name, p in self.model.named_parameters():
            groups.setdefault((id(p) in predictor, _no_decay(name, p)), []).append(p)
        max_epochs = max(1, int(self.trainer.max_epochs or 1))
        total = int(self.trainer.estimated_stepping_batches)
        per_epoch = max(1, total // max_epochs)
        recon_steps = min(total, hp.recon_epochs * per_epoch)
        warm = hp.warmup_epochs * per_epoch
        param_groups, lambdas = [], []
        for (is_pred, no_decay), params in sorted(groups.items(), key=lambda kv: kv[0], reverse=True):
            base, floor = (hp.recon_lr, hp.recon_min_lr) if is_pred else (hp.lr, hp.min_lr)
            start, length = (0, recon_steps) if is_pred else (recon_steps, total - recon_steps)
            param_groups.append(
                {"params": params, "lr": base, "weight_decay": 0.0 if no_decay else hp.weight_decay}
            )
            lambdas.append(_phase_lambda(start, length, min(warm, max(1, length // 2)), floor / base))
        optimizer = torch.optim.AdamW(param_groups, lr=hp.lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def state_dict(self, *args, **kwargs):  # the teacher is rebuilt from the student's starting weights
        sd = super().state_dict(*args, **kwargs)
        return {k: v for k, v in sd.items() if not k.startswith("teacher.")}

    def load_state_dict(self, state_dict, strict: bool = True, **kwargs):
        state_dict = dict(state_dict)
        for k, v in self.teacher.state_dict().items():
            state_dict.setdefault(f"teacher.{k}", v)
        return super().load_state_dict(state_dict, strict=strict, **kwargs)


def build_distillation_task(cfg: DictConfig, model: nn.Module, num_classes: int) -> DistillationTask:
    """The task for ``model.task: distillation``; settings from ``model.distill`` (see ``conf/model/sparsifiner.yaml``)."""
    m = cfg.model
    distill = OmegaConf.to_container(m.get("distill"), resolve=True) if m.get("distill") is not None else {}
    mixup = OmegaConf.to_container(m.get("mixup"), resolve=True) if m.get("mixup") is not None else None
    return DistillationTask(
        model,
        num_classes=num_classes,
        label_smoothing=float(m.get("label_smoothing", 0.0)),
        mixup=mixup,
        **distill,
    )
