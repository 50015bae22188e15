"""egnn_com: centre-of-mass graph regression with a GCN baseline and an E(n)-equivariant EGNN (PyG).

Entry points: `python -m egnn_com.train`, `.evaluate`, `.predict`, `.prepare`, `.synthetic`, `.bench`; from
Python, `egnn_com.trainer.Trainer(...).fit(CentreOfMassModule(...), train_loader, val_loader)`. See README.md.
"""

import warnings

# torch_geometric's import calls torch.jit.script, which torch 2.9+ flags as deprecated on every run; the
# warning is about PyG's internals, not anything a user of this package can act on.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

__version__ = "0.1.0"
