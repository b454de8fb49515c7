"""Lets the stock `lm_eval` see the scotd_* tasks and the `scotd-onnx` model after `pip install`, with no flag.

lm-eval 0.4.13 finds tasks only in its own folder plus `TaskManager(include_path=...)`, and models only in its
registry; it reads no entry points. So the package installs one line, `scotd_harness_lm_eval.pth`, into
site-packages (setup.py writes it for regular and editable installs). Python runs that line at start-up; it puts
a tiny finder first on `sys.meta_path` that does nothing but compare module names, and imports this module only
when `lm_eval.tasks.manager` or `lm_eval.models` is being imported. Programs that never import lm-eval pay for
compiling that line once (a fraction of a millisecond) and a name comparison per import, and never load this
file.

When those two modules load, this module:

- wraps `TaskManager.__init__` so that, whenever lm-eval's own tasks are included (`include_defaults=True`, the
  default), this package's `tasks/` folder is added to `include_path`, first, so a user's `--include_path` can
  still override a scotd task. Passing the folder explicitly (`--include_path`, the fallback when the .pth file
  is not processed, e.g. with `pip install --target`) is recognised and not added twice.
- registers `scotd-hf` (`scotd_harness.lm_eval_hf:ScotdHFLM`: lm-eval's `hf` with each sampled chain seeded by
  its question and index) and `scotd-onnx` in lm-eval's model registry as lazy placeholders, the latter for
  `scotd_harness.export.lm_eval_model:ScotdOnnxLM`, the way lm-eval registers its own backends. The module is
  imported only when someone asks for that model; if it is not there, the name is not registered and lm-eval
  gives its usual "no model for this name" error.

Everything else about lm-eval is untouched: its tasks, models and flags behave as without this package.
`install()` applies the same two patches in-process, for code that wants them without relying on the .pth file.
"""

from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
import sys
from pathlib import Path

#: The file setup.py installs into site-packages, and the one line it holds: a function put first on
#: `sys.meta_path` (a function with itself as `find_spec`) that compares the module name with lm-eval's two and
#: otherwise returns None. It is one expression rather than a class or a module because Python compiles a .pth
#: line at every start-up and that compile is the whole cost. If `scotd_harness` is gone (a deleted checkout of
#: an editable install), the hook finds no package and leaves lm-eval alone.
PTH_NAME = "scotd_harness_lm_eval.pth"
PTH_LINE = (
    "import sys; scotd_lm_eval_hook = lambda name, path=None, target=None: "
    '__import__("scotd_harness.lm_eval_hook").lm_eval_hook.find_spec(name, path, target) '
    'if name in ("lm_eval.tasks.manager", "lm_eval.models") and __import__("importlib.util").util.find_spec("scotd_harness") '
    "else None; scotd_lm_eval_hook.find_spec = scotd_lm_eval_hook; sys.meta_path.insert(0, scotd_lm_eval_hook)\n"
)

TASK_MANAGER_MODULE = "lm_eval.tasks.manager"
MODELS_MODULE = "lm_eval.models"
ONNX_MODEL_NAME = "scotd-onnx"
ONNX_MODEL_MODULE = "scotd_harness.export.lm_eval_model"
ONNX_MODEL_TARGET = f"{ONNX_MODEL_MODULE}:ScotdOnnxLM"

#: lm-eval's `hf` with each sampled chain seeded by (seed, context, chain index): what `scotd eval --model-type hf` runs
HF_MODEL_NAME = "scotd-hf"
HF_MODEL_TARGET = "scotd_harness.lm_eval_hf:ScotdHFLM"

_PATCHED_FLAG = "__scotd_tasks__"


def tasks_dir() -> Path:
    """The folder of scotd task YAMLs (`tasks/` in a checkout, `scotd_harness/tasks/` when installed)."""
    import scotd_harness.tasks

    return Path(scotd_harness.tasks.__file__).resolve().parent


def with_scotd_tasks(include_path) -> list:
    """`include_path` (None, a path or a list of them) with the scotd tasks folder first, unless already there."""
    if include_path is None:
        paths = []
    elif isinstance(include_path, (list, tuple)):
        paths = list(include_path)
    else:
        paths = [include_path]
    ours = tasks_dir()
    if any(Path(p).expanduser().resolve() == ours for p in paths):
        return paths
    return [ours, *paths]


def patch_task_manager(module) -> None:
    """Wrap `module.TaskManager.__init__` to add the scotd tasks folder (idempotent)."""
    cls = module.TaskManager
    original = cls.__init__
    if getattr(original, _PATCHED_FLAG, False):
        return

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        import inspect

        bound = inspect.signature(original).bind(self, *args, **kwargs)
        bound.apply_defaults()
        arguments = bound.arguments
        # include_defaults=False means "only what I pass": then the caller decides, as without this package.
        if arguments.get("include_defaults", True) and "include_path" in arguments:
            arguments["include_path"] = with_scotd_tasks(arguments["include_path"])
        original(*bound.args, **bound.kwargs)

    setattr(__init__, _PATCHED_FLAG, True)
    cls.__init__ = __init__


def onnx_model_available() -> bool:
    """Whether `scotd_harness/export/lm_eval_model.py` exists, found without importing `scotd_harness.export`."""
    spec = importlib.util.find_spec("scotd_harness.export")
    locations = (spec.submodule_search_locations or []) if spec else []
    leaf = ONNX_MODEL_MODULE.rsplit(".", 1)[1]
    return any((Path(loc) / f"{leaf}.py").is_file() for loc in locations)


def register_models(module=None) -> None:
    """Register `scotd-hf` and `scotd-onnx` as lazy placeholders, as `lm_eval.models` does for its own backends (idempotent).

    Called right after `lm_eval.models` has registered lm-eval's backends: registering any earlier would make the
    registry non-empty, and `lm_eval.api.registry.get_model` imports `lm_eval.models` only when it is empty.
    """
    from lm_eval.api.registry import model_registry

    if HF_MODEL_NAME not in model_registry:
        model_registry.register(HF_MODEL_NAME, target=HF_MODEL_TARGET)
    if ONNX_MODEL_NAME in model_registry or not onnx_model_available():
        return
    model_registry.register(ONNX_MODEL_NAME, target=ONNX_MODEL_TARGET)


_PATCHES = {TASK_MANAGER_MODULE: patch_task_manager, MODELS_MODULE: register_models}


class _PatchingLoader:
    """Runs the module's own loader, then one patch. Anything else is delegated to the wrapped loader."""

    def __init__(self, loader, patch):
        self._loader = loader
        self._patch = patch

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        # The module sees the loader it would have had without this hook (reload, get_source, resources).
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        self._patch(module)

    def __getattr__(self, name):
        return getattr(self._loader, name)


def find_spec(name: str, path=None, target=None):
    """Meta-path hook body, called by the .pth finder for lm-eval's two modules only."""
    patch = _PATCHES.get(name)
    if patch is None:
        return None
    # Both are submodules of the regular package `lm_eval`, so the path-based finder finds them from `path`
    # (the parent's __path__), however `lm_eval` itself was installed.
    spec = importlib.machinery.PathFinder.find_spec(name, path, target)
    if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
        return None
    spec.loader = _PatchingLoader(spec.loader, patch)
    return spec


def install() -> None:
    """Apply both patches now, importing lm-eval's modules (idempotent; a no-op where the .pth already did it)."""
    import lm_eval.models
    import lm_eval.tasks.manager  # noqa: F401

    patch_task_manager(sys.modules[TASK_MANAGER_MODULE])
    register_models(sys.modules[MODELS_MODULE])
