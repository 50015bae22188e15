"""dtgcnn: Dynamic-Topology GCN (MLX) for 3D-mesh identity embeddings. See README.md.

Importing the package first puts a fast CBLAS under MLX on Linux (see `dtgcnn.blas`) and makes glibc
recycle MLX's large CPU buffers instead of page-faulting fresh ones (see `dtgcnn.allocator`): both must run
before anything imports `mlx.core`, so keep this module free of mlx imports.
"""

from dtgcnn.allocator import tune_malloc
from dtgcnn.blas import use_fast_blas

__version__ = "0.1.0"

MALLOC = tune_malloc()
BLAS = use_fast_blas()
