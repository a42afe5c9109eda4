"""What the web app calls: models built once and shared, per-session workspaces, limits, and
which optional features (swap, LoRA training) this installation has.

A :class:`Services` object is created once per app. Models are loaded lazily, the first time
a request needs them, and never changed by a request afterwards: per-request settings (steps,
guidance, seeds, prompts) travel as call arguments only. Every use of a pipeline or of the
face analyzer happens under its lock, so concurrent requests never interleave inside one
model (diffusers schedulers keep per-call state). Tests inject tiny models through
``pipeline_factory`` and ``analyzer``.

Outputs are written under one temporary root per app (``output_root``); each browser session
gets its own folder there. Gradio's own copies of uploads and outputs live in a second
temporary folder of the app (``gradio_cache``, which :func:`facegen.app.web.app.launch_app` points
Gradio at). When a session ends (the browser tab closes, or an API session's state expires)
its folder, the uploads it received and Gradio's cached copies of its outputs are deleted;
:meth:`Services.close` (at exit, on Ctrl+C, SIGTERM or SIGHUP) deletes both roots (the Gradio
folder once the process's last app closes; a ``GRADIO_TEMP_DIR`` set by the user is used and
left in place, only the session files in it are deleted).
``keep_outputs=True`` keeps the outputs under ``output_root`` instead (uploads and Gradio's
copies are still deleted).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from facegen.pipelines.generation.presets import (
    DEMO_ORL_CONTROLNET_NAME,
    DEMO_ORL_NAME,
    preset_info,
    preset_names,
)
from facegen.validate import check_choice, check_int, check_number

from .trainers import TrainFn, TrainRequest, lora_trainer

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

    from facegen.analyzer import FaceAnalyzer

__all__ = [
    "AppLimits",
    "FeatureStatus",
    "PipelineFactory",
    "Services",
    "SessionState",
    "TrainFn",
    "TrainRequest",
    "default_pipeline_factory",
]

logger = logging.getLogger(__name__)

#: ``(preset, device, dtype) -> pipeline``: builds one generation pipeline.
PipelineFactory = Callable[[str, str, str], "DiffusionPipeline"]


@dataclass(frozen=True)
class AppLimits:
    """What one request may ask for. Uploads above ``max_upload_mb`` and images above
    ``max_pixels`` (checked from the header, before decoding) are refused."""

    max_upload_mb: float = 25.0
    max_pixels: int = 40_000_000
    max_images: int = 8
    max_steps: int = 150
    max_files: int = 16
    max_dataset_identities: int = 32
    max_dataset_images: int = 8
    max_preview_identities: int = 20_000
    max_train_photos: int = 32
    max_train_steps: int = 5000
    max_video_frames: int = 3000

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def __post_init__(self) -> None:
        for name in (
            "max_pixels",
            "max_images",
            "max_steps",
            "max_files",
            "max_dataset_identities",
            "max_dataset_images",
            "max_preview_identities",
            "max_train_photos",
            "max_train_steps",
            "max_video_frames",
        ):
            check_int(getattr(self, name), name, minimum=1)
        check_number(self.max_upload_mb, "max_upload_mb", minimum=0, min_open=True)


@dataclass(frozen=True)
class FeatureStatus:
    """Whether an optional feature can be used here, and what to tell the user if not."""

    available: bool
    message: str = ""


@dataclass
class SessionState:
    """Per-browser-session state (held in ``gr.State``): the session's output folder and a
    counter naming its runs."""

    workspace: str | None = None
    runs: int = 0
    #: files this session uploaded (Gradio's cached copies), deleted with the session
    uploads: list[str] = field(default_factory=list)
    #: jobs of this session running now: the session is not ended under them
    busy: int = 0


@dataclass
class _GradioCache:
    """The process's Gradio cache folder, how many apps use it, and whether we made it."""

    path: Path | None = None
    users: int = 0
    own: bool = False


_cache_lock = threading.Lock()
_cache = _GradioCache()


