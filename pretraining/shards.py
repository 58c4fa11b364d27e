"""Sharded pretraining sources with O(1) work per sample: WebDataset tar shards and plain-text shards.

Why an index and not a stream: fairseq's epoch iterator stores its position (``iterations_in_epoch``)
in the checkpoint and asks the dataset for items by index, so an index -> sample map that is a pure
function of (seed, epoch, index) resumes exactly, for any number of ranks and loader workers, with the
stream position inside fairseq's own checkpoint. Streaming readers (``webdataset`` pipelines, MosaicML
``streaming``) resume by replaying or by owning the data loader instead; see docs/pretraining.md.

The pieces:

- :class:`BlockOrder`: the epoch order over ``n`` items without an ``n``-sized permutation: blocks (a
  shard, or 4096 in-memory records) visited in shuffled order (or drawn with replacement), items shuffled
  inside a block. Memory O(n / block + block), work O(1) per item; consecutive indices stay in one block,
  so a loader worker opens each shard once.
- :class:`TarShardIndex`: the members of one tar shard (``KEY.jpg`` + ``KEY.txt`` / ``KEY.json``, the
  layout img2dataset writes) as offset arrays, built by one header scan when a worker first opens the
  shard. Members with unsafe names (absolute, ``..``) or of other types than regular files are refused,
  members over ``max_member_bytes`` are refused, a truncated tail is cut off; each is counted.
- :class:`ShardSet`: brace-expanded shard names (local paths or fsspec URLs) with a nominal number of
  samples per shard; index ``shard * samples_per_shard + position`` -> bytes of one sample. A shorter
  shard repeats its members (counted); a missing shard is an error unless ``missing="skip"``.
"""
from __future__ import annotations

import collections
import dataclasses
import io
import json
import os
import posixpath
import tarfile
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from beit3_plugins.data.readers import IMAGE_EXTENSIONS, SkipCounter

__all__ = ["BlockOrder", "ShardLimits", "TarShardIndex", "TextShardIndex", "ShardSet", "expand_shards",
           "is_shard_spec", "MissingShardError", "SKIP_REASONS", "PackedStrings", "caption_of"]

TEXT_EXTENSIONS = ("txt",)
# every reason a pretraining source counts (fixed, so every rank logs the same keys)
SKIP_REASONS = ("corrupt_image", "decompression_bomb", "missing_image", "missing_caption", "empty_text", "truncated_text", "truncated_tar",
                "unreadable_shard", "missing_shard", "unsafe_member", "oversized_member", "oversized_shard",
                "repeated_in_short_shard")
JSON_EXTENSIONS = ("json",)


class MissingShardError(FileNotFoundError):
    """A configured shard does not exist (set missing shards to ``skip`` to count it instead)."""


