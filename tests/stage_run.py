"""A tiny trial run once per test session, and what each stage read while it ran.

`run_tiny_trial` runs every stage of a tiny project (tests/conftest.py: `make_tiny_project`,
both variants of the repo's params.yaml, each with its one seed) in DAG order in this process
through `ldm.stages.run`, as `ldm <stage>` does (MLflow runs in `mlflow.db`, metrics files, the
report, the registry). The fixtures `tiny_prepared` (validate, prepare, reference) and
`tiny_trial` (the rest, in a copy of it) in tests/conftest.py run it once per session and share
their projects with every test that uses them: read them, or copy them to change them.

While a stage's own function runs (not the runner around it), `Recorder` notes what it reads:
- config keys, as dotted `params.yaml` names: a field read from the Config or any section
  (`cfg.sample.steps`, `cfg.variants[name]`, `cfg.variant(name)`, `cfg.section(name)[key]`);
  a section used whole (`cfg.section(name)` iterated or copied, a section dumped, compared,
  hashed, copied or pickled) counts as all of its keys;
- paths under `data/`, as the stage got them from `Paths`: each such path (and every path
  joined onto it with `/`) counts as read when it is used for anything but joining a child
  onto, so `paths.reference / "val.npz"` reads that one file, while a folder handed to a loader
  reads the folder. Files opened from Rust (safetensors, polars) are seen too: their paths came
  from `Paths`. Not seen: a path built from `paths.root` by hand, or written with `Path(...)`
  around a literal; the stages take every data path from `Paths`.
What a stage writes is recorded as well (a path does not say which way it is used): the check
in tests/test_stage_deps.py allows a stage its own outputs.
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PosixPath
from typing import Any

from pydantic import BaseModel

from ldm.config import Config, Section, load
from ldm.paths import Paths
from ldm.stages import STAGES, stage_names

# The variants of the tiny trial (the repo's params.yaml), in the order its stages run them,
# each trained with the one seed of trial.seeds: its cells are `plain-0` and `aligned-0`.
PLAIN, ALIGNED = "plain", "aligned"
SEED = 0


@dataclass
class StageReads:
    """What one stage run (`encode@plain-0`) read."""

    cfg: Config  # the config it ran with
    keys: set[str] = field(default_factory=set)  # `sample.steps`; a section name: all of it
    paths: set[str] = field(default_factory=set)  # relative to the project root: `data/prepared`


@dataclass
class TinyTrial:
    root: Path
    cfg: Config  # params.yaml of the project
    reads: dict[str, StageReads]  # by run: `validate`, `encode@plain-0`, ...
    seconds: float  # how long the stages took


def key_leaves(values: dict[str, Any], prefix: str = "") -> set[str]:
    """Every leaf key of a config dump: `sample.steps`, `align.phases` (a list is one value)."""
    leaves = set()
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            leaves |= key_leaves(value, name + ".")
        else:
            leaves.add(name)
    return leaves


class Recorder:
    """Notes the keys and paths the stage now running reads (see the module docstring)."""

    active: Recorder | None = None  # the one the patched accessors report to

    def __init__(self, root: Path) -> None:
        self.data = root / "data"
        self.root = root
        self.reads: dict[str, StageReads] = {}
        self.run: str | None = None  # the stage run being watched
        self._owners: dict[int, str] = {}  # id of a config or section -> its dotted key
        self._configs: dict[int, Config] = {}
        self._variants: dict[int, VariantsView] = {}
        self._local = threading.local()  # a paused recorder (while it computes itself)

    def watch(self, cfg: Config) -> None:
        """Record reads of `cfg` and its sections (the object itself: it is not copied)."""
        self._configs[id(cfg)] = cfg
        self._own(cfg, "")

    def _own(self, model: BaseModel, key: str) -> None:
        self._owners[id(model)] = key
        for name, info in type(model).model_fields.items():
            value = model.__dict__[name]
            child = f"{key}.{info.alias or name}".lstrip(".")
            if isinstance(value, BaseModel):
                self._own(value, child)
            elif isinstance(value, dict):  # variants: entry by entry
                for entry, item in value.items():
                    if isinstance(item, BaseModel):
                        self._own(item, f"{child}.{entry}")

    @property
    def paused(self) -> bool:
        return getattr(self._local, "paused", 0) > 0

    @contextmanager
    def pause(self) -> Iterator[None]:
        self._local.paused = getattr(self._local, "paused", 0) + 1
        try:
            yield
        finally:
            self._local.paused -= 1

    def read_key(self, key: str) -> None:
        if self.run is not None and not self.paused:
            self.reads[self.run].keys.add(key)

    def read_path(self, path: str) -> None:
        if self.run is None or self.paused:
            return
        absolute = Path(path)
        if absolute.is_relative_to(self.data):
            self.reads[self.run].paths.add(str(absolute.relative_to(self.root)))

    @contextmanager
    def watching(self, run: str, cfg: Config) -> Iterator[None]:
        self.reads.setdefault(run, StageReads(cfg))
        self.run = run
        try:
            yield
        finally:
            self.run = None

    # What the patched Section.__getattribute__ asks.
    def attribute(self, model: BaseModel, name: str, value: Any) -> Any:
        owner = self._owners.get(id(model))
        if owner is None or self.run is None or self.paused:
            return value
        fields = type(model).model_fields
        if name in fields:
            key = f"{owner}.{fields[name].alias or name}".lstrip(".")
            if id(model) in self._configs and name == "variants":
                if id(model) not in self._variants:
                    self._variants[id(model)] = VariantsView(value, self)
                return self._variants[id(model)]
            if not isinstance(value, BaseModel):  # a nested section notes its own keys
                self.read_key(key)
            return value
        if name in WHOLE:  # the values read past attribute access
            self.read_key(owner)
        elif name == "section" and id(model) in self._configs:
            return self._section_reader(value)
        return value

    def _section_reader(self, method: Callable[[str], dict]) -> Callable[[str], dict]:
        def section(name: str) -> dict:
            with self.pause():
                values = method(name)
            return SectionView(values, name, self)

        return section


# Attributes through which a model's values are read other than one field at a time:
# `__dict__` (==, hash, copy, pickle, repr, iteration) and pydantic's serializer (model_dump).
WHOLE = {"__dict__", "__pydantic_serializer__"}


def _recording_getattribute(self: BaseModel, name: str) -> Any:
    value = object.__getattribute__(self, name)
    recorder = Recorder.active
    return value if recorder is None else recorder.attribute(self, name, value)


def _reads_whole(method: Callable) -> Callable:
    def wrapped(self: SectionView, *args: Any, **kwargs: Any) -> Any:
        self._whole()
        return method(self, *args, **kwargs)

    return wrapped


class SectionView(dict):
    """`cfg.section(name)`: reading one key reads that key; using it whole reads the section."""

    def __init__(self, values: dict, name: str, recorder: Recorder) -> None:
        super().__init__(values)
        self._name, self._recorder = name, recorder

    def _whole(self) -> None:
        self._recorder.read_key(self._name)

    def __getitem__(self, key: str) -> Any:
        self._recorder.read_key(f"{self._name}.{key}")
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self._recorder.read_key(f"{self._name}.{key}")
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        self._recorder.read_key(f"{self._name}.{key}")
        return super().__contains__(key)

    __iter__ = _reads_whole(dict.__iter__)
    __len__ = _reads_whole(dict.__len__)
    __eq__ = _reads_whole(dict.__eq__)
    __ne__ = _reads_whole(dict.__ne__)
    __repr__ = _reads_whole(dict.__repr__)
    __or__ = _reads_whole(dict.__or__)
    __ror__ = _reads_whole(dict.__ror__)
    __reduce_ex__ = _reads_whole(dict.__reduce_ex__)
    keys = _reads_whole(dict.keys)
    values = _reads_whole(dict.values)
    items = _reads_whole(dict.items)
    copy = _reads_whole(dict.copy)
    __hash__ = None  # type: ignore[assignment]


class VariantsView(SectionView):
    """`cfg.variants`: an entry's fields note their own keys as they are read."""

    def __init__(self, variants: dict, recorder: Recorder) -> None:
        super().__init__(variants, "variants", recorder)

    def __getitem__(self, key: str) -> Any:
        return dict.__getitem__(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return dict.get(self, key, default)


class WatchedPath(PosixPath):
    """A data path from `Paths`: reading it (any use but joining a child onto it) notes it."""

    __slots__ = ()

    def __truediv__(self, key: str) -> WatchedPath:
        with _joining():
            return super().__truediv__(key)

    def joinpath(self, *parts: str) -> WatchedPath:
        with _joining():
            return super().joinpath(*parts)

    def __getattribute__(self, name: str) -> Any:
        if name not in JOIN_ONLY and not getattr(_path_state, "busy", 0):
            with _joining():
                built = hasattr(self, "_parts")  # pathlib makes new paths in several steps
                text = PosixPath.__str__(self) if built else None
            if text is not None and Recorder.active is not None:
                Recorder.active.read_path(text)
        return super().__getattribute__(name)


JOIN_ONLY = {"__truediv__", "joinpath", "__class__"}
_path_state = threading.local()


@contextmanager
def _joining() -> Iterator[None]:
    _path_state.busy = getattr(_path_state, "busy", 0) + 1
    try:
        yield
    finally:
        _path_state.busy -= 1


class RecordingPaths(Paths):
    """`Paths` whose data paths are `WatchedPath`s. Only what a stage asks for is one: inside an
    accessor (`tokenizer` uses `checkpoints`) nothing is handed out."""

    def __getattribute__(self, name: str) -> Any:
        accessor = vars(Paths).get(name)
        if name.startswith("_") or not isinstance(accessor, property | Callable):
            return super().__getattribute__(name)
        if isinstance(accessor, property):
            with _inside_paths():
                value = super().__getattribute__(name)
            return _watched(value)
        method = super().__getattribute__(name)

        def accessed(*args: Any, **kwargs: Any) -> Any:
            with _inside_paths():
                value = method(*args, **kwargs)
            return _watched(value)

        return accessed


_paths_state = threading.local()


@contextmanager
def _inside_paths() -> Iterator[None]:
    _paths_state.depth = getattr(_paths_state, "depth", 0) + 1
    try:
        yield
    finally:
        _paths_state.depth -= 1


def _watched(value: Any) -> Any:
    if getattr(_paths_state, "depth", 0) == 0 and isinstance(value, Path):
        with _joining():  # making it is no read
            return WatchedPath(value)
    return value


@contextmanager
def recording(recorder: Recorder) -> Iterator[None]:
    """While open, every stage function runs watched (in `recorder.reads`, by run name)."""
    originals = {}
    for stage, spec in STAGES.items():
        module = importlib.import_module(spec.module)
        originals[spec.module] = (module, spec.name, getattr(module, spec.name))
        setattr(module, spec.name, _watched_stage(stage, getattr(module, spec.name), recorder))
    Section.__getattribute__ = _recording_getattribute
    Recorder.active = recorder
    try:
        yield
    finally:
        Recorder.active = None
        del Section.__getattribute__
        for module, name, function in originals.values():
            setattr(module, name, function)


def _watched_stage(stage: str, function: Callable, recorder: Recorder) -> Callable:
    def watched(cfg: Config, paths: Paths, tracker: Any, *args: str) -> Any:
        run = f"{stage}@{args[0]}" if args else stage
        with recorder.watching(run, cfg):
            return function(cfg, RecordingPaths(paths.root), tracker, *args)

    return watched


def run_tiny_trial(
    root: Path, upto: str | None = None, after: TinyTrial | None = None
) -> TinyTrial:
    """The stage runs of the project at `root` (run from it) in DAG order, each cell's, each
    watched: up to stage `upto` (default: to the end), after those `after` ran (its reads kept).
    """
    from ldm.stages import run

    cfg = after.cfg if after else load(root / "params.yaml")
    order = list(STAGES)
    last = order.index(upto) if upto else len(order)
    done = dict(after.reads) if after else {}
    names = [n for n in stage_names(cfg) if order.index(n.partition("@")[0]) <= last]
    paths, recorder = Paths(root), Recorder(root)
    recorder.reads = dict(done)
    recorder.watch(cfg)
    started = time.perf_counter()
    with recording(recorder):
        for name in names:
            if name not in done:
                stage, _, cell = name.partition("@")
                run(stage, cfg, paths, cell or None)
    seconds = time.perf_counter() - started + (after.seconds if after else 0.0)
    return TinyTrial(root, cfg, recorder.reads, seconds)
