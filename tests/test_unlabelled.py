"""Unlabelled reviews as a distillation set (issue 29, item 5): IMDB's train/unsup read where the data has it, the
reviews the teacher labels for the student chosen without a test review, trained on with the teacher's targets
alone, and logged as a dataset of their own."""

from __future__ import annotations

import random

import mlflow
import numpy as np
import pytest
import torch
from conftest import NEGATIVE, POSITIVE, make_review, one_error_line, write_imdb_archive, write_imdb_tree
from mlflow.tracking import MlflowClient
from test_recipes import train, trained_run

from bertpooled.config import Config
from bertpooled.data import load_imdb
from bertpooled.errors import BertpooledError
from bertpooled.run import sources


def with_unsup(root, n: int = 30):
    """The tiny layout plus `n` reviews under train/unsup/ (and one under test/unsup/, which is not IMDB's)."""
    tree = write_imdb_tree(root)
    rng = random.Random(7)
    for where, count in (("train", n), ("test", 1)):
        folder = tree / where / "unsup"
        folder.mkdir()
        for i in range(count):
            (folder / f"{i}_0.txt").write_text(make_review(rng, POSITIVE + NEGATIVE, 12), encoding="utf-8")
    return tree


@pytest.fixture(scope="module")
def unsup_imdb(tmp_path_factory):
    root = tmp_path_factory.mktemp("imdb-unsup")
    return write_imdb_archive(with_unsup(root), root / "aclImdb_v1.tar.gz")


def test_train_unsup_is_read_from_archives_and_folders_and_leaves_the_labelled_digest_alone(tmp_path, unsup_imdb):
    plain = load_imdb(str(write_imdb_archive(write_imdb_tree(tmp_path / "a"), tmp_path / "plain.tar.gz")))
    assert plain.unsup is None and plain.unsup_digest == ""
    for source in (unsup_imdb, with_unsup(tmp_path / "b")):
        imdb = load_imdb(str(source))
        assert imdb.unsup is not None and len(imdb.unsup) == 30
        assert all(rid.startswith("train/unsup/") for rid in imdb.unsup.ids) and set(imdb.unsup.labels) == {-1}
        assert len(imdb.unsup_digest) == 64
        # The labelled reviews' digest is the one a run always logged: unlabelled reviews are not part of it.
        assert imdb.digest == plain.digest and len(imdb.train) == len(plain.train)
        assert not any("unsup" in rid for rid in imdb.test.ids + imdb.train.ids)


