"""Optional end-to-end DPQ: fine-tune the backbone with the quantization loss reaching it.

The DPQ paper describes training features and codebooks together; its released code never lets
the quantization loss reach the CNN (reference/dpq-and-faiss.md §1.5). This module implements the
paper's version as an alternation on every batch, run inside the ordinary trainer:

1. codebook step: the DPQ loss on the batch's embeddings *detached*, one Adam step on the
   codebooks only (their own optimizer and DPQ's learning rate);
2. backbone step: the base objective (plain CE, or the Dual-Tuning objective so that the model
   stays compatible) plus ``quant_weight`` × the DPQ loss with the codebooks held constant,
   which the trainer minimises over the model's parameters.

The label-guided term runs through the model's own classifier. Compatibility must be checked
again afterwards: the quantization loss moves the features.
"""

from __future__ import annotations

import copy

import torch
from hotswap.components.core.configs import DPQConfig
from hotswap.components.data.images import ImageSet
from hotswap.components.models.backbones import EmbeddingModel
from hotswap.components.models.training import (
    Objective,
    TrainConfig,
    TrainHistory,
    cross_entropy_objective,
    resolve_device,
    train_model,
)
from hotswap.components.quant.dpq import DPQCodebooks
from hotswap.components.quant.dpq_training import dpq_loss_terms


def finetune_with_dpq(
    model: EmbeddingModel,
    data: ImageSet,
    codebooks: DPQCodebooks,
    train_config: TrainConfig,
    dpq_config: DPQConfig | None = None,
    base_objective: Objective | None = None,
    quant_weight: float = 1.0,
    progress: bool = False,
) -> tuple[DPQCodebooks, TrainHistory]:
    """Fine-tune ``model`` in place on ``data`` with the DPQ loss added; returns new codebooks.

    ``codebooks`` (usually from :func:`train_dpq` on this model's features) are the starting
    point and are not modified. ``base_objective`` defaults to label-smoothed cross-entropy.
    """
    if quant_weight < 0:
        raise ValueError(f"quant_weight must be ≥ 0, got {quant_weight}")
    if codebooks.dim != model.embedding_dim:
        raise ValueError(f"codebooks have d={codebooks.dim}, the model embeds into d={model.embedding_dim}")
    config = dpq_config or codebooks.config or DPQConfig()
    config = config.model_copy(update={"similarity": codebooks.similarity})
    device = resolve_device(train_config.device)
    books = torch.nn.Parameter(torch.from_numpy(codebooks.codebooks.copy()).to(device))
    optimizer = torch.optim.Adam([books], lr=config.lr)
    base = base_objective or cross_entropy_objective(train_config.label_smoothing)

    def objective(net: EmbeddingModel, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = dict(base(net, images, labels))
        z = net.embed(images)
        # 1. codebook step on constant features (the trainer clears stray grads on the model)
        book_terms, _ = dpq_loss_terms(books, z.detach(), config, labels, net.classify)
        optimizer.zero_grad(set_to_none=True)
        torch.stack(list(book_terms.values())).sum().backward()
        optimizer.step()
        # 2. the same loss with constant codebooks, for the backbone
        feature_terms, _ = dpq_loss_terms(books.detach(), z, config, labels, net.classify)
        terms.update({f"dpq_{name}": quant_weight * value for name, value in feature_terms.items()})
        return terms

    history = train_model(model, data, train_config, objective=objective, progress=progress)
    result = DPQCodebooks(
        books.detach().cpu().numpy(),
        codebooks.similarity,
        config,
        codebooks.history + [copy.deepcopy(e) for e in history.epochs],
        codebooks.train_seconds + history.seconds,
    )
    return result, history
