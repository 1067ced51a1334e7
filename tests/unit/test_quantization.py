"""DPQ codebooks: encoding rule, prefixes, training behaviour, persistence and input checks."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hotswap.components.compat.metrics import retrieval_metrics
from hotswap.components.core.configs import DPQConfig
from hotswap.components.quant.dpq import CODEBOOKS_FILE, SPEC_FILE, DPQCodebooks
from hotswap.components.quant.dpq_prefix_retrieval import prefix_retrieval
from hotswap.components.quant.dpq_training import class_mean_classifier, train_dpq
from hotswap.components.quant.index import build_flat_index, search

faiss.omp_set_num_threads(1)


def clustered(n: int = 1200, d: int = 16, classes: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit-norm features around class centres, so label structure and geometry both exist."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, d))
    labels = rng.integers(0, classes, size=n)
    x = centres[labels] + 0.9 * rng.standard_normal((n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels.astype(np.int64)


def reference_encode(x: np.ndarray, books: np.ndarray, similarity: str) -> np.ndarray:
    """DPQ's rule written literally: per block, argmax of the similarity on the hard residual."""
    residual = x.astype(np.float64).copy()
    codes = []
    for block in books.astype(np.float64):
        if similarity == "l2":
            s = -((residual[:, None, :] - block[None]) ** 2).sum(-1)
        else:
            s = (
                (residual @ block.T)
                / np.linalg.norm(residual, axis=1)[:, None]
                / np.linalg.norm(block, axis=1)
            )
        idx = s.argmax(axis=1)
        codes.append(idx)
        residual -= block[idx]
    return np.stack(codes, axis=1)


def rel_error(x: np.ndarray, xh: np.ndarray) -> float:
    return float(((x - xh) ** 2).sum() / (x**2).sum())


@pytest.mark.parametrize("similarity", ["l2", "cosine"])
def test_encode_is_greedy_argmax_of_the_similarity_on_hard_residuals(similarity):
    rng = np.random.default_rng(3)
    books = rng.standard_normal((3, 16, 8)).astype(np.float32) * np.array([1, 0.5, 0.3])[:, None, None]
    x = rng.standard_normal((300, 8)).astype(np.float32)
    codebook = DPQCodebooks(books, similarity)
    np.testing.assert_array_equal(codebook.encode(x), reference_encode(x, books, similarity))


def test_cosine_and_l2_rules_pick_different_codewords():
    """Cosine argmax is not the nearest codeword when codeword norms differ (DESIGN.md §6)."""
    books = np.array([[[0.1, 0.0], [3.0, 3.0]]], dtype=np.float32)  # short vs long codeword
    r = np.array([[1.0, 0.6]], dtype=np.float32)
    assert DPQCodebooks(books, "l2").encode(r)[0, 0] == 0  # nearest
    assert DPQCodebooks(books, "cosine").encode(r)[0, 0] == 1  # best angle


def test_prefix_codes_and_prefix_decoding():
    rng = np.random.default_rng(4)
    books = rng.standard_normal((4, 32, 8)).astype(np.float32)
    codebook = DPQCodebooks(books, "l2")
    x = rng.standard_normal((100, 8)).astype(np.float32)
    codes = codebook.encode(x)
    assert codes.dtype == np.uint8 and codes.shape == (100, 4)
    for m in (1, 2, 3):
        np.testing.assert_array_equal(codebook.encode(x, n_blocks=m), codes[:, :m])
        expected = sum(books[level][codes[:, level]] for level in range(m))
        np.testing.assert_allclose(codebook.decode(codes, n_blocks=m), expected, atol=1e-6)
        np.testing.assert_allclose(codebook.decode(codes[:, :m]), expected, atol=1e-6)
        assert codebook.code_bits(m) == 5 * m
    np.testing.assert_allclose(codebook.prefix(2).decode(codes[:, :2]), codebook.decode(codes, 2))


