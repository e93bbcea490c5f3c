"""The layout of docs/design.md holds: imports run only downwards through the layers, every entry
script takes both spellings of the renamed flags, and no module grows past the size limit."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import eval_linear
import finetune
import train
from visualization import main_temporal

REPO = Path(__file__).resolve().parents[1]
# layer of each top-level package / entry script: an import may only go to the same or a lower layer
LAYERS = {"utils": 0, "datasets": 1, "models": 1, "losses": 1, "engine": 2,
          "visualization": 3, "scripts": 3, "train": 3, "eval_linear": 3, "finetune": 3}
MAX_LINES = 400


def project_modules() -> list[Path]:
    files = [p for p in REPO.glob("*.py")]
    for package in ("utils", "datasets", "models", "losses", "engine", "visualization", "scripts"):
        files += sorted((REPO / package).rglob("*.py"))
    return files


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & LAYERS.keys()


def owner(path: Path) -> str:
    rel = path.relative_to(REPO)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


@pytest.mark.parametrize("path", project_modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_imports_only_go_down(path: Path) -> None:
    here = owner(path)
    if here not in LAYERS:  # e.g. a helper module at the top level that no layer owns
        pytest.skip(f"{here} has no layer")
    upward = {name for name in imported_packages(path) if LAYERS[name] > LAYERS[here]}
    assert not upward, f"{path.relative_to(REPO)} (layer {LAYERS[here]}) imports {sorted(upward)}"
    if here == "utils":
        assert imported_packages(path) <= {"utils"}, "utils/ imports nothing else of the project"


def test_models_and_losses_do_not_import_engine() -> None:
    for package in ("models", "losses", "datasets", "utils"):
        for path in (REPO / package).rglob("*.py"):
            assert "engine" not in imported_packages(path), path


@pytest.mark.parametrize("path", project_modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_module_is_too_long(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(REPO)} has {lines} lines: split it by concern"


@pytest.mark.parametrize("module, epochs, batch", [
    (train, "epoch", "train_batch"),
    (eval_linear, "epochs", "batch_size"),
    (finetune, "epochs", "batch_size"),
    (main_temporal, "epochs", "batch_size"),
])
def test_both_spellings_of_the_renamed_flags(module, epochs: str, batch: str) -> None:
    parser = module.build_parser()
    for epoch_flag in ("--epoch", "--epochs"):
        for batch_flag in ("--train_batch", "--batch_size"):
            args, _ = parser.parse_known_args([epoch_flag, "7", batch_flag, "5", "--train_csv", "a.csv",
                                               "--val_csv", "b.csv", "--output_dir", "out"])
            assert (getattr(args, epochs), getattr(args, batch)) == (7, 5)


def test_one_help_formatter_and_no_doubled_defaults() -> None:
    for module in (train, eval_linear, finetune, main_temporal):
        parser = module.build_parser()
        formatter = parser._get_formatter()
        assert type(formatter).__name__ == "HelpFormatter" and type(formatter).__module__ == "engine.cli"
        for action in parser._actions:
            text = formatter._get_help_string(action) or ""
            assert "(default: None)" not in text and text.count("(default:") <= 1, (module.__name__, text)
