"""The guide's "Graph Construction Optimization": the cosine k-NN graph built with top-k instead of a full
sort, and its adjacency as a sparse edge list.

    python examples/graph_construction.py
    # the graph's keys in a run:
    python -m dtgcnn.train --mode triplets --data sentences.csv graph_k_neighbors=10 \
        graph_similarity_threshold=0.1 graph_bank_size=256

The text model builds its graph in `DTGCNN.adjacency(nodes)` (text_model.py): the cosine similarity of every
node to the `graph_bank_size` texts of its reference bank (one matmul), the k-th largest similarity of each
row by `mx.topk` (a partial selection, not a sort), and an edge to every bank text at least that similar and
at least `graph_similarity_threshold`. Here that graph, on real encoded sentences, is checked against a full
sort, and top-k is timed against a sort.

MLX has no sparse arrays (the guide's `mx.sparse.coo_matrix` does not exist), and the model does not need
them: its graph is [batch + bank, bank] against a bank of fixed size, so it grows with the batch only, and
the neighbour mean is one dense matmul, which BLAS and the GPU run at full speed. The sparse edge list below
is for looking at or exporting the graph (SciPy's COO matrix gives the same neighbour sums).
"""

import dtgcnn  # noqa: F401  # isort: skip  (MKL under MLX: import dtgcnn before mlx)
import time

import mlx.core as mx
import numpy as np
import scipy.sparse

from dtgcnn import DTGCNN
from dtgcnn.encoders import get_encoder
from dtgcnn.textsets import load_text_set

K, THRESHOLD, BANK = 5, 0.1, 64

# --- the model's graph on real sentences (Home Assistant voice commands, hashing vectors)
sentences, _ = load_text_set("ha-intents-en", max_per_label=4)
vectors = get_encoder("hashing").encode(sentences)  # [N, 512], unit rows
model = DTGCNN(
    input_dim=vectors.shape[1],
    graph_k_neighbors=K,
    graph_similarity_threshold=THRESHOLD,
    graph_bank_size=BANK,
)
model.set_bank(vectors[:BANK])  # the reference bank: the first BANK sentences
queries = vectors[BANK:]
nodes = mx.concatenate([model.bank, mx.array(queries)], axis=0)  # bank rows first, as the forward pass does
adjacency = np.array(model.adjacency(nodes))  # [BANK + queries, BANK] 0/1

# --- the same graph by brute force: a full sort of every row's cosine similarities
unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
similarity = np.concatenate([unit[:BANK], unit[BANK:]]) @ unit[:BANK].T  # float64 here, float32 in the model
np.fill_diagonal(similarity[:BANK], -np.inf)  # a bank text is not its own neighbour
order = np.argsort(-similarity, axis=1, kind="stable")[:, :K]
expected = np.zeros_like(adjacency)
rows = np.arange(len(similarity))[:, None]
expected[rows, order] = similarity[rows, order] >= THRESHOLD
assert np.array_equal(adjacency, expected), "the model's top-k graph differs from the full sort"
degrees = adjacency.sum(axis=1)
print(
    f"{len(sentences)} sentences, bank {BANK}, k={K}, threshold {THRESHOLD}: the model's graph equals the "
    f"full sort's ({int(adjacency.sum())} edges; {int((degrees < K).sum())} nodes keep fewer than k above "
    f"the threshold)"
)
node = BANK  # the first sentence outside the bank and its neighbours
print(f"  {sentences[node]!r} -> {[sentences[j] for j in np.flatnonzero(adjacency[node])]}")

# --- sparse adjacency: an edge list (COO), and the neighbour sums it gives
source, target = np.nonzero(adjacency)
coo = scipy.sparse.coo_array((np.ones(len(source), np.float32), (source, target)), shape=adjacency.shape)
features = np.random.default_rng(0).standard_normal((BANK, 8)).astype(np.float32)
assert np.allclose(coo @ features, np.array(mx.array(adjacency) @ mx.array(features)), atol=1e-5)
print(
    f"sparse form: {coo.nnz} (row, col) pairs, {coo.nnz / adjacency.size:.1%} of the dense "
    f"{adjacency.shape[0]} x {adjacency.shape[1]}; the same neighbour sums as the dense matmul"
)

# --- top-k vs a full sort on a larger random set
rng = np.random.default_rng(0)
a, b = (rng.standard_normal((n, 64)).astype(np.float32) for n in (512, 4096))
sim = mx.array(a) @ mx.array(b).T
mx.eval(sim)


def seconds(fn) -> float:
    """Best of 2 evaluated runs (MLX is lazy: time the work, not the graph building)."""
    times = []
    for _ in range(2):
        start = time.perf_counter()
        mx.eval(fn())
        times.append(time.perf_counter() - start)
    return min(times)


top = lambda: mx.topk(sim, K, axis=1)  # noqa: E731  values only: all the model needs is the k-th
by_sort = lambda: mx.sort(sim, axis=1)[:, -K:]  # noqa: E731
# mx.topk returns values, not indices (unlike the guide's `_, indices = mx.topk(...)`); the indices of the
# k largest come from argpartition, also a partial selection
indices = mx.argpartition(-sim, K, axis=1)[:, :K]
assert np.allclose(np.sort(np.array(top()), axis=1), np.array(by_sort()))
assert np.allclose(np.sort(np.take_along_axis(np.array(sim), np.array(indices), 1), 1), np.array(by_sort()))
t_top, t_sort = seconds(top), seconds(by_sort)
print(
    f"k={K} of {b.shape[0]} for {a.shape[0]} rows: mx.topk {t_top * 1e3:.0f} ms, full sort "
    f"{t_sort * 1e3:.0f} ms ({t_sort / t_top:.1f}x), the same values; argpartition gives their indices"
)