def test_one_training_serves_every_prefix_and_faiss_serves_its_codes():
    x, labels = clustered()
    train, test = x[:900], x[900:]
    config = DPQConfig(n_blocks=4, n_codewords=16, epochs=4, label_weight=0.0, batch_size=128)
    codebook = train_dpq(train, config=config)
    codes = codebook.encode(test)
    errors = [rel_error(test, codebook.decode(codes, m)) for m in range(1, 5)]
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors  # longer code, less error
    assert errors[-1] < 0.6 * errors[0]
    # the trained model's codes served by faiss give DPQ's own scores
    index = build_flat_index(codebook.codebooks, codes, np.arange(len(codes)), n_blocks=2)
    found = search(index, test[:20], k=5)
    direct = test[:20] @ codebook.decode(codes, 2).T
    np.testing.assert_allclose(found.scores, -np.sort(-direct, axis=1)[:, :5], atol=1e-5)
    assert [e["loss"] for e in codebook.history][-1] < codebook.history[0]["loss"]


def test_kmeans_init_beats_random_init_and_reseeding_revives_dead_codewords():
    x, _ = clustered(n=800)
    common = {
        "n_blocks": 2,
        "n_codewords": 32,
        "epochs": 5,
        "label_weight": 0.0,
        "batch_size": 100,
        "lr": 1e-3,
    }
    random_no_reseed = train_dpq(x, config=DPQConfig(init="random", reseed_dead=False, **common))
    random_reseed = train_dpq(x, config=DPQConfig(init="random", reseed_dead=True, **common))
    kmeans = train_dpq(x, config=DPQConfig(init="kmeans", **common))
    # random init with L2 assignment: many codewords never win an item, and without re-seeding
    # they stay dead; k-means init starts with none
    assert random_no_reseed.history[-1]["dead"] >= 10
    assert random_reseed.history[-1]["dead"] <= 2
    assert kmeans.history[0]["dead"] == 0
    errors = {
        name: rel_error(x, cb.decode(cb.encode(x)))
        for name, cb in {"none": random_no_reseed, "reseed": random_reseed, "kmeans": kmeans}.items()
    }
    assert errors["kmeans"] < errors["reseed"] < errors["none"], errors


def test_label_guidance_lowers_the_classification_loss_over_the_prefixes():
    """The label term makes the served (hard) reconstructions easier for the head to classify.

    On real features this is what lifts 8/16-bit label mAP (bench/results/quant.md); on toy
    Gaussian clusters the mAP effect is nil, so the test checks the term's own target.
    """
    x, labels = clustered(n=900, classes=8, seed=5)
    head = class_mean_classifier(x, labels, scale=16.0)
    common = {"n_blocks": 2, "n_codewords": 16, "epochs": 10, "batch_size": 128, "lr": 1e-3}
    plain = train_dpq(x, labels, config=DPQConfig(label_weight=0.0, **common))
    guided = train_dpq(x, labels, config=DPQConfig(label_weight=3.0, **common))

    def cross_entropy(cb: DPQCodebooks, m: int) -> float:
        with torch.no_grad():
            logits = head(torch.from_numpy(cb.decode(cb.encode(x), n_blocks=m)))
        return float(F.cross_entropy(logits, torch.from_numpy(labels)))

    # the term is the mean over prefixes; single prefixes may trade against each other
    mean_ce = {
        name: np.mean([cross_entropy(cb, m) for m in (1, 2)]) for name, cb in (("p", plain), ("g", guided))
    }
    assert mean_ce["g"] < 0.95 * mean_ce["p"], mean_ce
    assert "label" not in plain.history[-1]
    assert guided.history[-1]["label"] < guided.history[0]["label"]