# ---------------------------------------------------------------------------------------------- order
class BlockOrder:
    """Epoch order over ``n`` items in blocks of ``block``: shuffled block order, shuffled within a block.

    ``position(k)`` is a pure function of (seed, stream, epoch, k). ``resample=True`` draws each block slot
    with replacement (many-node runs that should not coordinate a global shard order).
    """

    def __init__(self, n: int, block: int, seed: int, stream: int, shuffle: bool = True,
                 resample: bool = False, cache_blocks: int = 4) -> None:
        if n <= 0 or block <= 0:
            raise ValueError(f"BlockOrder needs n > 0 and block > 0, got n={n}, block={block}")
        self.n, self.block, self.seed, self.stream = int(n), int(block), int(seed), int(stream)
        self.shuffle, self.resample = shuffle, resample
        self.num_blocks = -(-self.n // self.block)
        self.full_blocks = self.n // self.block       # a partial last block keeps the last slot
        self.cache_blocks = cache_blocks
        self.epoch = None
        self.set_epoch(1)

    def set_epoch(self, epoch: int) -> None:
        if epoch == self.epoch:
            return
        self.epoch = int(epoch)
        self._inner: "collections.OrderedDict[int, np.ndarray]" = collections.OrderedDict()
        if self.shuffle and not self.resample:
            rng = np.random.default_rng([self.seed, self.stream, self.epoch, 0])
            self._blocks = rng.permutation(self.full_blocks).astype(np.int64)
        else:
            self._blocks = None

    def block_at(self, slot: int) -> int:
        if not self.shuffle or slot >= self.full_blocks:
            return slot
        if self.resample:
            return int(np.random.default_rng([self.seed, self.stream, self.epoch, 1, slot]).integers(self.full_blocks))
        return int(self._blocks[slot])

    def _within(self, block: int) -> np.ndarray:
        perm = self._inner.get(block)
        if perm is None:
            size = min(self.block, self.n - block * self.block)
            perm = np.random.default_rng([self.seed, self.stream, self.epoch, 2, block]).permutation(size)
            self._inner[block] = perm
            if len(self._inner) > self.cache_blocks:
                self._inner.popitem(last=False)
        return perm

    def position(self, k: int) -> int:
        """Item (in ``0..n-1``) at epoch position ``k`` (taken modulo ``n``)."""
        k = int(k) % self.n
        slot, offset = divmod(k, self.block)
        block = self.block_at(slot)
        size = min(self.block, self.n - block * self.block)
        if not self.shuffle:
            return block * self.block + offset % size
        return block * self.block + int(self._within(block)[offset % size])


# ---------------------------------------------------------------------------------------------- strings
class PackedStrings:
    """Many strings in one utf-8 buffer plus an offset array: two numpy objects instead of one Python
    object per record, so forked loader workers share the pages instead of copying them on refcount."""

    def __init__(self, strings: Sequence[str]) -> None:
        encoded = [s.encode("utf-8") for s in strings]
        self.offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=self.offsets[1:])
        self.buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8) if encoded else np.zeros(0, np.uint8)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> str:
        start, end = self.offsets[index], self.offsets[index + 1]
        return self.buffer[start:end].tobytes().decode("utf-8")


# ---------------------------------------------------------------------------------------------- names
def is_shard_spec(spec: str) -> bool:
    """A data path names shards when it has a brace or glob pattern or ends in ``.tar`` (img2dataset output)."""
    return any(c in spec for c in "{*?") or any(p.strip().endswith(".tar") for p in spec.split(","))


def expand_shards(spec: str, base: str = "") -> List[str]:
    """Comma-separated shard names with brace patterns (``pairs-{00000..01023}.tar``), relative to ``base``
    unless absolute or a URL (``s3://``, ``gs://``, ``https://`` through fsspec). A local name with ``*`` or
    ``?`` is a glob (sorted); one that matches nothing is an error."""
    import glob

    from braceexpand import braceexpand

    names: List[str] = []
    depth, start = 0, 0
    for i, ch in enumerate(spec + ","):     # split on commas outside braces
        depth += (ch == "{") - (ch == "}")
        if ch == "," and depth == 0:
            part = spec[start:i].strip()
            start = i + 1
            if part:
                names.extend(braceexpand(part))
    names = [n if ("://" in n or os.path.isabs(n) or not base) else os.path.join(base, n) for n in names]
    expanded: List[str] = []
    for name in names:
        if "://" not in name and any(c in name for c in "*?"):
            found = sorted(glob.glob(name))
            if not found:
                raise MissingShardError(f"{name}: no shard matches this pattern")
            expanded.extend(found)
        else:
            expanded.append(name)
    return expanded


def _open(name: str):
    if "://" in name:
        import fsspec

        return fsspec.open(name, "rb").open()
    return open(name, "rb")


def _exists(name: str) -> bool:
    if "://" in name:
        import fsspec

        fs, path = fsspec.core.url_to_fs(name)
        return fs.exists(path)
    return os.path.isfile(name)


# ---------------------------------------------------------------------------------------------- indexes
@dataclasses.dataclass(frozen=True)
class ShardLimits:
    """Caps that keep one hostile or broken shard from exhausting memory."""

    max_member_bytes: int = 64 << 20
    max_members: int = 1 << 20


def _safe_member_name(name: str) -> bool:
    if not name or name.startswith("/") or "\\" in name or "\x00" in name:
        return False
    return ".." not in posixpath.normpath(name).split("/") and ".." not in name.split("/")


