"""A run directory's record of training: ``config.yaml``, ``log.jsonl`` and TensorBoard events.

Only the first process writes. On resume the log (and TensorBoard's events) is cut back to the
checkpoint's step, so that steps trained after it and lost with a kill are not recorded twice.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import yaml

from ..atomic import claim_run_directory, write_text_atomic

log = logging.getLogger(__name__)


class RunLog:
    """``log.jsonl`` (one JSON object per logged step or evaluation) and TensorBoard scalars of a run."""

    def __init__(self, out: str | Path, config: dict[str, Any], step: int) -> None:
        """Claim ``out`` (new, empty, or a run aiayn wrote: never a user's folder), write the run's full
        configuration, and drop what was logged after ``step``, the step training resumes from."""
        self.out = claim_run_directory(out)
        write_text_atomic(self.out / "config.yaml", yaml.safe_dump(config, sort_keys=False))
        self.path = self.out / "log.jsonl"
        if self.path.is_file():
            kept = [line for line in self.path.read_text().splitlines() if _record_step(line) <= step]
            write_text_atomic(self.path, "".join(line + "\n" for line in kept))
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: events at or after it (written before a kill, after the checkpoint) are dropped.
            self.tb = SummaryWriter(str(self.out / "tb"), purge_step=step + 1)
        except ImportError:  # TensorBoard is optional
            log.info("tensorboard is not installed: no TensorBoard events")

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` (with ``kind`` and ``step``) to the log and its numbers to TensorBoard."""
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if k not in ("step", "kind") and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{record['kind']}/{k}", v, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _record_step(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return -1  # a line cut short by a kill: dropped