def test_a_given_classifier_is_used_frozen_and_left_untouched():
    x, labels = clustered(n=400, classes=4)
    head = torch.nn.Linear(16, 4)
    before = {k: v.clone() for k, v in head.state_dict().items()}
    train_dpq(x, labels, head, DPQConfig(n_blocks=1, n_codewords=16, epochs=1, label_weight=1.0))
    for key, value in head.state_dict().items():
        assert torch.equal(value, before[key])
    assert all(p.grad is None and p.requires_grad for p in head.parameters())
    # a weight matrix works as a cosine head too
    weights = class_mean_classifier(x, labels, 16.0).weight.detach().numpy()
    cb = train_dpq(x, labels, weights, DPQConfig(n_blocks=1, n_codewords=16, epochs=1, label_weight=1.0))
    assert cb.history[-1]["label"] > 0


def test_save_and_load_round_trip_without_pickle(tmp_path):
    x, _ = clustered(n=300)
    codebook = train_dpq(x, config=DPQConfig(n_blocks=2, n_codewords=16, epochs=1))
    directory = codebook.save(tmp_path / "dpq")
    assert sorted(p.name for p in directory.iterdir()) == sorted([CODEBOOKS_FILE, SPEC_FILE])
    np.load(directory / CODEBOOKS_FILE, allow_pickle=False)  # a plain array, loadable without pickle
    loaded = DPQCodebooks.load(directory)
    np.testing.assert_array_equal(loaded.codebooks, codebook.codebooks)
    assert loaded.config == codebook.config and loaded.similarity == codebook.similarity
    np.testing.assert_array_equal(loaded.encode(x), codebook.encode(x))
    again = DPQCodebooks.from_files(codebook.to_files())
    np.testing.assert_array_equal(again.codebooks, codebook.codebooks)

    files = codebook.to_files()
    files[SPEC_FILE] = files[SPEC_FILE].replace(b'"n_blocks": 2', b'"n_blocks": 3')
    with pytest.raises(ValueError, match="shape"):
        DPQCodebooks.from_files(files)
    with pytest.raises(ValueError, match="missing"):
        DPQCodebooks.load(tmp_path / "nowhere")


def test_bad_inputs_get_clear_errors():
    x, labels = clustered(n=300)
    config = DPQConfig(n_blocks=1, n_codewords=16, epochs=1)
    with pytest.raises(ValueError, match="features must be 2-D"):
        train_dpq(x[0], config=config)
    with pytest.raises(ValueError, match="floating"):
        train_dpq(x.astype(np.int32), config=config)
    bad = x.copy()
    bad[3, 1] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        train_dpq(bad, config=config)
    with pytest.raises(ValueError, match="labels must be integers"):
        train_dpq(x, labels[:-1], config=config)
    with pytest.raises(ValueError, match="without labels"):
        train_dpq(x, None, np.ones((4, 16), dtype=np.float32), config)
    with pytest.raises(ValueError, match="at least K = 256"):
        train_dpq(x[:200], config=DPQConfig(n_blocks=1, n_codewords=256))
    with pytest.raises(ValueError, match="power of two"):
        DPQConfig(n_codewords=100)
    codebook = train_dpq(x, config=config)
    with pytest.raises(ValueError, match="dimension 8, the codebooks expect 16"):
        codebook.encode(x[:, :8])
    with pytest.raises(ValueError, match="n_blocks must be between 1 and 1"):
        codebook.encode(x, n_blocks=2)
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 16\)"):
        codebook.decode(np.full((2, 1), 16))


def test_prefix_retrieval_reports_every_code_length():
    x, labels = clustered(n=400)
    codebook = train_dpq(x, labels, config=DPQConfig(n_blocks=3, n_codewords=16, epochs=2))
    report = prefix_retrieval(codebook, x, labels)
    assert list(report) == [4, 8, 12]
    decoded = codebook.decode(codebook.encode(x), n_blocks=2)
    direct = retrieval_metrics(x, labels, decoded, labels, exclude_self=True)
    assert report[8]["map"] == pytest.approx(direct.map)
    assert report[8]["top1"] == pytest.approx(direct.top1)
    errors = [report[bits]["rel_error"] for bits in (4, 8, 12)]
    assert errors == sorted(errors, reverse=True)