def _acquire_gradio_cache() -> Path:
    """The process's Gradio cache folder, shared by the apps of this process.

    Gradio reads its cache folder from ``GRADIO_TEMP_DIR`` at every request, so it is one
    folder per process: unless the user set that variable, the first app creates a temporary
    folder, points the variable at it, and the last app to close deletes it."""
    with _cache_lock:
        if _cache.path is None:
            env = os.environ.get("GRADIO_TEMP_DIR")
            if env:
                _cache.path, _cache.own = Path(env).resolve(), False
            else:
                folder = Path(tempfile.mkdtemp(prefix="facegen-app-gradio-")).resolve()
                os.environ["GRADIO_TEMP_DIR"] = str(folder)
                _cache.path, _cache.own = folder, True
        _cache.users += 1
        return _cache.path


def _release_gradio_cache() -> None:
    with _cache_lock:
        _cache.users -= 1
        if _cache.users > 0 or _cache.path is None:
            return
        folder, own = _cache.path, _cache.own
        _cache.path, _cache.own, _cache.users = None, False, 0
        if own:
            shutil.rmtree(folder, ignore_errors=True)
            if os.environ.get("GRADIO_TEMP_DIR") == str(folder):
                del os.environ["GRADIO_TEMP_DIR"]


def default_pipeline_factory(
    preset: str, device: str, dtype: str, *, offline: bool | None = None
) -> DiffusionPipeline:
    """``from_preset(preset)``: real presets find their weights locally or download them
    (never with ``offline=True``), else raise :class:`~facegen.errors.ModelNotAvailableError`
    with instructions."""
    from facegen.pipelines.generation.presets import from_preset

    return from_preset(
        preset, device=device, dtype=dtype, local_files_only=True if offline else None
    )


def _default_analyzer() -> FaceAnalyzer:
    from facegen.analyzer import FaceAnalyzer

    # detection + 68 landmarks (masks, landmark maps) + an identity encoder independent of
    # every conditioning encoder (dlib), all offline
    return FaceAnalyzer.from_names("dlib", "dlib68", "dlib")


