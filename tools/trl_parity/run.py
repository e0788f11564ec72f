"""Run TRL's own SFT and reward-trainer tests against TRL's classes and against coati_hf's.

    PYTHONPATH=$PWD .venv/bin/python tools/trl_parity/run.py --trl /path/to/trl-checkout

The checkout is a plain folder of https://github.com/huggingface/trl (``tests/`` and
``scripts/`` are used; from a bare mirror: ``git --git-dir=MIRROR archive HEAD tests scripts
pyproject.toml | tar x -C DIR``). Nothing from it is copied into this repository: the tests are
copied into ``<work>/run-<variant>/`` and run there.

Variants:

``trl``    TRL's test files as they are (TRL's classes), the baseline.
``coati``  the same files with only the import of the trainer under test changed:
           ``from trl import SFTConfig, SFTTrainer`` -> ``from coati_hf import SFTConfig, SFTTrainer``
           (and likewise ``RewardConfig, RewardTrainer``).

Both run in the same environment: offline (``HF_HUB_OFFLINE=1``), Hub ids served by the stand-ins
of :mod:`standins` (built once into ``<work>``), datasets by :mod:`plugin`. The result is
``<work>/parity.json`` and a summary: how many tests pass in each variant, and every test that
passes with TRL's classes but not with coati_hf's (the exit status is 1 when there is any).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
TEST_FILES = ("test_sft_trainer.py", "test_reward_trainer.py")
SUPPORT_FILES = ("__init__.py", "conftest.py", "testing_utils.py", "testing_constants.py")
IMPORT_CHANGES = {
    "from trl import SFTConfig, SFTTrainer": "from coati_hf import SFTConfig, SFTTrainer",
    "from trl import RewardConfig, RewardTrainer": "from coati_hf import RewardConfig, RewardTrainer",
}


def missing_trl_names(test_files: list[Path]) -> list[str]:
    """``module:name`` for every ``from trl... import name`` in the tests that the installed trl lacks."""
    missing = []
    for path in test_files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "trl":
                module = importlib.import_module(node.module)
                missing += [f"{node.module}:{a.name}" for a in node.names if not hasattr(module, a.name)]
    return missing


def prepare(trl_dir: Path, run_dir: Path, variant: str, test_files: tuple[str, ...]) -> None:
    if run_dir.exists():
        shutil.rmtree(run_dir)
    (run_dir / "tests").mkdir(parents=True)
    shutil.copy(trl_dir / "pyproject.toml", run_dir / "pyproject.toml")  # TRL's pytest settings (markers)
    for name in SUPPORT_FILES:
        if (trl_dir / "tests" / name).exists():
            shutil.copy(trl_dir / "tests" / name, run_dir / "tests" / name)
    shutil.copytree(trl_dir / "tests" / "data", run_dir / "tests" / "data")
    for name in test_files:
        text = (trl_dir / "tests" / name).read_text()
        if variant == "coati":
            changed = 0
            for old, new in IMPORT_CHANGES.items():
                changed += text.count(old)
                text = text.replace(old, new)
            if changed != 1:
                raise SystemExit(f"{name}: expected exactly one trainer import to change, found {changed}")
        (run_dir / "tests" / name).write_text(text)


def run_pytest(run_dir: Path, work: Path, stubs: list[str], extra: list[str], timeout: int) -> dict[str, str]:
    junit = run_dir / "junit.xml"
    env = dict(
        os.environ,
        HF_HUB_CACHE=str(work / "hub"),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_MODULES_CACHE=str(run_dir / "modules"),
        TRL_PARITY_DATASETS=str(work / "datasets"),
        TRL_PARITY_STUBS=",".join(stubs),
        PYTHONPATH=os.pathsep.join([str(HERE), str(REPO), os.environ.get("PYTHONPATH", "")]),
        WANDB_DISABLED="true",
        TOKENIZERS_PARALLELISM="false",
    )
    command = [sys.executable, "-m", "pytest", "tests", "-p", "plugin", "-p", "no:cacheprovider", "-q",
               f"--junitxml={junit}", "-o", "junit_family=xunit1", f"--timeout={timeout}", *extra]
    subprocess.run(command, cwd=run_dir, env=env)
    return outcomes(junit)


def outcomes(junit: Path) -> dict[str, str]:
    """``{test id: passed | failed | error | skipped}`` from a JUnit report."""
    result = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag for child in case}
        result[name] = "failed" if "failure" in kinds else "error" if "error" in kinds else "skipped" if "skipped" in kinds else "passed"
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="TRL's SFT/reward tests: TRL's classes vs coati_hf's")
    parser.add_argument("--trl", required=True, type=Path, help="a checkout of the TRL repository")
    parser.add_argument("--work", type=Path, default=Path("/tmp/coati-trl-parity"), help="stand-ins and runs go here")
    parser.add_argument("--variants", nargs="+", default=["trl", "coati"], choices=["trl", "coati"])
    parser.add_argument("--tests", nargs="+", default=list(TEST_FILES), help="test files of TRL's tests/ to run")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per test")
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (after --), e.g. -k 'assistant'")
    args = parser.parse_args(argv)
    trl_dir, work = args.trl.resolve(), args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)

    if not (work / "standins.json").exists():
        subprocess.run([sys.executable, str(HERE / "standins.py"), "--trl", str(trl_dir), "--work", str(work)], check=True,
                       env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])))
    stubs = missing_trl_names([trl_dir / "tests" / name for name in (*args.tests, *SUPPORT_FILES) if (trl_dir / "tests" / name).exists()])

    results_path = work / "parity.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for variant in args.variants:
        run_dir = work / f"run-{variant}"
        prepare(trl_dir, run_dir, variant, tuple(args.tests))
        results[variant] = run_pytest(run_dir, work, stubs, args.pytest_args, args.timeout)
    results_path.write_text(json.dumps(results, indent=1, sort_keys=True))

    for variant in ("trl", "coati"):
        if variant in results:
            counts = {k: sum(v == k for v in results[variant].values()) for k in ("passed", "failed", "error", "skipped")}
            print(f"{variant:6s} {counts}")
    if {"trl", "coati"} <= set(results):
        lost = sorted(t for t, o in results["trl"].items() if o == "passed" and results["coati"].get(t) != "passed")
        gained = sorted(t for t, o in results["coati"].items() if o == "passed" and results["trl"].get(t) != "passed")
        print(f"pass with TRL's classes but not with coati_hf's: {len(lost)}")
        for name in lost:
            print(f"  {name} ({results['coati'].get(name, 'not run')})")
        if gained:
            print(f"pass only with coati_hf's: {len(gained)}")
            for name in gained:
                print(f"  {name}")
        return 1 if lost else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
