"""`TensorBoardTracker`: scalars, params (text table + HParams) and image artifacts as TensorBoard events.

Written with the `tensorboard` package's own event writer and summary builders, not torch's SummaryWriter:
torch.utils.tensorboard is a wrapper around this same writer, and going through it would import torch into
dtgcnn, which must never import torch. The `tensorboard` package needs neither torch nor TensorFlow here.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from common.trackers.base import flatten_params

_log = logging.getLogger("trainyard.trackers")
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


class TensorBoardTracker:
    """Writes `log_dir/events.out.tfevents.*`; view with `tensorboard --logdir <log_dir>`."""

    def __init__(self, log_dir: str | Path, *, purge_step: int | None = None, flush_secs: int = 30) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._event, self._summary = event_pb2, summary_pb2
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._writer = EventFileWriter(str(self.log_dir), flush_secs=flush_secs)
        if purge_step is not None:
            # A session START at step s makes TensorBoard drop the events this log folder already holds at
            # steps >= s: a resumed run's replayed steps are not shown twice (what SummaryWriter does too).
            self._write(
                event_pb2.Event(
                    step=purge_step, session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)
                )
            )

    def log_params(self, params: dict) -> None:
        from tensorboard.plugins.hparams.summary_v2 import hparams_pb
        from tensorboard.plugins.text.summary_v2 import text_pb

        flat = flatten_params(params)
        rows = "\n".join(f"| {key} | {_cell(value)} |" for key, value in flat.items())
        self._write_summary(text_pb("params", "| parameter | value |\n|---|---|\n" + rows), step=0)
        # The HParams dashboard takes bool/int/float/str values only; anything else is shown as its text.
        values = {k: v if isinstance(v, bool | int | float | str) else str(v) for k, v in flat.items()}
        self._write_summary(hparams_pb(values), step=0)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        Value = self._summary.Summary.Value  # noqa: N806 (a protobuf class)
        values = [Value(tag=name, simple_value=float(value)) for name, value in metrics.items()]
        self._write_summary(self._summary.Summary(value=values), step=int(step))

    def log_artifact(self, path: str | Path, name: str | None = None) -> None:
        """Images (PNG/JPEG plots) go to the Images tab; TensorBoard has no store for other files."""
        path = Path(path)
        if path.suffix.lower() not in _IMAGE_SUFFIXES:
            _log.debug("TensorBoard keeps no files; artifact %s left in the run folder only", path)
            return
        from matplotlib.image import imread

        shape = imread(path).shape  # [H, W] or [H, W, C]: only the size is needed, the file goes in as is
        image = self._summary.Summary.Image(
            height=shape[0],
            width=shape[1],
            colorspace=shape[2] if len(shape) == 3 else 1,  # 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA
            encoded_image_string=path.read_bytes(),
        )
        value = self._summary.Summary.Value(tag=name or path.stem, image=image)
        self._write_summary(self._summary.Summary(value=[value]), step=0)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    def _write_summary(self, summary, step: int) -> None:
        self._write(self._event.Event(step=step, summary=summary))

    def _write(self, event) -> None:
        event.wall_time = time.time()
        self._writer.add_event(event)


def _cell(value: object) -> str:
    """A markdown-table cell: pipes escaped so a value cannot break the table."""
    return str(value).replace("|", "\\|").replace("\n", " ")