def _split_key(name: str) -> Tuple[str, str]:
    """WebDataset convention: the key is the path up to the first dot of the basename."""
    directory, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return posixpath.join(directory, stem), ext.lower()


class TarShardIndex:
    """Offsets of the samples of one tar shard: column 0 image, 1 text caption, 2 json (-1 = absent)."""

    COLUMNS = ("image", "text", "json")

    def __init__(self, name: str, skips: SkipCounter, limits: ShardLimits = ShardLimits()) -> None:
        self.name = name
        keys: Dict[str, List[int]] = {}
        rows: List[List[int]] = []
        handle = _open(name)
        try:
            size = handle.seek(0, io.SEEK_END)
            handle.seek(0)
            try:
                with tarfile.open(fileobj=handle, mode="r:") as archive:
                    count = 0
                    while True:
                        try:
                            member = archive.next()
                        except tarfile.ReadError as error:   # garbage after some members: keep what is whole
                            skips.add("truncated_tar", name, error)
                            break
                        if member is None:
                            break
                        count += 1
                        if count > limits.max_members:
                            skips.add("oversized_shard", f"{name}: more than {limits.max_members} members")
                            break
                        if not member.isfile() or not _safe_member_name(member.name):
                            if not member.isdir():
                                skips.add("unsafe_member", f"{name}:{member.name}")
                            continue
                        if member.size > limits.max_member_bytes:
                            skips.add("oversized_member", f"{name}:{member.name} ({member.size} bytes)")
                            continue
                        if member.offset_data + member.size > size:
                            skips.add("truncated_tar", f"{name}:{member.name}")
                            break
                        key, ext = _split_key(member.name)
                        column = (0 if "." + ext in IMAGE_EXTENSIONS else 1 if ext in TEXT_EXTENSIONS
                                  else 2 if ext in JSON_EXTENSIONS else None)
                        if column is None:
                            continue
                        row = keys.get(key)
                        if row is None:
                            row = keys[key] = len(rows)
                            rows.append([-1, -1, -1, 0, 0, 0])
                        rows[row][column], rows[row][3 + column] = member.offset_data, member.size
            except tarfile.ReadError as error:                 # not a tar at all, or cut inside the first header
                skips.add("unreadable_shard", name, error)
        finally:
            handle.close()
        table = np.asarray(rows, dtype=np.int64).reshape(-1, 6)
        self.offsets, self.sizes = table[:, :3], table[:, 3:]
        self.keys = list(keys)
        self._handle = None

    def __len__(self) -> int:
        return len(self.offsets)

    def read(self, row: int, column: int) -> Optional[bytes]:
        offset = int(self.offsets[row, column])
        if offset < 0:
            return None
        if self._handle is None:
            self._handle = _open(self.name)
        self._handle.seek(offset)
        return self._handle.read(int(self.sizes[row, column]))

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


class TextShardIndex:
    """Line offsets of one plain-text shard (non-empty lines only), from one scan when first opened."""

    def __init__(self, name: str, skips: SkipCounter, limits: ShardLimits = ShardLimits()) -> None:
        self.name = name
        starts: List[int] = []
        ends: List[int] = []
        with _open(name) as handle:
            position = 0
            for line in handle:
                stripped = line.rstrip(b"\r\n")
                if len(stripped) > limits.max_member_bytes:
                    skips.add("oversized_member", f"{name}: line at byte {position}")
                elif stripped.strip():
                    starts.append(position)
                    ends.append(position + len(stripped))
                else:
                    skips.add("empty_text", f"{name}: line at byte {position}")
                position += len(line)
        self.starts, self.ends = np.asarray(starts, np.int64), np.asarray(ends, np.int64)
        self._handle = None

    def __len__(self) -> int:
        return len(self.starts)

    def read(self, row: int) -> bytes:
        if self._handle is None:
            self._handle = _open(self.name)
        self._handle.seek(int(self.starts[row]))
        return self._handle.read(int(self.ends[row] - self.starts[row]))

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


