"""The whole pipeline in one thread: the library entry point and the file pipeline.

File inputs are complete, so the file pipeline always applies the catch-up rule; its
output is the reference every other way of running unifeed must reproduce.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import itertools
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final, Protocol, cast

from unifeed.core.combine import DEFAULT_REALTIME_THRESHOLD_MS, Emitted
from unifeed.core.errors import ConfigError, UnifeedError
from unifeed.core.mapping import encode_mapping
from unifeed.core.records import CONTROLSTREAM, MAPPINGSTREAM, SURFACESTREAM, Keepalive, Mapping
from unifeed.core.stages import (
    AnnotateStage,
    ControlIntake,
    DeadLetter,
    FeedIntake,
    Where,
    WriterStage,
)

#: A clock for complete inputs: every candidate is in catch-up, whatever the wall clock.
CATCHUP_CLOCK: Final = lambda: 2**62  # noqa: E731
_CHUNK: Final = 4096


@dataclass
class UnifyStats:
    """Counters of one run (per feed: accepted, dead letters)."""

    accepted: dict[str, int] = field(default_factory=dict)
    dead_letters: dict[str, int] = field(default_factory=dict)
    output: int = 0
    annotated: int = 0
    unmapped: int = 0
    late: int = 0
    mappings: int = 0


class Unifier:
    """Every stage of the pipeline, driven by one caller (no threads, no I/O).

    >>> u = Unifier(clock=CATCHUP_CLOCK)
    >>> u.feed(CONTROLSTREAM, [(1, b'{"type":"power_on","pitr":10,"id":"F1",'
    ...                          b'"surface_id":"S1","facility":"KSFO"}')])
    >>> u.feed(SURFACESTREAM, [(1, b'{"type":"ground_position","pitr":10,"surface_id":"S1",'
    ...                          b'"facility":"KSFO","clock":9,"lat":1,"lon":2}')])
    >>> u.close(CONTROLSTREAM); u.close(SURFACESTREAM)
    >>> for line in u.drain(): print(line.decode())
    {"type":"power_on","pitr":10,"id":"F1","surface_id":"S1","facility":"KSFO"}
    {"type":"ground_position","pitr":10,"surface_id":"S1","facility":"KSFO","clock":9,"lat":1,"lon":2,"id":"F1","access":"public"}
    """

    def __init__(
        self,
        *,
        derive_mappings: bool = True,
        where: Where = "line",
        realtime_threshold_ms: int = DEFAULT_REALTIME_THRESHOLD_MS,
        clock: Callable[[], int] | None = None,
        strict_order: bool = False,
        link_ttl_ms: int | None = None,
        capacity: int = 1_000_000,
    ) -> None:
        kw = {} if link_ttl_ms is None else {"link_ttl_ms": link_ttl_ms}
        self.control = ControlIntake(where=where, derive=derive_mappings)
        self.surface = FeedIntake(SURFACESTREAM, where=where)
        self.mapping = None if derive_mappings else FeedIntake(MAPPINGSTREAM, where=where)
        self.annotate = AnnotateStage(
            realtime_threshold_ms=realtime_threshold_ms,
            clock=clock,
            strict_order=strict_order,
            capacity=capacity,
            **kw,
        )
        self.writer = WriterStage(
            realtime_threshold_ms=realtime_threshold_ms,
            clock=clock,
            strict_order=strict_order,
            capacity=capacity,
        )
        self.dead_letters: list[DeadLetter] = []
        self.mappings_out: list[Mapping | Keepalive] | None = None
        self.output_count = 0

    def intake(self, feed: str) -> FeedIntake:
        if feed == CONTROLSTREAM:
            return self.control
        if feed == SURFACESTREAM:
            return self.surface
        if feed == MAPPINGSTREAM and self.mapping is not None:
            return self.mapping
        raise ValueError(f"no {feed} input in this pipeline")

    def feed(self, feed: str, batch: Iterable[tuple[int, bytes]]) -> None:
        """Give the pipeline a batch of ``(line or offset, raw message)`` of one feed."""
        good, dead = self.intake(feed).process(batch)
        self.dead_letters.extend(dead)
        if feed == CONTROLSTREAM:
            self.writer.push_control(good)
            mappings = self.control.derive(good)
            if self.mappings_out is not None:
                self.mappings_out.extend(mappings)
            self.annotate.push_mappings(mappings)
        elif feed == SURFACESTREAM:
            self.annotate.push_surface(good)
        else:
            self.annotate.push_mappings([a.rec for a in good])

    def close(self, feed: str) -> None:
        """The feed has ended."""
        if feed == CONTROLSTREAM:
            self.writer.combiner.close(CONTROLSTREAM)
            if self.mapping is None:
                self.annotate.combiner.close(MAPPINGSTREAM)
        elif feed == SURFACESTREAM:
            self.annotate.combiner.close(SURFACESTREAM)
        else:
            self.annotate.combiner.close(MAPPINGSTREAM)

    def drain_emitted(self) -> list[Emitted]:
        annotated = self.annotate.drain()
        if self.annotate.dead:
            self.dead_letters.extend(self.annotate.dead)
            self.annotate.dead.clear()
        writer = self.writer.combiner
        if annotated:
            self.writer.push_annotated(annotated)
        progress = self.annotate.progress()
        if progress is not None:
            writer.advance(SURFACESTREAM, progress)
        if self.annotate.finished() and not writer.is_closed(SURFACESTREAM):
            writer.close(SURFACESTREAM)
        out = self.writer.drain()
        self.output_count += len(out)
        return out

    def drain(self) -> list[bytes]:
        """Every unified-feed message that can be emitted now, in order."""
        return [e.item for e in self.drain_emitted()]

    def stats(self) -> UnifyStats:
        feeds = [self.control, self.surface] + ([self.mapping] if self.mapping else [])
        ann = self.annotate.annotator
        derived = self.control.deriver
        return UnifyStats(
            accepted={i.feed: i.accepted for i in feeds},
            dead_letters={i.feed: i.dead for i in feeds},
            output=self.output_count,
            annotated=ann.annotated,
            unmapped=ann.unmapped,
            late=self.writer.combiner.late,
            mappings=0 if derived is None else derived.stats().links + derived.stats().unlinks,
        )


def numbered(lines: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """``(line number, line)`` for the non-blank lines of a JSON-lines input.

    A line is a message exactly as ``unifeed load`` makes it a Kafka record: without its
    line ending (``\\n`` or ``\\r\\n``), any other spaces or tabs kept, so that a file
    run and a Kafka run of the same lines write the same bytes. A line of nothing but
    whitespace is blank: skipped (line numbers still count it).
    """
    for number, line in enumerate(lines, 1):
        if line.endswith(b"\n"):
            line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
        if line and not line.isspace():
            yield number, line


def _chunks(lines: Iterator[tuple[int, bytes]], size: int) -> Iterator[list[tuple[int, bytes]]]:
    chunk: list[tuple[int, bytes]] = []
    for item in lines:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


_BLOCK: Final = 1 << 20


def _numbered_chunks(lines: Iterable[bytes], size: int) -> Iterator[list[tuple[int, bytes]]]:
    """Chunks of ``(line number, line)`` for the non-blank lines of an input.

    A binary file is read in blocks and split (one call per block, not per line, also
    through gzip); any other iterable of lines is taken as it is.
    """
    read = getattr(lines, "read1", None) or getattr(lines, "read", None)
    if read is None:
        yield from _chunks(numbered(lines), size)
        return
    number = 1
    rest = b""
    while True:
        block = read(_BLOCK)
        if not block:
            break
        parts = (rest + block).split(b"\n")
        rest = parts.pop()
        if b"\r" in block:
            # A "\r\n" line ending: the "\r" goes with it (as in `numbered`).
            parts = [p[:-1] if p[-1:] == b"\r" else p for p in parts]
        found = [(n, s) for n, s in zip(itertools.count(number), parts) if s and not s.isspace()]
        number += len(parts)
        if found:
            yield found
    if rest and not rest.isspace():
        yield [(number, rest)]


class FilePipeline(Protocol):
    """What `run_files` drives: a `Unifier` (the unified feed) or a `Merger` (merge)."""

    #: Refused input messages not yet written (the driver writes and clears them).
    dead_letters: list[DeadLetter]

    def intake(self, feed: str) -> FeedIntake: ...

    def feed(self, feed: str, batch: Iterable[tuple[int, bytes]]) -> None: ...

    def close(self, feed: str) -> None: ...

    def drain(self) -> list[bytes]: ...


def run_files(
    pipeline: FilePipeline,
    inputs: dict[str, Iterable[bytes]],
    emit: Callable[[list[bytes]], None],
    *,
    chunk: int = _CHUNK,
) -> None:
    """Drive ``pipeline`` over complete inputs, reading next from the feed that lags most
    (on a tie, the one given first).

    Memory stays bounded by the chunk size and the feeds' skew, not by their length. The
    output does not depend on the reading order (the combining rule holds back what
    another feed may still precede), only the memory does.
    """
    readers = {feed: _numbered_chunks(lines, chunk) for feed, lines in inputs.items()}
    rank = {feed: i for i, feed in enumerate(inputs)}
    while readers:
        feed = min(readers, key=lambda f: (pipeline.intake(f).floor, rank[f]))
        batch = next(readers[feed], None)
        if batch is None:
            del readers[feed]
            pipeline.close(feed)
        else:
            pipeline.feed(feed, batch)
        out = pipeline.drain()
        if out:
            emit(out)
    out = pipeline.drain()
    if out:
        emit(out)


#: The unified feed's file pipeline is the one file driver.
run_unifier: Final = run_files


def unify_lines(
    control: Iterable[bytes],
    surface: Iterable[bytes],
    mapping: Iterable[bytes] | None = None,
    **options: object,
) -> tuple[list[bytes], Unifier]:
    """The unified feed of complete JSON-lines inputs, and the unifier (for its stats and
    dead letters)."""
    unifier = Unifier(derive_mappings=mapping is None, clock=CATCHUP_CLOCK, **options)  # type: ignore[arg-type]
    inputs: dict[str, Iterable[bytes]] = {CONTROLSTREAM: control, SURFACESTREAM: surface}
    if mapping is not None:
        inputs[MAPPINGSTREAM] = mapping
    output: list[bytes] = []
    run_files(unifier, inputs, output.extend)
    return output, unifier


def iter_mapping_lines(
    control: Iterable[bytes],
) -> Iterator[tuple[list[bytes], list[DeadLetter]]]:
    """mappingstream of a complete controlstream, chunk by chunk, with dead letters."""
    intake = ControlIntake()
    for batch in _numbered_chunks(control, _CHUNK):
        good, bad = intake.process(batch)
        yield [encode_mapping(m) for m in intake.derive(good)], bad


def derive_mapping_lines(control: Iterable[bytes]) -> tuple[list[bytes], list[DeadLetter]]:
    """mappingstream of a complete controlstream, and its dead letters."""
    out: list[bytes] = []
    dead: list[DeadLetter] = []
    for lines, bad in iter_mapping_lines(control):
        out.extend(lines)
        dead.extend(bad)
    return out, dead


def stdin_bytes() -> IO[bytes]:
    """Standard input as bytes; `ConfigError` when the process has none (closed)."""
    if sys.stdin is None:
        raise ConfigError("standard input is closed; give a file instead of -")
    return sys.stdin.buffer


def stdout_bytes() -> IO[bytes]:
    """Standard output as bytes; `ConfigError` when the process has none (closed)."""
    if sys.stdout is None:
        raise ConfigError("standard output is closed; give a file instead of -")
    return sys.stdout.buffer


#: The first two bytes of every gzip member (RFC 1952).
GZIP_MAGIC: Final = b"\x1f\x8b"


class _GzipInput(io.BufferedIOBase):
    """A gzip stream whose broken archive is a `ConfigError` (exit 2, one line) naming the
    input, never a traceback: truncated, a bad CRC, garbage after the magic bytes."""

    def __init__(self, raw: IO[bytes], name: str) -> None:
        super().__init__()
        self._gzip = gzip.GzipFile(fileobj=raw, mode="rb")
        self._name = name

    def _guard(self, call: Callable[[], bytes]) -> bytes:
        try:
            return call()
        except (OSError, EOFError, zlib.error) as exc:
            raise ConfigError(f"{self._name} is not a valid gzip archive: {exc}") from None

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        return self._guard(lambda: self._gzip.read(-1 if size is None else size))

    def read1(self, size: int = -1) -> bytes:
        return self._guard(lambda: self._gzip.read1(size))

    def readline(self, size: int | None = -1) -> bytes:
        return self._guard(lambda: self._gzip.readline(-1 if size is None else size))

    def seekable(self) -> bool:
        return self._gzip.seekable()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._gzip.seek(offset, whence)

    def close(self) -> None:
        self._gzip.close()
        super().close()


def decompressed(raw: IO[bytes], name: str) -> IO[bytes]:
    """``raw`` itself, or its decompressed content when it starts with gzip's magic bytes
    (whatever its name; stdin too). ``raw`` must be seekable or have ``peek``."""
    peek = getattr(raw, "peek", None)
    if peek is not None:
        head = peek(2)[:2]
    else:
        head = raw.read(2)
        raw.seek(-len(head), io.SEEK_CUR)
    return cast(IO[bytes], _GzipInput(raw, name)) if head == GZIP_MAGIC else raw


@contextlib.contextmanager
def open_input(path: str) -> Iterator[Iterable[bytes]]:
    """A JSON-lines input path (``-`` = stdin), read as bytes; gzip (recognised by its
    magic bytes, not its name) is decompressed, and a corrupt archive is a `ConfigError`."""
    if path == "-":
        yield decompressed(stdin_bytes(), "stdin")
        return
    try:
        f: IO[bytes] = open(path, "rb")  # noqa: SIM115
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    with f:
        yield decompressed(f, path)


@contextlib.contextmanager
def open_output(path: str) -> Iterator[IO[bytes]]:
    """A JSON-lines output path (``-`` = stdout), written as bytes; gzip for a ``.gz`` name."""
    if path == "-":
        out = stdout_bytes()
        yield out
        out.flush()
        return
    target = Path(path)
    try:
        f = open(target, "wb")  # noqa: SIM115
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with f:
            if path.endswith(".gz"):
                # No name and no time in the header: equal output, equal bytes.
                with gzip.GzipFile(filename="", mode="wb", fileobj=f, compresslevel=6,
                                   mtime=0) as zipped:  # fmt: skip
                    yield zipped  # type: ignore[misc]
            else:
                yield f
    except OSError as exc:
        raise UnifeedError(f"cannot write {path}: {exc.strerror or exc}") from None
