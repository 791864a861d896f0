"""config/dataset_cfg: static tables only, no statistics constants, no import of the data layer."""
import ast
import subprocess
import sys

from config.dataset_cfg import available, option_module
from tests.conftest import REPO

NO_DATA_LAYER = """
import sys
import config, config.codes, config.category, config.errors
from config.dataset_cfg import available, option_module
for name in available():
    option_module(name)
print(sorted(m for m in sys.modules if m.split('.')[0] in ('datasets', 'engine', 'models', 'osgeo')))
"""


def test_config_imports_nothing_from_the_data_layer():
    out = subprocess.run([sys.executable, "-c", NO_DATA_LAYER], cwd=REPO, capture_output=True, text=True,
                         check=True, env={"PYTHONPATH": str(REPO)}).stdout
    assert out.strip() == "[]"


def test_no_module_of_config_imports_the_data_layer_even_inside_a_function():
    bad = []
    for path in sorted((REPO / "config").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            bad += [f"{path.relative_to(REPO)}: {n}" for n in names
                    if n.split(".")[0] in ("datasets", "engine", "models", "losses")]
    assert bad == []


def test_no_option_module_carries_statistics():
    """Normalisation is measured on each training split; a constant would have seen test images."""
    assert {"aid", "nr", "ucm", "eurorgb", "euroms", "euromsrgb", "demo"} <= set(available())
    for name in available():
        mod = option_module(name)
        assert not hasattr(mod, "MEAN") and not hasattr(mod, "STD"), name


def test_published_split_list_prefixes():
    assert {n: getattr(option_module(n), "SPLIT_LISTS", "") for n in ("euroms", "euromsrgb", "eurorgb", "ucm", "nr", "aid")} \
        == {"euroms": "eurosat", "euromsrgb": "eurosat", "eurorgb": "eurosat", "ucm": "uc_merced",
            "nr": "resisc45", "aid": ""}
