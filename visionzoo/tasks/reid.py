"""Person re-identification as a LightningModule ("Bag of Tricks" strong baseline losses).

Training: ID cross-entropy with label smoothing on the BNNeck classifier logits + batch-hard triplet loss on the
pre-BN pooled feature (+ optional center loss). Validation/test: embeddings of every query and gallery image (post-BN,
optionally averaged with the horizontally flipped image), then mAP and CMC rank-1/5/10 under the Market-1501
protocol (:func:`visionzoo.tasks.reid_metrics.compute_reid_metrics`), optionally on k-reciprocal re-ranked distances
(``rerank=True``, :func:`visionzoo.tasks.reid_rerank.k_reciprocal_rerank`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .compiling import maybe_compile
from .optim import build_optimizer, build_scheduler, global_batch_size, scaled_lr, steps_per_epoch
from .reid_metrics import compute_reid_metrics, reid_metrics_from_distance
from .reid_rerank import k_reciprocal_rerank, rerank_memory_bytes

__all__ = ["CenterLoss", "ReIDTask", "WarmupMultiStep", "batch_hard_triplet_loss"]


def batch_hard_triplet_loss(
    features: torch.Tensor, pids: torch.Tensor, margin: float = 0.3, normalize: bool = False
) -> torch.Tensor:
    """Batch-hard triplet loss (Hermans et al. 2017) with Euclidean distances.

    For each anchor: the farthest same-id sample (hardest positive) and the closest other-id sample (hardest
    negative); loss = mean over anchors of ``max(0, d_ap - d_an + margin)`` (``margin <= 0``: soft-margin
    ``softplus(d_ap - d_an)``). Anchors with no positive or no negative in the batch are skipped (0 if none is left).
    """
    if normalize:
        features = F.normalize(features, dim=1)
    x = features.float()
    sq = x.pow(2).sum(1, keepdim=True)
    dist = (sq + sq.t() - 2.0 * x @ x.t()).clamp_min(1e-12).sqrt()
    same = pids.view(-1, 1) == pids.view(1, -1)
    eye = torch.eye(len(pids), dtype=torch.bool, device=pids.device)
    pos_mask, neg_mask = same & ~eye, ~same
    d_ap = dist.masked_fill(~pos_mask, float("-inf")).amax(dim=1)
    d_an = dist.masked_fill(~neg_mask, float("inf")).amin(dim=1)
    valid = pos_mask.any(1) & neg_mask.any(1)
    if not bool(valid.any()):
        return features.sum() * 0.0
    diff = d_ap[valid] - d_an[valid]
    loss = F.softplus(diff) if margin <= 0 else F.relu(diff + margin)
    return loss.mean()


class CenterLoss(nn.Module):
    """Center loss (Wen et al. 2016): half the mean squared distance of each feature to its class center."""

    def __init__(self, num_classes: int, feat_dim: int) -> None:
        super().__init__()
        self.centers = nn.Parameter(torch.randn(num_classes, feat_dim))

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return 0.5 * (features.float() - self.centers[labels]).pow(2).sum(1).mean()


@dataclass
class WarmupMultiStep:
    """Per-step LR multiplier: linear warm-up from ``warmup_ratio`` over ``warmup_steps``, then
    ``gamma ** (number of milestones <= epoch)`` (PyTorch ``MultiStepLR`` per epoch, as in the strong baseline)."""

    steps_per_epoch: int
    milestones: tuple[int, ...]
    gamma: float = 0.1
    warmup_steps: int = 0
    warmup_ratio: float = 0.01

    def __call__(self, step: int) -> float:
        epoch = step // max(1, self.steps_per_epoch)
        decay = self.gamma ** sum(1 for m in self.milestones if epoch >= m)
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return decay * (self.warmup_ratio + (1.0 - self.warmup_ratio) * step / self.warmup_steps)
        return decay


class ReIDTask(L.LightningModule):
    """Re-ID training (ID + triplet [+ center] loss) and query/gallery evaluation.

    Logs ``train/loss``, ``train/id_loss``, ``train/triplet_loss`` (``train/center_loss``), ``train/lr`` and
    ``val/mAP``, ``val/rank1``, ``val/rank5``, ``val/rank10`` (and ``test/*``).

    The model is a :class:`visionzoo.models.reid.ReIDResNet` (``forward_embeddings`` gives the pre- and post-BNNeck
    features) or any timm classifier (pre-logits feature for both, its classifier for the logits).
    ``scheduler.name: multistep`` (``milestones``, ``gamma``, ``warmup_epochs``, ``warmup_ratio``) is handled here;
    other names go to :func:`visionzoo.tasks.optim.build_scheduler`.

    ``rerank=True`` ranks the gallery by the k-reciprocal re-ranked distance (Zhong et al. 2017; ``rerank_k1``,
    ``rerank_k2``, ``rerank_lambda``) of the evaluation features (normalised and flip-averaged as configured, base
    distance ``distance``) instead of the plain distance; the metric names stay the same. It costs
    ``O((Q + G)^2)`` memory (Market-1501: about 4 GiB) and some seconds per evaluation.
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        optimizer: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        label_smoothing: float = 0.1,
        triplet_margin: float = 0.3,
        triplet_weight: float = 1.0,
        id_weight: float = 1.0,
        center_loss_weight: float = 0.0,
        center_lr: float = 0.5,
        flip_eval: bool = False,
        distance: str = "euclidean",
        normalize_eval: bool = True,
        rerank: bool = False,
        rerank_k1: int = 20,
        rerank_k2: int = 6,
        rerank_lambda: float = 0.3,
        rerank_max_items: int = 40_000,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if rerank and (int(rerank_k1) < 1 or int(rerank_k2) < 1 or not 0.0 <= float(rerank_lambda) <= 1.0):
            raise ConfigError(
                f"re-ranking needs rerank_k1 >= 1, rerank_k2 >= 1 and rerank_lambda in [0, 1], got {rerank_k1}, "
                f"{rerank_k2} and {rerank_lambda}."
            )
        self.save_hyperparameters(ignore=["model"])
        self.model = maybe_compile(model, compile)
        self.num_classes = num_classes
        self.optimizer_cfg = dict(optimizer or {})
        self.scheduler_cfg = dict(scheduler or {})
        self.id_criterion = nn.CrossEntropyLoss(label_smoothing=float(label_smoothing))
        self.center_loss: CenterLoss | None = None
        if center_loss_weight > 0:
            dim = int(getattr(model, "num_features", 0)) * int(
                getattr(getattr(model, "global_pool", None), "feat_mult", lambda: 1)()
            )
            if dim <= 0:
                raise ConfigError("center loss needs the model's feature width (model.num_features).")
            self.center_loss = CenterLoss(num_classes, dim)
        self._eval_outputs: list[dict[str, torch.Tensor]] = []

    def setup(self, stage: str) -> None:
        """Refuse re-ranking an evaluation set too large for it before any training, not after an epoch."""
        if not self.hparams.rerank or self._trainer is None:
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        for name in ("val_dataset", "test_dataset"):
            dataset = getattr(datamodule, name, None)
            size = len(dataset) if dataset is not None else 0
            if size > int(self.hparams.rerank_max_items):
                raise ConfigError(
                    f"k-reciprocal re-ranking of the {size} query + gallery images of {name} needs about "
                    f"{rerank_memory_bytes(size) / 2**30:.1f} GiB, above model.reid.rerank_max_items="
                    f"{self.hparams.rerank_max_items}: raise that limit if the memory is there, or set "
                    "model.reid.rerank=false."
                )

    # ------------------------------------------------------------------ forward
    def embeddings(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pre-BN feature, post-BN feature)``; both the pre-logits feature for a plain timm classifier."""
        if hasattr(self.model, "forward_embeddings"):
            return self.model.forward_embeddings(images)
        feat = self.model.forward_head(self.model.forward_features(images), pre_logits=True)
        return feat, feat

    def classify(self, post: torch.Tensor) -> torch.Tensor:
        head = self.model.get_classifier()
        if getattr(self.model, "drop_rate", 0.0) and hasattr(self.model, "forward_embeddings"):
            post = F.dropout(post, p=float(self.model.drop_rate), training=self.training)
        return head(post)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The test embedding (post-BN)."""
        return self.embeddings(images)[1]

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        images, pids = batch["image"], batch["pid"].long()
        pre, post = self.embeddings(images)
        logits = self.classify(post)
        id_loss = self.id_criterion(logits.float(), pids)
        tri_loss = batch_hard_triplet_loss(pre, pids, margin=float(self.hparams.triplet_margin))
        loss = self.hparams.id_weight * id_loss + self.hparams.triplet_weight * tri_loss
        bs = images.shape[0]
        if self.center_loss is not None:
            c_loss = self.center_loss(pre, pids)
            loss = loss + self.hparams.center_loss_weight * c_loss
            self.log("train/center_loss", c_loss.detach(), on_step=False, on_epoch=True, batch_size=bs)
        self.log("train/loss", loss.detach(), on_step=True, on_epoch=True, prog_bar=True, batch_size=bs)
        self.log("train/id_loss", id_loss.detach(), on_step=False, on_epoch=True, batch_size=bs)
        self.log("train/triplet_loss", tri_loss.detach(), on_step=False, on_epoch=True, batch_size=bs)
        if self._trainer is not None and self._trainer.optimizers:
            self.log(
                "train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False
            )
        return loss

    def on_after_backward(self) -> None:
        # Bag of Tricks: the centers' gradient is undone by 1/weight so they move at center_lr, not at weight*lr
        if self.center_loss is not None and self.center_loss.centers.grad is not None:
            self.center_loss.centers.grad.mul_(1.0 / float(self.hparams.center_loss_weight))

    # ------------------------------------------------------------------ evaluation
    def _eval_step(self, batch: dict[str, Any]) -> None:
        images = batch["image"]
        feat = self(images)
        if self.hparams.flip_eval:
            feat = 0.5 * (feat + self(torch.flip(images, dims=[3])))
        self._eval_outputs.append(
            {
                "feat": feat.detach().float().cpu(),
                "pid": torch.as_tensor(batch["pid"]).long().cpu(),
                "camid": torch.as_tensor(batch["camid"]).long().cpu(),
                "is_query": torch.as_tensor(batch["is_query"]).bool().cpu(),
            }
        )

    def _eval_epoch_end(self, stage: str) -> None:
        outputs, self._eval_outputs = self._eval_outputs, []
        if not outputs or (self._trainer is not None and self.trainer.sanity_checking):
            return
        cat = {k: torch.cat([o[k] for o in outputs]) for k in outputs[0]}
        if self._trainer is not None and self.trainer.world_size > 1:
            cat = {k: self._gather_in_rank_order(v) for k, v in cat.items()}
        feat = cat["feat"]
        if self.hparams.normalize_eval:
            feat = F.normalize(feat, dim=1)
        q = cat["is_query"]
        g = ~q
        if not bool(q.any()) or not bool(g.any()):
            raise ConfigError(f"{stage} set has no query or no gallery images; cannot compute Re-ID metrics.")
        labels = (cat["pid"][q], cat["pid"][g], cat["camid"][q], cat["camid"][g])
        metric = str(self.hparams.distance)
        if self.hparams.rerank:
            dist = k_reciprocal_rerank(
                feat[q],
                feat[g],
                k1=int(self.hparams.rerank_k1),
                k2=int(self.hparams.rerank_k2),
                lambda_value=float(self.hparams.rerank_lambda),
                metric=metric,
                max_items=int(self.hparams.rerank_max_items),
            )
            res = reid_metrics_from_distance(dist, *labels)
        else:
            res = compute_reid_metrics(feat[q], feat[g], *labels, metric=metric)
        for key in ("mAP", "rank1", "rank5", "rank10"):
            value = float(res[key])
            self.log(
                f"{stage}/{key}", value, prog_bar=key in ("mAP", "rank1") and stage == "val", sync_dist=False
            )

    def _gather_in_rank_order(self, values: torch.Tensor) -> torch.Tensor:
        """Every process's ``values`` (their lengths may differ), concatenated in rank order.

        The evaluation loaders give each process a contiguous unpadded shard of whole batches, so this is the
        single-process order and the same features: each query and gallery item once, ties ranked as in one process.
        """
        from torchmetrics.utilities.distributed import gather_all_tensors

        dtype = values.dtype
        parts = gather_all_tensors(values.to(self.device, torch.long if dtype == torch.bool else dtype))
        return torch.cat(parts).cpu().to(dtype)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images = (
            batch["image"]
            if isinstance(batch, dict)
            else batch[0]
            if isinstance(batch, list | tuple)
            else batch
        )
        return self(images)

    # ------------------------------------------------------------------ optimisation
    def _multistep(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        cfg = self.scheduler_cfg
        per_epoch = steps_per_epoch(self.trainer)
        warmup = int(round(float(cfg.get("warmup_epochs", 0)) * per_epoch))
        fn = WarmupMultiStep(
            per_epoch,
            tuple(int(m) for m in cfg.get("milestones", (40, 70))),
            float(cfg.get("gamma", 0.1)),
            warmup,
            float(cfg.get("warmup_ratio", 0.01)),
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
        return {"scheduler": scheduler, "interval": "step", "frequency": 1}

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = build_optimizer(
            self.model, scaled_lr(self.optimizer_cfg, global_batch_size(self._trainer))
        )
        if self.center_loss is not None:  # own SGD-like lr for the centers, no weight decay
            optimizer.add_param_group(
                {
                    "params": [self.center_loss.centers],
                    "lr": float(self.hparams.center_lr),
                    "weight_decay": 0.0,
                }
            )
        if str(self.scheduler_cfg.get("name", "cosine")) == "multistep":
            sched = self._multistep(optimizer)
        else:
            sched = build_scheduler(optimizer, self.trainer, self.scheduler_cfg)
        return {"optimizer": optimizer, "lr_scheduler": sched}
