"""The start-up check that every rank runs the same job: each rank's configuration (a
small dict: model, widths, batch, seed, crop, precision, data digest, ...) is gathered
and compared with rank 0's; any difference refuses the job on every rank, with what
differs, before a collective of training could mismatch."""
from __future__ import annotations

import hashlib
import json

from .base import Communicator
from .errors import ConfigMismatch, describe_ranks

__all__ = ["check_same_configuration", "digest", "data_digest"]

# manifest keys that differ between copies of the same data prepared on two nodes: when,
# where from (a path), and the checksum of the manifest itself (which covers those)
_VOLATILE = ("created", "time", "seconds", "date", "host", "source", "checksum")


def digest(config: dict) -> str:
    """A short SHA-256 of ``config`` (canonical JSON)."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _stable(value):
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in sorted(value.items())
                if not any(word in k.lower() for word in _VOLATILE)}
    if isinstance(value, (list, tuple)):
        return [_stable(v) for v in value]
    return value


def data_digest(dataset) -> str:
    """The digest of a prepared data set's manifest (settings, classes, image size, splits
    and their shards, the statistics' hashes), leaving out when and from where it was
    prepared."""
    return digest(_stable(dataset.manifest))


def _show(value) -> str:
    return "the default" if value is None else repr(value)


def check_same_configuration(comm: Communicator, config: dict) -> str:
    """Every rank's ``config`` equals rank 0's, or ``ConfigMismatch`` on every rank naming
    the ranks and the keys that differ. Returns the digest."""
    configs = comm.allgather_object(config)
    first = configs[0]
    differing = {}
    for rank, other in enumerate(configs[1:], start=1):
        keys = sorted(k for k in set(first) | set(other) if first.get(k) != other.get(k))
        for k in keys:
            differing.setdefault(k, []).append((rank, other.get(k)))
    if differing:
        parts = []
        for key, values in differing.items():
            shown = "; ".join(f"{describe_ranks([r])} {_show(v)}" for r, v in values)
            parts.append(f"{key}: rank 0 {_show(first.get(key))}, {shown}")
        ranks = sorted({r for values in differing.values() for r, _ in values})
        raise ConfigMismatch(f"{describe_ranks(ranks)} started with a configuration that "
                             f"differs from rank 0's ({' | '.join(parts)}): start every rank "
                             f"with the same options and data")
    return digest(first)
