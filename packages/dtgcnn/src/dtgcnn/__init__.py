"""dtgcnn: Dynamic-Topology GCN (MLX) for 3D-mesh identity embeddings and text triplet embeddings. See README.md.

Importing the package first puts a fast CBLAS under MLX on Linux (see `dtgcnn.blas`) and makes glibc
recycle MLX's large CPU buffers instead of page-faulting fresh ones (see `common.allocator`): both must run
before anything imports `mlx.core`, so keep this module free of mlx imports. The text mode's Python names
(`DTGCNN`, `Trainer`, `TripletDataset`, ...) are loaded on first use (`__getattr__`). `dtgcnn.DTGCNN` is the
text model (`dtgcnn.text_model.TextDTGCNN`); the mesh model stays `dtgcnn.model.DTGCNN`.
"""

from common.allocator import tune_malloc
from dtgcnn.blas import use_fast_blas

__version__ = "0.1.0"

MALLOC = tune_malloc("DTGCNN_MALLOC_TUNING")  # dtgcnn's own opt-out name, as before
BLAS = use_fast_blas()

# guide name -> (module, attribute), imported when first asked for
_GUIDE_NAMES = {
    "DTGCNN": ("dtgcnn.text_model", "TextDTGCNN"),
    "DTGCNNConfig": ("dtgcnn.config", "DTGCNNConfig"),
    "TripletDataset": ("dtgcnn.text_data", "TripletDataset"),
    "create_model": ("dtgcnn.text_trainer", "create_model"),
    "load_text_model": ("dtgcnn.text_trainer", "load_text_model"),
    "load_mlflow_model": ("dtgcnn.mlflow_model", "load_mlflow_model"),
    "Trainer": ("dtgcnn.guide", "Trainer"),
    "AdvancedTrainer": ("dtgcnn.guide", "AdvancedTrainer"),
    "EarlyStopping": ("dtgcnn.guide", "EarlyStopping"),
    "ModelCheckpoint": ("dtgcnn.guide", "ModelCheckpoint"),
    "LearningRateMonitor": ("dtgcnn.guide", "LearningRateMonitor"),
    "TensorboardLogger": ("dtgcnn.guide", "TensorboardLogger"),
    "ProgressiveTrainer": ("dtgcnn.progressive", "ProgressiveTrainer"),
    "CurriculumScheduler": ("dtgcnn.curriculum", "CurriculumScheduler"),
    "MultiTaskDTGCNN": ("dtgcnn.multitask", "MultiTaskDTGCNN"),
    "fit_ensemble": ("dtgcnn.ensemble", "fit_ensemble"),
    "DataPreprocessor": ("dtgcnn.text_prep", "DataPreprocessor"),
    "save_triplets": ("dtgcnn.text_prep", "save_triplets"),
    "load_triplets": ("dtgcnn.text_prep", "load_triplets"),
    "TripletGenerator": ("dtgcnn.triplet_gen", "TripletGenerator"),
    "TripletAugmenter": ("dtgcnn.augment", "TripletAugmenter"),
    "MetricsTracker": ("dtgcnn.monitoring", "MetricsTracker"),
    "DebugCallback": ("dtgcnn.monitoring", "DebugCallback"),
}
__all__ = sorted(_GUIDE_NAMES)


def __getattr__(name: str):
    if name in _GUIDE_NAMES:
        import importlib

        module, attr = _GUIDE_NAMES[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'dtgcnn' has no attribute {name!r}")
