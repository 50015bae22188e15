"""Helpers for tests of code built on dtgcnn (the package's own tests use them too).

`TINY_TEXT`: the smallest triplet-text configuration that still trains in a second or two on a CPU (two
narrow GCN layers, a 32-sentence graph bank, no plots), as `DTGCNNConfig(**TINY_TEXT)` or as `key=value`
overrides. Tests change the keys they are about on top of it.
"""

from __future__ import annotations

TINY_TEXT = dict(
    hidden_dims=[32, 16],
    num_gcn_layers=2,
    output_dim=16,
    batch_size=16,
    learning_rate=0.003,
    num_epochs=2,
    warmup_epochs=0,
    graph_bank_size=32,
    graph_k_neighbors=4,
    log_interval=1,
    plot_every=0,
    tsne_plot=False,
    seed=3,
)
