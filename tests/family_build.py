"""The contamination bench's family for tests: built by `evaluator.family` at reduced sizes (a
few training steps, 4 test items), once per machine and source version, under var/test-cache.
Registering it is what the tests check, not how well its members learned."""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import metadata
from pathlib import Path

from evaluator.family import Sizes, build_family

TEST_SIZES = Sizes(items=4, unrelated=8, pretrain_steps=2)
CACHE_ROOT = Path(__file__).resolve().parent.parent / "var" / "test-cache"
FAMILY_SOURCE = Path(__file__).resolve().parent.parent / "evaluator" / "family.py"


def command_options() -> list[str]:
    """`manage.py demo_family`'s options for the built family."""
    return [
        "--work",
        str(built_family_work()),
        "--pretrain-steps",
        str(TEST_SIZES.pretrain_steps),
        "--unrelated",
        str(TEST_SIZES.unrelated),
        "--items",
        str(TEST_SIZES.items),
    ]


@cache
def built_family_work() -> Path:
    """The work folder (models/<member>) of the built family; 15 CPU seconds the first time."""
    from filelock import FileLock

    from evaluator.data import default_mirror_root

    versions = [
        metadata.version(name) for name in ("torch", "transformers", "tokenizers", "mergekit")
    ]
    text = "\n".join([FAMILY_SOURCE.read_text(), repr(TEST_SIZES), *versions])
    folder = CACHE_ROOT / f"demo-family-{hashlib.sha256(text.encode()).hexdigest()[:16]}"
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    # pytest-xdist's processes ask at the same time: one builds, the others wait for it.
    with FileLock(str(folder) + ".lock"):
        if not (folder / "complete").is_file():
            build_family(folder / "models", default_mirror_root(), TEST_SIZES)
            (folder / "complete").touch()
    return folder
