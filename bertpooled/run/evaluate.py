"""What a run measures of its network: after each epoch (`evaluate_epoch`: the validation split, the test set with
`eval_each_epoch`) and after training (`evaluate_trained`: the test set, the inference cost, sizes and cache hits,
the contract's metrics)."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from bertpooled.contract import (
    ACCURACY,
    PARAMS_BACKBONE,
    PARAMS_HEAD,
    PARAMS_HEAD_TRAINABLE,
    QUALITY_METRICS,
    THROUGHPUT_TRAIN,
    cache_hit_metric,
    val_metric,
)
from bertpooled.model.build import Classifier
from bertpooled.model.heads import EncoderLSTMClassifier, count_parameters
from bertpooled.run import sources
from bertpooled.run.measure import EpochStats, Trained, evaluate, predict_inputs
from bertpooled.run.network import backbone_of, trained_network
from bertpooled.run.prepare import Prepared, model_inputs


def evaluate_epoch(stats: EpochStats, net: torch.nn.Module, prepared: Prepared) -> EpochStats:
    """After an epoch: `stats` with the test accuracy (`eval_each_epoch`) and the validation metrics (a validation
    split) added."""
    rt = prepared.rt
    if prepared.config.eval_each_epoch:
        probs = predict_inputs(net, *model_inputs(prepared, "test"), rt.eval_batch, rt.device, rt.precision)
        stats = dataclasses.replace(stats, test_accuracy=accuracy(prepared.split("test").labels, probs))
    if prepared.val is not None:
        stats = dataclasses.replace(stats, val=validate(net, prepared))
    return stats


def accuracy(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The contract's accuracy of probabilities against labels (at its decision threshold)."""
    assert ACCURACY.score is not None
    return ACCURACY.score(labels, probabilities)


def validate(net: torch.nn.Module, prepared: Prepared) -> dict[str, float]:
    """The validation split's quality metrics (`val/accuracy`, `val/f1`, `val/roc_auc`) of `net` as it is now."""
    rt = prepared.rt
    probs = predict_inputs(net, *model_inputs(prepared, "val"), rt.eval_batch, rt.device, rt.precision)
    labels = prepared.split("val").labels
    return {val_metric(metric): metric.score(labels, probs) for metric in QUALITY_METRICS if metric.score}


def evaluate_trained(
    prepared: Prepared,
    model: Classifier,
    history: list[EpochStats],
    precomputed: bool = False,
    resumed_epochs: int = 0,
) -> Trained:
    """After training (alone, or in a seed group: bertpooled.run.grouped): evaluate on the test subset, measure the
    inference cost, fill in the contract's metrics. `model` is on the run's device; `phases` holds its train time;
    `precomputed`: whether training ran on precomputed training features (`Fitted.precomputed`)."""
    from bertpooled.run import cost

    cfg, phases, rt = prepared.config, prepared.phases, prepared.rt
    with phases.timed("eval"):
        net = trained_network(model, prepared)
        probs = predict_inputs(net, *model_inputs(prepared, "test"), rt.eval_batch, rt.device, rt.precision)
        metrics = evaluate(prepared.split("test").labels, probs)
    # Inference is timed in the precision the run trained and evaluated in (bf16 on a GPU by default).
    with phases.timed("cost"), rt.autocast():
        metrics.update(
            cost.measure(
                model,
                prepared.tokenizer,
                prepared.split("test").texts,
                cfg.max_len,
                rt.device,
                latency_texts=cfg.latency_texts,
                throughput_batches=cfg.throughput_batches,
            )
        )
    # time/train_s of a resumed run covers every epoch: the earlier ones were timed by the process that ran them
    # (their seconds travel in the checkpoint). Otherwise a resume after the last epoch logs about 0 s.
    phases.seconds["train"] += sum(h.seconds for h in history[:resumed_epochs])
    metrics.update(size_metrics(prepared, model, phases.seconds["train"]))
    metrics.update(cost.peak_memory_metrics(rt.device))
    if prepared.cached:
        metrics[cache_hit_metric("features")] = float(prepared.features_cache_hit)
    metrics[cache_hit_metric("train_features")] = float(precomputed)
    if prepared.val is not None:
        metrics["data/val_examples"] = len(prepared.val)
    return Trained(metrics, probs, model.cpu(), prepared.tokenizer, history)


def size_metrics(prepared: Prepared, model: Classifier, train_s: float) -> dict[str, float]:
    """Parameter counts, training throughput, data sizes and the token cache's hit of a trained run."""
    cfg = prepared.config
    head_total, head_trainable = count_parameters(model.head)
    if prepared.embeddings is not None:
        backbone_params, embedding_params, backbone_trainable = (
            prepared.embeddings.backbone_params,
            prepared.embeddings.table.numel(),
            0,
        )
    else:
        assert isinstance(model, EncoderLSTMClassifier), "a run without input embeddings has an encoder"
        backbone_params, backbone_trainable = count_parameters(model.encoder)
        embedding_params = backbone_of(model).get_input_embeddings().weight.numel()
    return {
        PARAMS_HEAD: head_total,
        PARAMS_HEAD_TRAINABLE: head_trainable,
        PARAMS_BACKBONE: backbone_params,
        "params/backbone_trainable": backbone_trainable,
        "params/embeddings": embedding_params,
        THROUGHPUT_TRAIN: len(sources.training_ids(prepared)) * cfg.epochs / max(train_s, 1e-9),
        "data/train_examples": len(prepared.train),
        "data/test_examples": len(prepared.split("test")),
        cache_hit_metric("tokens"): float(prepared.tokens_cache_hit),
    }
