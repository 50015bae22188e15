"""The guide's "Hardware Optimization": which device MLX trains on, how many threads the CPU matmuls use,
and why dtgcnn's loaders keep no pre-allocated batch buffers.

    python examples/hardware_setup.py
    # in a run: the device option, and the BLAS threads from the environment (read at `import dtgcnn`)
    MKL_NUM_THREADS=8 python -m dtgcnn.train --mode triplets --data sentences.csv --device gpu

- Device: `--device auto|cpu|gpu` (config key `device`) goes through `common.devices.mlx_device`: auto is
  the GPU when MLX has one (Metal on Apple silicon, CUDA on Linux builds), else the CPU; a GPU asked for
  where there is none is a clear error. `mx.set_default_device` then puts every array of the run on it.
- Threads: MLX has no thread-count setting (the guide's `set_num_threads`): its GPU schedules itself, and on
  the CPU each MLX op runs on one thread while its float32 matmuls go to BLAS. On Linux `import dtgcnn` puts
  Intel MKL under those matmuls; MKL takes `MKL_NUM_THREADS` (default: the physical cores), set before
  Python starts. The text model's graph is one similarity matmul against its reference bank (BLAS threads);
  the mesh model's k-NN selection and neighbour max run as Numba kernels on `NUMBA_NUM_THREADS` threads
  (default one per core).
- Buffers: MLX arrays live in unified memory (on Apple silicon CPU and GPU share one physical memory), so
  there is no host-to-device copy for a pinned or pre-allocated buffer to hide. A batch is a gather of rows of the encoded table, made once
  into a fresh array; filling a pre-allocated one would be a second copy of the same rows.
"""

import dtgcnn  # isort: skip  (MKL under MLX: import dtgcnn before mlx)
import ctypes
import os
from pathlib import Path

import mlx.core as mx
import numpy as np

from common.devices import describe_device, mlx_device
from common.errors import TrainyardError
from dtgcnn import DTGCNNConfig, TripletDataset
from dtgcnn.cpu_kernels import describe as describe_cpu_kernels
from dtgcnn.synthetic import generate_text
from dtgcnn.trainer import setup_device

# --- device: what a run with device=auto picks, and what asking for a missing GPU says
print("device (auto):", setup_device(DTGCNNConfig(device="auto")))
print("default device now:", mx.default_device())
try:
    print("device (gpu):", describe_device(mlx_device("gpu")))
except TrainyardError as exc:
    print("device (gpu) refused:", exc)

# --- threads: the BLAS under MLX's CPU matmuls and its thread count
print(dtgcnn.BLAS.describe())
if dtgcnn.BLAS.fast and dtgcnn.BLAS.path and "mkl" in Path(dtgcnn.BLAS.path).name:
    mkl = ctypes.CDLL(dtgcnn.BLAS.path)  # already loaded globally by `import dtgcnn`: the same library
    print(
        f"MKL threads: {mkl.MKL_Get_Max_Threads()} "
        f"(MKL_NUM_THREADS={os.environ.get('MKL_NUM_THREADS', 'unset: physical cores')}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}: idle BLAS threads sleep while MLX works)"
    )
print("mesh model's CPU kernels:", describe_cpu_kernels())

# --- buffers: a batch is one gather of encoded rows; nothing to pre-allocate
out = Path("example_outputs/hardware_setup")
data = generate_text(out / "data", num_labels=4, per_label=8, seed=0)
dataset = TripletDataset(data / "sentences.csv", cache_dir=out / "vector_cache")
train_loader, _ = dataset.create_dataloaders(batch_size=8, train_split=0.75)
batch = next(iter(train_loader))
assert np.array_equal(batch.vectors, dataset.vectors[batch.text_ids])  # the batch is these table rows
x = mx.array(batch.vectors)  # the one copy, into unified memory: the GPU reads it where it lies
print(
    f"encoded table {dataset.vectors.shape}; batch {batch.index}: rows {batch.text_ids.tolist()} gathered "
    f"into {tuple(x.shape)} {x.dtype} on {mx.default_device()}; no pre-allocated buffer (unified memory: "
    "no host-to-device copy to overlap)"
)
