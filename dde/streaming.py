"""Data larger than memory: files read in chunks, statistics in one pass, `tf.data` pipelines.

A *row source* gives the rows of a data set as validated chunks, never all at once:

- `open_rows(path)`: `.npy` (memory-mapped: a chunk is read from disk when used), `.csv` /
  `.txt` (comma-separated, an optional header row of names; read line by line), `.parquet`
  (numeric columns, read by record batch with pyarrow), `.npz` (read whole: a compressed
  archive cannot be mapped);
- `ArraySource(x)`: an array already in memory;
- `source.split(fraction, seed, part, shard, num_shards)`: the training or validation rows,
  chosen by a stable hash of the row index (`row_uniform`): the same rows for the same seed
  on every run, machine and worker, whatever the chunking, without reading the file first;
  `shard` / `num_shards` keep every `num_shards`-th row (one worker's share).

Every chunk is validated like an in-memory array (`dde._validation.check_data`: NaN/inf,
values too large for the dtype, shape, feature count), with messages that name the rows of
the whole file. On top of them:

- `streaming_statistics(source)`: count, mean and covariance in one pass (chunk moments
  merged in float64, Chan et al.), the column ranges and a bounded, deterministic sample of
  rows (bottom-k by another hash) for plots and checks;
- `training_dataset(source, batch_size, seed)`: a shuffled, batched, prefetched, repeating
  `tf.data.Dataset` (chunks in a fresh random order each epoch where the file allows
  random access, rows permuted within a chunk, then a shuffle buffer) — memory bounded by
  the buffer, not the file;
- `evaluation_dataset(source, batch_size)`: the rows in order, batched and prefetched.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import numpy as np

from dde._io import existing_data_file, read_array
from dde._validation import check_data

#: Rows per chunk read from a file (a chunk of 10⁵ rows × 100 features is 80 MB in float64).
DEFAULT_CHUNK_ROWS = 1 << 15
#: Rows in the shuffle buffer of `training_dataset`.
DEFAULT_SHUFFLE_BUFFER = 1 << 16
#: Rows kept by `streaming_statistics` as a sample of the data.
DEFAULT_SAMPLE_ROWS = 10_000
#: File types `open_rows` reads.
SUFFIXES = (".npy", ".npz", ".csv", ".txt", ".parquet")

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def row_uniform(indices, seed: int = 0, salt: int = 0) -> np.ndarray:
    """A number in [0, 1) per row index, a fixed function of (index, seed, salt): the
    SplitMix64 finalizer of the index offset by the seed (a stable hash, the same on every
    platform and run). `split` holds out the rows below the validation fraction."""
    z = np.asarray(indices, dtype=np.uint64).reshape(-1)
    key = np.uint64(((int(seed) * int(_GOLDEN) + int(salt)) * 0xBF58476D1CE4E5B9) % 2**64)
    with np.errstate(over="ignore"):
        z = z * _GOLDEN + key
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


class RowSource:
    """Rows of a data set, read in chunks (see the module docstring). Subclasses implement
    `_raw_chunks(chunk_rows, order)` → (start, array) and set `name`, `num_features`,
    `num_rows` (None when unknown before a pass, as for CSV) and `feature_names`."""

    name: str = "data"
    num_features: int | None = None
    num_rows: int | None = None
    feature_names: list | None = None
    #: Whether chunks can be read in any order (`order=` of `chunks`).
    random_access: bool = False

    def _raw_chunks(self, chunk_rows, order):
        raise NotImplementedError

    def chunks(self, chunk_rows: int = DEFAULT_CHUNK_ROWS, dtype=np.float64,
               n_features: int | None = None, owner: str = "the model", order=None):
        """Yield (start, rows [k, d] of `dtype`), each chunk validated (messages name the
        rows of the whole). order: a permutation of the chunk numbers (random-access
        sources only). n_features: the feature count expected."""
        for start, _, x in self._indexed_chunks(chunk_rows, dtype, n_features, owner, order):
            yield start, x

    def _indexed_chunks(self, chunk_rows, dtype, n_features, owner, order):
        """(start, row indices in the file [k], validated rows [k, d])."""
        if order is not None and not self.random_access:
            raise ValueError(f"{self.name} cannot be read in a random chunk order.")
        for start, raw in self._raw_chunks(int(chunk_rows), order):
            x = check_data(raw, name=self.name, n_features=n_features, owner=owner,
                           dtype=dtype, row_offset=start)
            yield start, np.arange(start, start + len(x), dtype=np.int64), x

    def num_chunks(self, chunk_rows: int) -> int | None:
        if self.num_rows is None:
            return None
        return -(-self.num_rows // int(chunk_rows))

    def split(self, fraction: float, seed: int = 0, part: str = "train", shard: int = 0,
              num_shards: int = 1) -> "SplitSource":
        """The rows of `part` ("train" or "validation", held out with probability
        `fraction` by `row_uniform`), of which every `num_shards`-th (offset `shard`)."""
        return SplitSource(self, fraction, seed, part, shard, num_shards)


class ArraySource(RowSource):
    """An array in memory (or memory-mapped) as a row source."""

    random_access = True

    def __init__(self, x, name: str = "data", feature_names=None,
                 allow_1d_as_column: bool = True):
        arr = np.asarray(x)
        if arr.ndim == 1 and allow_1d_as_column:
            arr = arr[:, None]
        self._x = arr
        self.name = name
        self.num_rows = int(arr.shape[0]) if arr.ndim >= 1 else None
        self.num_features = int(arr.shape[1]) if arr.ndim == 2 else None
        self.feature_names = feature_names

    def _raw_chunks(self, chunk_rows, order):
        x = self._x
        if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
            yield 0, x  # check_data names what is wrong with it
            return
        starts = range(0, len(x), chunk_rows)
        if order is not None:
            starts = [starts[i] for i in order]
        for start in starts:
            yield start, x[start:start + chunk_rows]


class NpySource(ArraySource):
    """A `.npy` file, memory-mapped: only the chunks in use are read into memory."""

    def __init__(self, path, allow_1d_as_column: bool = True):
        path = Path(path)
        try:
            x = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise ValueError(f"Could not read {path}: {err}") from err
        if not isinstance(x, np.ndarray):
            raise ValueError(f"Could not read {path}: not a NumPy array file.")
        if x.ndim == 0 or x.dtype.kind not in "biuf":
            check_data(np.asarray(x), name=f"{path}")  # its TypeError / ValueError
        super().__init__(x, name=str(path), allow_1d_as_column=allow_1d_as_column)


class CsvSource(RowSource):
    """A comma-separated file read line by line (an optional header row of names)."""

    def __init__(self, path):
        self.path = Path(path)
        self.name = str(self.path)
        try:
            with open(self.path, encoding="utf-8") as handle:
                first = handle.readline()
                rest = "" if first.strip() else handle.read(1 << 16)
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"Could not read {self.path}: {err}") from err
        if not first.strip() and not rest.strip():
            raise ValueError(f"{self.path} is empty.")
        cells = [c.strip() for c in first.split(",")]
        try:
            [float(c) for c in cells if c]
            self.header = None
        except ValueError:
            self.header = cells
        self.feature_names = self.header
        self.num_features = len(cells) if self.header is not None else None

    def _parse(self, lines, first_line):
        try:
            return np.loadtxt(lines, delimiter=",", ndmin=2, dtype=np.float64)
        except ValueError:
            pass
        width = None
        for k, line in enumerate(lines):  # find the line to name
            if not line.strip():
                continue
            try:
                row = [float(c) for c in line.split(",")]
            except ValueError as err:
                raise ValueError(f"Could not read {self.path}: line {first_line + k}: "
                                 f"{err}") from None
            if width is not None and len(row) != width:
                raise ValueError(f"Could not read {self.path}: line {first_line + k} has "
                                 f"{len(row)} columns, the lines before it {width}.")
            width = len(row)
        raise ValueError(f"Could not read {self.path}: unreadable lines from line "
                         f"{first_line}.")

    def _raw_chunks(self, chunk_rows, order):
        start, width, line_no = 0, None, 1
        try:
            with open(self.path, encoding="utf-8") as handle:
                if self.header is not None:
                    handle.readline()
                    line_no = 2
                while True:
                    lines = []
                    for line in handle:
                        if line.strip():
                            lines.append(line)
                        elif not lines:
                            line_no += 1
                            continue
                        if len(lines) == chunk_rows:
                            break
                    if not lines:
                        break
                    x = self._parse(lines, line_no)
                    if width is not None and x.shape[1] != width:
                        raise ValueError(f"Could not read {self.path}: the rows from line "
                                         f"{line_no} have {x.shape[1]} columns, those before "
                                         f"them {width}.")
                    width = x.shape[1]
                    line_no += len(lines)
                    yield start, x
                    start += len(x)
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"Could not read {self.path}: {err}") from err
        if start == 0:
            raise ValueError(f"{self.path} holds no data rows.")


class ParquetSource(RowSource):
    """A Parquet file (numeric columns), read by record batch with pyarrow."""

    def __init__(self, path):
        self.path = Path(path)
        self.name = str(self.path)
        try:
            import pyarrow.parquet as pq
        except ImportError as err:  # pragma: no cover (an optional dependency)
            raise ValueError(f"Reading {self.path} needs pyarrow: pip install "
                             "'dde[parquet]'.") from err
        try:
            self._file = pq.ParquetFile(self.path)
        except Exception as err:  # pyarrow's ArrowInvalid, OSError, ...
            raise ValueError(f"Could not read {self.path}: {' '.join(str(err).split())}") \
                from err
        schema = self._file.schema_arrow
        import pyarrow as pa

        for field in schema:
            if not (pa.types.is_integer(field.type) or pa.types.is_floating(field.type)
                    or pa.types.is_boolean(field.type)):
                raise TypeError(f"{self.path}: column '{field.name}' has a non-numeric type "
                                f"({field.type}); expected real numbers.")
        self.feature_names = list(schema.names)
        self.num_features = len(schema.names)
        self.num_rows = int(self._file.metadata.num_rows)

    def _raw_chunks(self, chunk_rows, order):
        start = 0
        try:
            for batch in self._file.iter_batches(batch_size=chunk_rows):
                cols = [np.asarray(batch.column(i).to_numpy(zero_copy_only=False),
                                   dtype=np.float64) for i in range(batch.num_columns)]
                x = np.column_stack(cols) if cols else np.zeros((batch.num_rows, 0))
                yield start, x
                start += len(x)
        except Exception as err:
            if isinstance(err, (ValueError, TypeError)) and self.name in str(err):
                raise
            raise ValueError(f"Could not read {self.path}: {' '.join(str(err).split())}") \
                from err
        if start == 0:
            yield 0, np.zeros((0, self.num_features))


class SplitSource(RowSource):
    """The training or validation rows of a source (see `RowSource.split`)."""

    def __init__(self, source, fraction, seed, part, shard, num_shards):
        if part not in ("train", "validation"):
            raise ValueError(f"part must be 'train' or 'validation', got {part!r}.")
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"The validation fraction must be in [0, 1), got {fraction}.")
        if not 0 <= shard < num_shards:
            raise ValueError(f"shard must be in [0, {num_shards}), got {shard}.")
        self.source, self.fraction, self.seed = source, float(fraction), int(seed)
        self.part, self.shard, self.num_shards = part, int(shard), int(num_shards)
        self.name = source.name
        self.num_features = source.num_features
        self.feature_names = source.feature_names
        self.random_access = source.random_access
        self.num_rows = None  # known after a pass
        #: Rows of the whole source read by the last (complete) pass over this split.
        self.rows_read = 0

    def _keep(self, idx):
        held = row_uniform(idx, self.seed) < self.fraction
        keep = held if self.part == "validation" else ~held
        if self.num_shards > 1:
            keep &= (idx % self.num_shards) == self.shard
        return keep

    def _indexed_chunks(self, chunk_rows, dtype, n_features, owner, order):
        self.rows_read = 0
        for start, idx, x in self.source._indexed_chunks(chunk_rows, dtype, n_features, owner,
                                                         order):
            self.rows_read += len(x)
            keep = self._keep(idx)
            if keep.any():
                yield start, idx[keep], x[keep]

    def num_chunks(self, chunk_rows):
        return self.source.num_chunks(chunk_rows)


def open_rows(path, allow_1d_as_column: bool = True) -> RowSource:
    """The row source of a data file (by its suffix: `SUFFIXES`); ValueError naming the file
    when it is missing, a folder, unreadable or of another type. A 1-D array file is one
    column, unless `allow_1d_as_column` is false (then it is refused)."""
    path = existing_data_file(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return NpySource(path, allow_1d_as_column)
    if suffix in (".csv", ".txt"):
        return CsvSource(path)
    if suffix == ".parquet":
        return ParquetSource(path)
    if suffix == ".npz":
        return ArraySource(read_array(path), name=str(path),
                           allow_1d_as_column=allow_1d_as_column)
    raise ValueError(f"Unsupported data file type '{suffix}' for {path}; use "
                     f"{', '.join(SUFFIXES[:-2] + SUFFIXES[-1:])}.")


# ------------------------------------------------------------------------------ statistics
class DataStatistics(NamedTuple):
    """What one pass over a source gives: the row count, the mean [d] and covariance [d, d]
    (unbiased, float64), the column minima and maxima [d], and a sample of at most
    `sample_size` rows [m, d] (the same rows for the same seed, however the file is read)."""
    count: int
    mean: np.ndarray
    cov: np.ndarray
    minimum: np.ndarray
    maximum: np.ndarray
    sample: np.ndarray


def streaming_statistics(source: RowSource, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                         sample_size: int = DEFAULT_SAMPLE_ROWS, seed: int = 0,
                         dtype=np.float32, n_features: int | None = None, progress=False,
                         owner: str = "the model") -> DataStatistics:
    """Count, mean, covariance, ranges and a row sample of `source` in one pass over its
    chunks (validated as `dtype`: a value too large for float32 is refused here). The
    moments of each chunk are merged into the running ones (Chan, Golub & LeVeque), so the
    result matches the in-memory `x.mean(0)`, `np.cov(x, rowvar=False)` to rounding."""
    from dde.progress import chunks_with_progress

    n, mean, scatter = 0, None, None
    lo = hi = None
    keys, rows = np.empty(0), None
    chunks = source._indexed_chunks(chunk_rows, dtype, n_features, owner, None)
    for _, idx, x in chunks_with_progress(chunks, source.num_rows, "row", progress):
        x = np.asarray(x, dtype=np.float64)
        k = len(x)
        m_b = x.mean(0)
        c = x - m_b
        s_b = c.T @ c
        if n == 0:
            mean, scatter, lo, hi = m_b, s_b, x.min(0), x.max(0)
        else:
            delta = m_b - mean
            total = n + k
            mean = mean + delta * (k / total)
            scatter = scatter + s_b + np.outer(delta, delta) * (n * k / total)
            lo, hi = np.minimum(lo, x.min(0)), np.maximum(hi, x.max(0))
        n += k
        if sample_size > 0:  # bottom-k by a hash of the row's index in the file
            keys = np.concatenate([keys, row_uniform(idx, seed, salt=1)])
            rows = x if rows is None else np.concatenate([rows, x])
            if len(keys) > sample_size:
                best = np.sort(np.argpartition(keys, sample_size - 1)[:sample_size])
                keys, rows = keys[best], rows[best]
    if n == 0:
        raise ValueError(f"{source.name} holds no rows"
                         + (f" in its {source.part} split." if isinstance(source, SplitSource)
                            else "."))
    cov = scatter / (n - 1) if n > 1 else np.zeros_like(scatter)
    sample = rows[np.argsort(keys, kind="stable")] if rows is not None else np.zeros((0,))
    return DataStatistics(n, mean, cov, lo, hi, sample)


# ----------------------------------------------------------------------------- pipelines
def _epoch_order(num_chunks, seed, epoch):
    return np.random.default_rng([int(seed), int(epoch), 7]).permutation(num_chunks)


def training_dataset(source: RowSource, batch_size: int, seed: int = 0,
                     chunk_rows: int = DEFAULT_CHUNK_ROWS,
                     shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER, first_epoch: int = 0,
                     repeat: bool = True, dtype="float32"):
    """A `tf.data.Dataset` of shuffled batches [≤ batch_size, d] of `source`'s rows, epoch
    after epoch (`repeat`; epoch numbers from `first_epoch`, which fix each epoch's order,
    so that a run resumed at epoch k reads what an uninterrupted one would), prefetched.

    Each epoch reads the chunks in a random order (random-access sources; others in file
    order), permutes the rows of each chunk and passes them through a shuffle buffer of
    `shuffle_buffer` rows; an epoch ends with its own last (smaller) batch, so every epoch
    has the same number of batches. Its auto-sharding is off: a worker's share of the rows
    is chosen by `RowSource.split(..., shard=, num_shards=)`."""
    import tensorflow as tf

    d = source.num_features
    if d is None:  # a CSV without a header: from its first chunk
        d = next(iter(source.chunks(min(chunk_rows, 64))))[1].shape[1]
    np_dtype = np.dtype(dtype)
    num_chunks = source.num_chunks(chunk_rows) if source.random_access else None

    def rows_of_epoch(epoch):
        epoch = int(epoch)
        order = _epoch_order(num_chunks, seed, epoch) if num_chunks else None
        for start, x in source.chunks(chunk_rows, dtype=np_dtype, n_features=d, order=order):
            rng = np.random.default_rng([int(seed), epoch, int(start)])
            yield x[rng.permutation(len(x))]

    spec = tf.TensorSpec([None, d], tf.as_dtype(np_dtype))

    def epoch_dataset(epoch):
        rows = tf.data.Dataset.from_generator(rows_of_epoch, args=(epoch,),
                                              output_signature=spec)
        return (rows.unbatch()
                .shuffle(int(shuffle_buffer), seed=int(seed) + 1, reshuffle_each_iteration=True)
                .batch(int(batch_size)))

    last = None if repeat else first_epoch + 1
    epochs = (tf.data.Dataset.range(first_epoch, last) if last is not None
              else tf.data.Dataset.range(first_epoch, 2**62))
    ds = epochs.flat_map(epoch_dataset).prefetch(tf.data.AUTOTUNE)
    return ds.with_options(_unsharded())


def evaluation_dataset(source: RowSource, batch_size: int, chunk_rows=DEFAULT_CHUNK_ROWS,
                       dtype="float32", num_rows: int | None = None):
    """The rows of `source` in order as a finite `tf.data.Dataset` of batches, prefetched
    (validation data; auto-sharding off, as in `training_dataset`). num_rows: the rows it
    holds, when known (the dataset then knows its number of batches)."""
    import tensorflow as tf

    d = source.num_features
    if d is None:
        d = next(iter(source.chunks(min(chunk_rows, 64))))[1].shape[1]
    np_dtype = np.dtype(dtype)

    def rows():
        for _, x in source.chunks(chunk_rows, dtype=np_dtype, n_features=d):
            yield x

    ds = tf.data.Dataset.from_generator(rows, output_signature=tf.TensorSpec(
        [None, d], tf.as_dtype(np_dtype)))
    ds = ds.unbatch().batch(int(batch_size))
    if num_rows is not None:
        ds = ds.apply(tf.data.experimental.assert_cardinality(
            steps_per_epoch(num_rows, batch_size)))
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_unsharded())


def _unsharded():
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = \
        tf.data.experimental.AutoShardPolicy.OFF
    return options


def steps_per_epoch(num_rows: int, batch_size: int) -> int:
    """Batches per epoch of `num_rows` rows (the last one smaller)."""
    return max(1, math.ceil(int(num_rows) / int(batch_size)))