def _module_present(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


@dataclass
class _Loaded:
    pipe: DiffusionPipeline
    lock: threading.Lock = field(default_factory=threading.Lock)


class Services:
    """Models, locks, workspaces and feature switches shared by every request.

    ``presets``: the generation presets offered (default: every registered preset).
    ``default_preset``: the preset selected first in the Generate tab (its ControlNet and
    editing counterparts are picked for the other tabs); None: ``arc2face`` when its weights
    are on this machine, else the shipped ``demo-orl`` generator (faces offline). ``swap``: ``None`` detects whether
    :mod:`facegen.pipelines.editing.swap` is installed; ``False`` turns the feature off. ``trainer``:
    the LoRA personalization function (see :data:`TrainFn`); ``None`` uses
    :mod:`facegen.training.diffusion.lora` when it is installed; ``False`` turns training off.
    ``offline``: never download model weights.
    """

    def __init__(
        self,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        default_preset: str | None = None,
        presets: list[str] | None = None,
        pipeline_factory: PipelineFactory | None = None,
        analyzer: FaceAnalyzer | None = None,
        limits: AppLimits | None = None,
        output_root: str | Path | None = None,
        swap: bool | None = None,
        trainer: TrainFn | Literal[False] | None = None,
        offline: bool | None = None,
        keep_outputs: bool = False,
        session_ttl_s: float = 3600.0,
    ) -> None:
        from facegen.pipelines.generation.presets import PRESETS

        known = PRESETS.names()
        self.presets = list(presets) if presets is not None else list(known)
        for name in self.presets:
            check_choice(name, "presets", known)
        if default_preset is None:
            from facegen.pipelines.generation.presets import default_generate_preset

            default_preset = default_generate_preset()
            if default_preset not in self.presets:
                default_preset = self.presets[0]
        check_choice(default_preset, "default_preset", self.presets)
        self.device = device
        self.dtype = dtype
        self.default_preset = default_preset
        self.limits = limits or AppLimits()
        self._factory = pipeline_factory or default_pipeline_factory
        self._analyzer = analyzer
        self._analyzer_lock = threading.RLock()
        self._load_lock = threading.Lock()
        self._pipes: dict[str, _Loaded] = {}
        self._load_errors: dict[str, str] = {}
        self._oneshot_lock = threading.Lock()
        self._oneshot_models: dict[tuple[str, str], Any] = {}  # (kind, name) → ONNX model
        self._swap = swap
        self.offline = offline
        self._train_off = trainer is False
        self.trainer: TrainFn | None = None if trainer is False else trainer
        if trainer is None and _module_present("facegen.training.diffusion.lora"):
            self.trainer = lora_trainer
        self._train_lock = threading.Lock()
        self.session_ttl_s = check_number(session_ttl_s, "session_ttl_s", minimum=0, min_open=True)
        #: how long a closed browser tab's files stay (a sleeping laptop or a flaky network
        #: also closes the connection), and how often a busy session's end is retried
        self.unload_grace_s = 60.0
        self.retry_drop_s = 10.0
        self._live: dict[str, None] = {}  # workspaces of live sessions
        self._hashes: dict[tuple[str, int, int], str] = {}
        self.keep_outputs = bool(keep_outputs)
        if self.keep_outputs and output_root is None:
            raise ValueError("`keep_outputs=True` needs an `output_root` to keep them in")
        self._own_root = output_root is None
        root = Path(output_root) if output_root else Path(tempfile.mkdtemp(prefix="facegen-app-"))
        root.mkdir(parents=True, exist_ok=True)
        self.output_root = root.resolve()
        #: where Gradio keeps its copies of uploads and outputs (see the module docstring)
        self.gradio_cache = _acquire_gradio_cache()
        self._closed = False
        # own temporary folders go away even if close() is never called (at exit, or when
        # this object is collected)
        self._cleanup_cache = weakref.finalize(self, _release_gradio_cache)
        self._cleanup = (
            weakref.finalize(self, shutil.rmtree, str(self.output_root), True)
            if self._own_root
            else None
        )

    def __copy__(self) -> Services:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> Services:
        # shared by every request and never copied: Gradio deep-copies what a session holds,
        # which must not copy the models (a callback bound to this object is copied with it)
        return self

    # -- presets --------------------------------------------------------------------------
    @property
    def generate_presets(self) -> list[str]:
        """Presets that make new images of an identity (no built-in ControlNet, no
        inpainting)."""
        plain = set(preset_names(inpainting=False)) - set(preset_names(controlnet="built-in"))
        return [p for p in self.presets if p in plain]

    @property
    def control_presets(self) -> list[str]:
        """Presets with a ControlNet (pose/expression from a reference photo)."""
        return [p for p in self.presets if p in preset_names(controlnet="built-in")]

    @property
    def edit_presets(self) -> list[str]:
        """Presets that can regenerate faces in a photo (swap, generative anonymization)."""
        return [p for p in self.presets if p in preset_names(edits_photos=True)]

    def preferred(self, choices: list[str], wanted: list[str]) -> str | None:
        """The first of ``wanted`` offered in ``choices``, else the first choice."""
        for w in wanted:
            if w in choices:
                return w
        return choices[0] if choices else None

    @property
    def tiny(self) -> bool:
        return preset_info(self.default_preset).test_double

    def default_for(self, tab: str) -> str | None:
        """The preset selected first in ``tab`` (generate, control, edit)."""
        if tab == "generate":
            return self.preferred(self.generate_presets, [self.default_preset])
        if tab == "control":
            # offline (the shipped generator is the default), its own ControlNet
            first = [DEMO_ORL_CONTROLNET_NAME] if self.default_preset == DEMO_ORL_NAME else []
            return self.preferred(
                self.control_presets, [*first, *self._alike(self.control_presets)]
            )
        # random test doubles edit fastest without inpainting, and the shipped offline
        # generator is the one that runs without downloads; real weights edit best with it
        inpainting = [p for p in self._alike(self.edit_presets) if preset_info(p).inpainting]
        first = self.tiny or self.default_preset == DEMO_ORL_NAME
        wanted = [self.default_preset, *inpainting] if first else [*inpainting, self.default_preset]
        return self.preferred(self.edit_presets, wanted)

    def _alike(self, names: list[str]) -> list[str]:
        """``names`` that are test doubles exactly when the default preset is one."""
        return [p for p in names if preset_info(p).test_double == self.tiny]

    # -- models ---------------------------------------------------------------------------
    @property
    def analyzer(self) -> FaceAnalyzer:
        """The face analyzer (detector + 68 landmarks + independent dlib encoder)."""
        with self._analyzer_lock:
            if self._analyzer is None:
                self._analyzer = _default_analyzer()
            return self._analyzer

    @contextlib.contextmanager
    def using_analyzer(self) -> Iterator[FaceAnalyzer]:
        """The analyzer, held exclusively for the ``with`` block."""
        with self._analyzer_lock:
            yield self.analyzer

    def _load(self, preset: str) -> _Loaded:
        check_choice(preset, "preset", self.presets)
        with self._load_lock:
            loaded = self._pipes.get(preset)
            if loaded is None:
                logger.info("loading preset %s on %s (%s)", preset, self.device, self.dtype)
                try:
                    pipe = self._factory(preset, self.device, self.dtype)
                except Exception as exc:
                    self._load_errors[preset] = str(exc).splitlines()[0] if str(exc) else ""
                    raise
                pipe.set_progress_bar_config(disable=True)
                loaded = self._pipes[preset] = _Loaded(pipe)
                self._load_errors.pop(preset, None)
            return loaded

    @contextlib.contextmanager
    def using_pipeline(self, preset: str) -> Iterator[DiffusionPipeline]:
        """The pipeline of ``preset`` (built on first use), held exclusively for the block."""
        loaded = self._load(preset)
        with loaded.lock:
            yield loaded.pipe

    def preset_state(self, preset: str) -> str:
        """``loaded``, ``not loaded yet`` or ``failed: …`` (for the Models panel)."""
        if preset in self._pipes:
            return "loaded"
        if preset in self._load_errors:
            return f"failed: {self._load_errors[preset]}"
        return "not loaded yet (loads on first use)"

    # -- one-shot swap ---------------------------------------------------------------------
    @property
    def swap_methods(self) -> list[str]:
        """``diffusion`` and every one-shot swapper (their models load on first use)."""
        from facegen.backends.swappers import SWAPPER_SPECS

        return ["diffusion", *SWAPPER_SPECS]

    def _onnx_model(self, kind: str, name: str) -> Any:
        key = (kind, name)
        if key not in self._oneshot_models:
            if kind == "swapper":
                from facegen.backends.swappers import OnnxFaceSwapper

                model = OnnxFaceSwapper.from_pretrained(
                    name, device=self.device, offline=self.offline
                )
            elif kind == "restorer":
                from facegen.backends.restorers import OnnxFaceRestorer

                model = OnnxFaceRestorer.from_pretrained(
                    name, device=self.device, offline=self.offline
                )
            else:
                from facegen.pipelines.editing.oneshot_jobs import source_analyzer

                model = source_analyzer(device=self.device, offline=self.offline)
            self._oneshot_models[key] = model
        return self._oneshot_models[key]

    @contextlib.contextmanager
    def using_oneshot(
        self, method: str, *, restore: str | None = None, restore_blend: float = 0.8
    ) -> Iterator[tuple[Any, FaceAnalyzer]]:
        """A :class:`~facegen.pipelines.editing.oneshot.OneShotSwap` of ``method`` (and
        ``restore``) and the source analyzer (buffalo_l's ArcFace), models loaded once and
        held exclusively for the block."""
        from facegen.pipelines.editing.oneshot import OneShotSwap

        with self._oneshot_lock:
            swapper = self._onnx_model("swapper", method)
            restorer = self._onnx_model("restorer", restore) if restore else None
            analyzer = self._onnx_model("source", "buffalo_l")
            yield OneShotSwap(swapper, restorer=restorer, restore_blend=restore_blend), analyzer

    # -- optional features ----------------------------------------------------------------
    def swap_status(self) -> FeatureStatus:
        """Whether face swap and generative anonymization are installed."""
        if self._swap is False:
            return FeatureStatus(False, "Face swap is turned off in this app.")
        if not _module_present("facegen.pipelines.editing.swap"):
            return FeatureStatus(
                False,
                "Face swap is not available in this version of facegen "
                "(facegen.pipelines.editing.swap is not installed).",
            )
        return FeatureStatus(True)

    def train_status(self) -> FeatureStatus:
        """Whether LoRA personalization can run here."""
        if self.trainer is not None:
            return FeatureStatus(True)
        if self._train_off:
            return FeatureStatus(False, "LoRA personalization is turned off in this app.")
        return FeatureStatus(
            False,
            "LoRA personalization is not available yet in this version of facegen "
            "(facegen.training.diffusion.lora is not installed).",
        )

    @contextlib.contextmanager
    def using_training(self) -> Iterator[None]:
        """One training job at a time (each holds its own models and most of the memory)."""
        with self._train_lock:
            yield

    # -- workspaces -----------------------------------------------------------------------
    def run_dir(self, state: SessionState, operation: str) -> Path:
        """A new, empty folder for one request's outputs, inside the session's workspace."""
        if self._closed:
            raise RuntimeError("the app is shutting down")
        if state.workspace is None or not Path(state.workspace).is_dir():
            state.workspace = tempfile.mkdtemp(prefix="session-", dir=self.output_root)
            self._live[str(Path(state.workspace).resolve())] = None
        state.runs += 1
        path = Path(state.workspace) / f"{state.runs:04d}-{operation}"
        path.mkdir(parents=True, exist_ok=False)
        return path

    def _in_cache(self, path: Path) -> bool:
        return path.is_relative_to(self.gradio_cache) and path != self.gradio_cache

    def _hash_of(self, file: Path) -> str | None:
        """Gradio's content hash of ``file`` (memoised by path, size and mtime)."""
        try:
            from gradio.processing_utils import hash_file

            st = file.stat()
            key = (str(file), st.st_size, st.st_mtime_ns)
            if key not in self._hashes:
                self._hashes[key] = hash_file(file)
            return self._hashes[key]
        except (ImportError, OSError):
            return None

    def _cached_copy(self, digest: str | None) -> Path | None:
        """The folder of Gradio's cached copy with content hash ``digest``, if there is one."""
        if digest is None:
            return None
        folder = (self.gradio_cache / digest).resolve()
        return folder if folder.is_dir() and self._in_cache(folder) else None

    def _held_elsewhere(self, workspace: Path) -> set[str]:
        """Content hashes of the outputs of every other live session (their cached copies
        are shared with identical outputs of this one)."""
        out: set[str] = set()
        for other in list(self._live):
            if Path(other) == workspace:
                continue
            for f in (q for q in Path(other).rglob("*") if q.is_file()):
                digest = self._hash_of(f)
                if digest is not None:
                    out.add(digest)
        return out

    def drop_session(self, state: SessionState) -> None:
        """End a session (``gr.State`` delete callback): delete the uploads it received that
        no other live session holds, Gradio's cached copies of its outputs that no other
        live session's outputs share, and (unless ``keep_outputs``) its workspace. A session
        with a job still running is ended when the job is done. Only paths inside the app's
        own folders are ever deleted."""
        from .files import release_upload

        if getattr(state, "busy", 0) > 0 and not self._closed:
            timer = threading.Timer(self.retry_drop_s, self.drop_session, args=(state,))
            timer.daemon = True
            timer.start()
            return
        for up in list(getattr(state, "uploads", None) or []):
            p = Path(up).resolve()
            if not release_upload(up) or not self._in_cache(p) or not self._in_cache(p.parent):
                continue
            shutil.rmtree(p.parent, ignore_errors=True)  # Gradio's folder of this upload
        if hasattr(state, "uploads"):
            state.uploads = []
        ws = getattr(state, "workspace", None)
        if not ws:
            return
        path = Path(ws).resolve()
        self._live.pop(str(path), None)
        if path.parent != self.output_root:  # never anything outside our own root
            return
        shared = self._held_elsewhere(path)
        for f in (q for q in path.rglob("*") if q.is_file()):
            digest = self._hash_of(f)
            copy = self._cached_copy(digest) if digest not in shared else None
            if copy is not None:
                shutil.rmtree(copy, ignore_errors=True)
        if not self.keep_outputs:
            shutil.rmtree(path, ignore_errors=True)

    def close(self) -> None:
        """Remove every upload and cached copy, and every output unless ``keep_outputs``
        (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._cleanup_cache()
        if self.keep_outputs:
            return
        if self._cleanup is not None:
            self._cleanup()
        else:
            for child in self.output_root.glob("session-*"):
                shutil.rmtree(child, ignore_errors=True)
