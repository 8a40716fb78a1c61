"""The package's shape (docs/ARCHITECTURE.md): layers, no import cycle, a torch-free figure side.

The import graph is read with ``ast`` (top-of-file and in-function imports alike), so the
test needs neither torch nor the modules' dependencies to build it.
"""

import ast
import subprocess
import sys

import pytest
from helpers import REPO_ROOT, script_env

PACKAGE = REPO_ROOT / "fwdrev"
MAX_MODULE_LINES = 400

# Every module of fwdrev and its layer: a module imports only from its own layer or below.
# A new module gets a row here (the test says which is missing); docs/ARCHITECTURE.md draws it.
LAYERS = {
    # 0 foundations: no first-party imports
    "errors": 0, "io": 0, "bootstrap": 0, "sets": 0, "splits": 0, "fingerprint": 0, "layout": 0,
    "problems": 0, "rank_zero": 0, "wider_middle": 0, "dpo_loss": 0, "autocast": 0,
    "evaluation": 0, "evaluation.grading": 0,
    # 1 checks and run plumbing (run identity, guards, output head description)
    "cli": 1, "data_checks": 1, "figures": 1, "sharding": 1, "run_folder": 1, "run_identity": 1,
    "deepspeed_ops": 1, "checkpoint_pruning": 1, "recipes": 1, "output_head": 1,
    "evaluation.forcing": 1, "evaluation.records": 1, "evaluation.summary": 1, "evaluation.figure": 1,
    "evaluation.vllm_backend": 1,
    # 2 data and result tables (pandas; no torch)
    "data": 2, "score_summaries": 2, "result_tables": 2, "dynamics_tables": 2, "paper_figure": 2,
    "evaluation.tasks": 2, "evaluation.sources": 2, "evaluation.runner": 2,
    # 3 tokens, and what is computed from them alone
    "tokenization": 3, "data_arguments": 3, "original_scoring": 3, "score_keys": 3, "token_dynamics": 3,
    "response_probes": 3,
    # 4 models and their provenance, checkpoint series
    "modeling": 4, "logprobs": 4, "model_arguments": 4, "provenance": 4, "checkpoints": 4,
    "evaluation.hf_backend": 4,
    # 5 scoring, the DPO reference, probes, benchmark models
    "scoring": 5, "scoring_cli": 5, "reference": 5, "probes": 5, "greedy_probe": 5, "probe_scoring": 5,
    "probe_tables": 5, "evaluation.models": 5,
    # 6 trainers
    "sft": 6, "dpo_trainer": 6,
    # 7 what the training scripts share (arguments, guards, saving, merging)
    "training": 7,
    # 8 development fixtures and tools
    "devtools": 8, "devtools.tiny_model": 8, "devtools.qwen_tokenizer": 8, "devtools.synthetic": 8,
    "devtools.gpu_check": 8, "devtools.bench": 8,
}
# Known edges that a later change removes; everything else is guarded now.
KNOWN_CYCLE_EDGES: dict = {}
# Modules (and scripts) of the figure and summary side: importing them must not load torch.
TORCH_FREE = ["errors", "cli", "io", "bootstrap", "sets", "splits", "fingerprint", "wider_middle",
              "figures", "data_checks", "data", "score_summaries", "result_tables", "dynamics_tables",
              "paper_figure"]
TORCH_FREE_SCRIPTS = ["visualization/plot_with_wider_middle.py", "visualization/visualize_training_dynamics.py",
                      "analysis/summarize_results.py"]


def module_name(path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict:
    found = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
    found.pop("", None)  # fwdrev/__init__.py
    return found


def first_party_imports(path, known: set) -> set:
    """The fwdrev modules ``path`` imports (``from fwdrev import x`` counts as module ``x``)."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "fwdrev":
            base = node.module.removeprefix("fwdrev").lstrip(".")
            for alias in node.names:
                submodule = f"{base}.{alias.name}".lstrip(".")
                imported.add(submodule if submodule in known else base)
        elif isinstance(node, ast.Import):
            imported.update(a.name.removeprefix("fwdrev.") for a in node.names if a.name.startswith("fwdrev."))
    return imported - {""}


def import_graph() -> dict:
    found = modules()
    return {name: first_party_imports(path, set(found)) for name, path in found.items()}


def test_every_module_has_a_layer_and_imports_only_downwards():
    graph = import_graph()
    assert sorted(set(graph) - set(LAYERS)) == [], "add these modules to LAYERS (and docs/ARCHITECTURE.md)"
    assert sorted(set(LAYERS) - set(graph)) == [], "modules in LAYERS that no longer exist"
    upward = sorted(f"{name} (layer {LAYERS[name]}) -> {target} (layer {LAYERS[target]})"
                    for name, targets in graph.items() for target in targets if LAYERS[target] > LAYERS[name])
    assert upward == []


def test_no_import_cycle():
    graph = {name: {t for t in targets if (name, t) not in KNOWN_CYCLE_EDGES}
             for name, targets in import_graph().items()}
    state, cycles = {}, []

    def visit(node, trail):
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycles.append(trail[trail.index(target):] + [target])
            elif target not in state:
                visit(target, trail + [target])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_known_cycle_edges_still_exist():
    """Remove an entry of KNOWN_CYCLE_EDGES once its fix lands (then the cycle test guards it)."""
    graph = import_graph()
    assert [edge for edge in KNOWN_CYCLE_EDGES if edge[1] not in graph[edge[0]]] == []


def test_no_module_over_the_size_limit():
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    assert {name: lines for name, lines in sizes.items() if lines > MAX_MODULE_LINES} == {}


@pytest.mark.parametrize("what", ["modules", "scripts"])
def test_figure_and_summary_side_never_imports_torch(what):
    if what == "modules":
        code = "".join(f"import fwdrev.{name}\n" for name in TORCH_FREE)
    else:  # run each script's imports, not its main
        code = "import runpy\n" + "".join(f"runpy.run_path({str(REPO_ROOT / s)!r}, run_name='imported')\n"
                                          for s in TORCH_FREE_SCRIPTS)
    code += "import sys\nheavy = sorted({'torch', 'transformers', 'deepspeed'} & set(sys.modules))\nprint(heavy)\n"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=script_env(), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