# ---------------------------------------------------------------------------------------------- set
class ShardSet:
    """Shards of one data kind, addressed as ``shard * samples_per_shard + position``.

    ``samples_per_shard`` is nominal: by default the size of the first shard (one scan at start-up; no
    other shard is opened before a loader worker needs it). Each worker keeps its two most recent shard
    indexes open.
    """

    def __init__(self, names: Sequence[str], kind: str, skips: SkipCounter, samples_per_shard: int = 0,
                 missing: str = "error", limits: ShardLimits = ShardLimits(), cache: int = 2) -> None:
        if kind not in ("tar", "text"):
            raise ValueError(f"shard kind must be tar or text, got {kind!r}")
        if missing not in ("error", "skip"):
            raise ValueError(f"missing shards must be 'error' or 'skip', got {missing!r}")
        if not names:
            raise ValueError("no shard names")
        self.names, self.kind, self.skips, self.missing, self.limits = list(names), kind, skips, missing, limits
        self._cache: "collections.OrderedDict[int, object]" = collections.OrderedDict()
        self._cache_size = cache
        if missing == "error":
            absent = [n for n in self.names if "://" not in n and not os.path.isfile(n)]  # URLs: when opened
            if absent:
                raise MissingShardError(f"{len(absent)} shard(s) not found, first: {absent[0]} "
                                        f"(pass missing shards = skip to count them instead)")
        if samples_per_shard <= 0:
            samples_per_shard = next((len(self.shard(i)) for i in range(min(len(self.names), 16))
                                      if len(self.shard(i))), 0)
            if samples_per_shard <= 0:
                raise ValueError(f"the first shards ({self.names[0]} ...) hold no usable sample")
        self.samples_per_shard = int(samples_per_shard)

    def __len__(self) -> int:
        return len(self.names) * self.samples_per_shard

    def __getstate__(self):       # loader workers start with no open files
        state = dict(self.__dict__)
        state["_cache"] = collections.OrderedDict()
        return state

    def shard(self, index: int):
        """Index of shard ``index`` (cached); an empty index when missing (skip mode) or unreadable."""
        cached = self._cache.get(index)
        if cached is not None:
            self._cache.move_to_end(index)
            return cached
        name = self.names[index]
        reader = TarShardIndex if self.kind == "tar" else TextShardIndex
        try:
            if not _exists(name):
                if self.missing == "error":
                    raise MissingShardError(f"{name}: shard not found")
                self.skips.add("missing_shard", name)
                built = _EMPTY
            else:
                built = reader(name, self.skips, self.limits)
        except MissingShardError:
            raise
        except (OSError, UnicodeError) as error:
            self.skips.add("unreadable_shard", name, error)
            built = _EMPTY
        self._cache[index] = built
        if len(self._cache) > self._cache_size:
            _, old = self._cache.popitem(last=False)
            old.close()
        return built

    def locate(self, index: int) -> Tuple[object, int]:
        """(shard index, row) of ``index``; a short shard repeats its rows (counted), an empty one gives row -1."""
        shard_no, position = divmod(int(index) % len(self), self.samples_per_shard)
        shard = self.shard(shard_no)
        if len(shard) == 0:
            return shard, -1
        if position >= len(shard):
            self.skips.add("repeated_in_short_shard", self.names[shard_no])
        return shard, position % len(shard)


class _Empty:
    def __len__(self) -> int:
        return 0

    def close(self) -> None:
        pass


_EMPTY = _Empty()


# ---------------------------------------------------------------------------------------------- captions
def caption_of(text: Optional[bytes], meta: Optional[bytes], where: str, skips: SkipCounter) -> Optional[str]:
    """Caption from ``KEY.txt`` or the ``caption`` field of ``KEY.json``; None if missing/empty (counted)."""
    caption = None
    if text is not None:
        caption = text.decode("utf-8", errors="replace")
    elif meta is not None:
        try:
            value = json.loads(meta.decode("utf-8"))
            caption = value.get("caption") if isinstance(value, dict) else None
        except (ValueError, UnicodeError):
            caption = None
    if caption is None:
        skips.add("missing_caption", where)
        return None
    if not str(caption).strip():
        skips.add("empty_text", where)
        return None
    return str(caption).strip()

