"""docs/notebooks/inspect.ipynb runs top to bottom (so it never rots)."""
import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the [test] extra installs nbformat")
nbclient = pytest.importorskip("nbclient", reason="the [test] extra installs nbclient")

NB = Path(__file__).resolve().parents[1] / "docs" / "notebooks" / "inspect.ipynb"


def test_inspect_notebook_executes(tmp_path):
    from conftest import _cli_env
    nb = nbformat.read(NB, as_version=4)
    env_backup = dict(os.environ)
    os.environ.update(_cli_env(None))          # the kernel imports llmetal the way the tests do
    try:
        client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                         resources={"metadata": {"path": str(tmp_path)}})
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(env_backup)
    outputs = "".join(o.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                      for o in cell.get("outputs", []))
    assert "NMSE engine vs numpy" in outputs and "next token" in outputs
    assert "last layer's top token: ' Paris' = the model's: ' Paris'" in outputs   # the lens
    assert "patched at position 3" in outputs and "kqv " in outputs                 # patching, errors
    assert sum("image/png" in o.get("data", {}) for cell in nb.cells if cell.cell_type == "code"
               for o in cell.get("outputs", [])) >= 5
    assert NB.stat().st_size < 1 << 20, "the committed notebook (with its outputs) stays under 1 MB"