def test_the_parsed_cache_keeps_train_unsup(tmp_path, monkeypatch):
    from bertpooled.data import imdb as imdb_module

    archive = write_imdb_archive(with_unsup(tmp_path / "t"), tmp_path / "aclImdb_v1.tar.gz")
    monkeypatch.setattr(imdb_module, "_PARSED_MIN_BYTES", 0)  # the tiny archive goes through the parsed cache too
    first = load_imdb(str(archive), cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache" / "parsed").iterdir())
    again = load_imdb(str(archive), cache_dir=tmp_path / "cache")
    assert again.unsup is not None and again.unsup.ids == first.unsup.ids and again.unsup.texts == first.unsup.texts
    assert (again.digest, again.unsup_digest) == (first.digest, first.unsup_digest)


def test_unlabelled_rows_come_from_unsup_or_else_from_training_reviews_outside_the_subset(tiny_imdb, unsup_imdb):
    config = Config(mode="basic", unlabelled=10, distill_from="0" * 32, features="encoder", finetune=True)
    labelled = load_imdb(str(tiny_imdb))
    train = labelled.train.take(np.arange(0, len(labelled.train), 2))
    val = labelled.train.take(np.array([1]))
    rows, source = sources.unlabelled_split(config, labelled, train, val)
    assert rows is not None and len(rows) == 10 and source == sources.OUTSIDE_SOURCE
    assert not set(rows.ids) & (set(train.ids) | set(val.ids) | set(labelled.test.ids))
    assert set(rows.labels) == {-1}  # the labels are dropped
    assert sources.unlabelled_split(config, labelled, train, val)[0].ids == rows.ids  # seeded by data_seed
    from_unsup, source = sources.unlabelled_split(config, load_imdb(str(unsup_imdb)), train)
    assert source == "train/unsup" and all(rid.startswith("train/unsup/") for rid in from_unsup.ids)
    with pytest.raises(BertpooledError, match="unlabelled=1000 is more than the 23 unlabelled reviews"):
        sources.unlabelled_split(Config(**{**config.to_dict(), "unlabelled": 1000}), labelled, train, val)
    assert sources.unlabelled_split(Config(mode="basic"), labelled, train) == (None, "")


def test_the_labels_loss_skips_unlabelled_rows_and_the_teachers_term_covers_them():
    teacher = torch.tensor([2.0, -1.0, 3.0, -2.0])
    kd = sources.Distillation(teacher, alpha=0.5, temperature=2.0, unlabelled=True)
    logits = torch.tensor([0.5, -0.5, 1.0, 0.0])
    rows = torch.arange(4)
    # All rows labelled: the loss is what it was without unlabelled rows.
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0])
    plain = sources.Distillation(teacher, alpha=0.5, temperature=2.0)
    torch.testing.assert_close(kd.loss(logits, labels, rows), plain.loss(logits, labels, rows))
    # Unlabelled rows alone: the teacher's term alone (alpha's share of the labels' loss is 0).
    none = torch.full((4,), -1.0)
    only_teacher = sources.Distillation(teacher, alpha=0.0, temperature=2.0).loss(logits, labels, rows)
    torch.testing.assert_close(kd.loss(logits, none, rows), 0.5 * only_teacher)
    # A mixed batch: the labels' term is the mean over the labelled rows only.
    mixed = torch.tensor([1.0, -1.0, -1.0, 0.0])
    two = sources.Distillation(teacher[[0, 3]], alpha=1.0, temperature=2.0).loss(
        logits[[0, 3]], mixed[[0, 3]], torch.arange(2)
    )
    got = kd.loss(logits, mixed, rows) - 0.5 * only_teacher
    torch.testing.assert_close(got, 0.5 * two)


def test_bad_unlabelled_settings_are_one_line(store, tiny_bert, tiny_imdb):
    for setting, words in (("unlabelled=5", "without distill_from"), ("unlabelled=-1", "integer >= 0")):
        result = train(tiny_bert, tiny_imdb, "--set", setting)
        one_error_line(result, *words.split())


def test_a_student_trains_on_unlabelled_reviews_the_teacher_labels_and_logs_them(store, tiny_bert, tiny_imdb):
    teacher = trained_run(store, train(tiny_bert, tiny_imdb, "--set", "max_train_examples=20"))
    student = ("--set", "max_train_examples=20", "--set", f"init_from={teacher}", "--set", f"distill_from={teacher}")
    run_id = trained_run(store, train(tiny_bert, tiny_imdb, *student, "--set", "unlabelled=12", "--epochs", "1"))
    run = MlflowClient(store).get_run(run_id)
    params, metrics = run.data.params, run.data.metrics
    assert params["unlabelled/source"] == sources.OUTSIDE_SOURCE and len(params["unlabelled/digest"]) == 64
    assert run.data.tags["variant"].endswith("+init+kd+u12")
    assert metrics["data/train_examples"] == 20  # the labelled rows; the unlabelled ones are a dataset of their own
    contexts = {}
    for dataset_input in run.inputs.dataset_inputs:
        context = next(t.value for t in dataset_input.tags if t.key == mlflow.utils.mlflow_tags.MLFLOW_DATASET_CONTEXT)
        contexts[context] = dataset_input.dataset
    assert set(contexts) == {"training", "testing", "distillation"}
    assert contexts["distillation"].name == "imdb-unlabelled"
    # train/accuracy counts the labelled rows only: a fraction of 20.
    accuracy = metrics["train/accuracy"]
    assert abs(accuracy * 20 - round(accuracy * 20)) < 1e-6
