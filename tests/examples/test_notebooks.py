"""Every notebook in examples/ runs top to bottom without an error, and is committed without outputs.

The notebooks run in a Jupyter kernel started from this interpreter (``sys.executable``, the
project's virtual environment), through a kernelspec written to a temporary folder, so that a
``python3`` kernel installed elsewhere on the machine is never picked up.
"""
import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))
CELL_TIMEOUT_S = 300
FIGURES = {"matchers.ipynb": 2, "predict.ipynb": 1}  # figures a notebook must draw (image/png outputs)


def missing_requirement(path: Path):
    """Why ``path`` cannot run in this checkout (None when it can): predict.ipynb needs shipped ViG weights."""
    if path.name != "predict.ipynb":
        return None
    try:
        from fewshot.pretrained import list_pretrained
    except ImportError:
        return "predict.ipynb needs shipped weights, and this checkout has no fewshot.pretrained module yet"
    if not any(name.startswith("vig") for name in list_pretrained()):
        return f"predict.ipynb needs shipped ViG weights; fewshot.pretrained.list_pretrained() = {list_pretrained()}"
    return None


def test_the_examples_folder_holds_notebooks():
    assert NOTEBOOKS, f"no notebooks found in {EXAMPLES}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_are_committed_without_outputs(path):
    nb = json.loads(path.read_text())
    stale = [i for i, cell in enumerate(nb["cells"]) if cell["cell_type"] == "code"
             and (cell.get("outputs") or cell.get("execution_count") is not None)]
    assert not stale, (f"{path.name}: code cells {stale} hold outputs; clear them before committing "
                       f"(jupyter nbconvert --clear-output --inplace {path.relative_to(REPO)})")


@pytest.fixture(scope="module")
def kernel_manager_factory(tmp_path_factory):
    """A factory of kernel managers running ipykernel on ``sys.executable``."""
    nbclient = pytest.importorskip("nbclient")  # noqa: F841  (the dev extras install it)
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    kernels = tmp_path_factory.mktemp("kernels")
    spec_dir = kernels / "fewshot-test"
    spec_dir.mkdir()
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "fewshot tests", "language": "python"}))
    specs = KernelSpecManager(kernel_dirs=[str(kernels)])
    return lambda: KernelManager(kernel_name="fewshot-test", kernel_spec_manager=specs)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_without_errors(path, kernel_manager_factory, monkeypatch, shared_data):
    reason = missing_requirement(path)
    if reason:
        pytest.skip(reason)
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    monkeypatch.delenv("MPLBACKEND", raising=False)    # the kernel's inline backend renders figures headless
    monkeypatch.delenv("FEWSHOT_RUN_DIR", raising=False)  # matchers.ipynb loads the shipped glyphs weights
    monkeypatch.setenv("FEWSHOT_OMNIGLOT", str(shared_data / "omniglot"))  # predict.ipynb reads a zip from there
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, km=kernel_manager_factory(), timeout=CELL_TIMEOUT_S,
                            resources={"metadata": {"path": str(EXAMPLES)}})
    try:
        client.execute()
    except CellExecutionError as err:
        pytest.fail(f"{path.name}: a cell failed:\n{err}")
    errors = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
              if out.get("output_type") == "error"]
    assert not errors, f"{path.name}: {errors[0].get('ename')}: {errors[0].get('evalue')}"
    assert any(cell.outputs for cell in nb.cells if cell.cell_type == "code"), f"{path.name} printed nothing"
    figures = sum("image/png" in out.get("data", {}) for cell in nb.cells if cell.cell_type == "code"
                  for out in cell.outputs)
    assert figures >= FIGURES.get(path.name, 0), f"{path.name} drew {figures} figures, expected {FIGURES[path.name]}"
