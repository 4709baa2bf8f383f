"""``r1-lightning pipeline --config configs/pipeline/<name>.yaml``: R1's multi-stage recipe in one run.

A pipeline is a list of stages. Each stage is one of

- ``fit``: an ordinary LightningCLI fit config (``trainer`` / ``model`` / ``data``, inline or a YAML
  path relative to the pipeline file): SFT, GRPO, reward-model training. It hands on the HF folder it
  exports (``<stage>/hf_model``).
- ``rejection_sampling``: ``RejectionSampler`` arguments; hands on ``<stage>/dataset``.
- ``evaluate``: evaluates ``model`` (e.g. the base) without training; hands on the model. With
  ``benchmark: file.jsonl`` (or ``{path, prompt_column: problem, answer_column: answer}``) it scores the
  model on every row of that file instead of the held-out set (MATH-500 / AIME-style files; see
  :mod:`r1_lightning.evaluation.benchmark`), with the ``evaluation`` section's protocol.

``overrides`` is a mapping laid over the stage's ``config`` (mappings merge key by key), so that two stages can
share one YAML and differ in a few keys, e.g. the same RL recipe on a different base model.

``compare`` (top level) lists pairs ``[a, b]`` of evaluated stages: the report states, for each, whether
``a``'s pass@1 is above ``b``'s by more than the 95% interval of the difference (R1's distillation table:
``[student_distilled, student_rl]``).

``inputs`` wires stages together: ``{dotted.config.key: earlier_stage_name}`` writes that stage's output
path into this stage's config, e.g. ``model.init_args.model: cold_start`` or
``data.init_args.source.init_args.path: rejection_sampling``.

Every stage that produces a policy is evaluated on the held-out set (``evaluation``) and the report
(``report.md`` / ``.csv`` / ``.png``) is rewritten after each stage.

Resume: a finished stage leaves ``<stage>/stage.json`` and is skipped when the pipeline is run again;
an interrupted ``fit`` stage restarts from ``<stage>/checkpoints/last.ckpt`` (written every
``checkpoint_every`` steps); an interrupted rejection-sampling or evaluation stage is redone (they
hold no optimizer state). ``--from_stage NAME`` redoes NAME and every later stage.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentParser

from r1_lightning.callbacks.preemption import Preempted
from r1_lightning.errors import ConfigError, MissingPathError
from r1_lightning.evaluation.benchmark import benchmark_source
from r1_lightning.evaluation.evaluator import Evaluator
from r1_lightning.evaluation.report import write_report
from r1_lightning.pipeline.output_lock import OutputDirLock
from r1_lightning.pipeline.rejection import RejectionSampler
from r1_lightning.progress import format_seconds
from r1_lightning.runs.lightning_cli import run_lightning_cli

log = logging.getLogger(__name__)

STAGE_KINDS = ("fit", "rejection_sampling", "evaluate")
STAGE_KEYS = ("name", "kind", "config", "overrides", "inputs", "model", "evaluate", "checkpoint_every", "benchmark")
REWARD_MODEL_CLASS = "r1_lightning.training.reward_model.RewardModelModule"


TOP_KEYS = ("name", "output_dir", "evaluation", "stages", "compare")


def pipeline_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="r1-lightning pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=str, required=True, help="pipeline YAML")
    parser.add_argument(
        "--output_dir", type=str | None, default=None, help="default: the YAML's, else runs/pipeline/<name>"
    )
    parser.add_argument("--from_stage", type=str | None, default=None, help="redo this stage and all after it")
    parser.add_argument(
        "--fit_config",
        type=str,
        nargs="+",
        default=[],
        help="YAML merged into every fit stage's config, e.g. configs/strategy/ddp.yaml (repeatable); a stage "
        "that then runs on several processes is launched as its own process group (`r1-lightning fit`)",
    )
    parser.add_argument(
        "--seed",
        type=int | None,
        default=None,
        help="run every stage with this seed (fit stages' seed_everything, rejection sampling's seed); "
        "the evaluation keeps its own seed, so runs are scored on the same draws",
    )
    return parser


def build_evaluator(settings: dict[str, Any] | None) -> Evaluator:
    """The ``evaluation`` section, typed by ``Evaluator``'s signature (errors name the bad key)."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(Evaluator, "evaluation")
    return parser.instantiate_classes(parser.parse_object({"evaluation": settings or {}})).evaluation


def load_pipeline(
    path: str | Path, output_dir: str | None = None, seed: int | None = None, fit_configs: list[str] | None = None
) -> Pipeline:
    """Read and check a pipeline YAML; stage configs stay plain mappings until their stage runs."""
    import difflib

    path = Path(path)
    if not path.exists():
        raise MissingPathError(f"pipeline config {str(path)!r} does not exist (from --config)")
    spec = yaml.safe_load(path.read_text()) or {}
    for key in spec:
        if key not in TOP_KEYS:
            close = difflib.get_close_matches(key, TOP_KEYS, n=1)
            raise ValueError(
                f"{path}: unknown key {key!r}"
                + (f"; did you mean {close[0]!r}?" if close else "")
                + f" (keys: {TOP_KEYS})"
            )
    name = spec.get("name") or path.stem
    overrides = []
    for fit_config in fit_configs or []:
        if not Path(fit_config).exists():
            raise MissingPathError(f"--fit_config file {fit_config!r} does not exist")
        overrides.append(yaml.safe_load(Path(fit_config).read_text()) or {})
    return Pipeline(
        name,
        spec.get("stages") or [],
        build_evaluator(spec.get("evaluation")),
        output_dir or spec.get("output_dir"),
        str(path.parent),
        seed,
        overrides,
        spec.get("compare") or [],
    )


def merge_config(base: dict, override: dict) -> dict:
    """``override`` laid over ``base``: mappings merge key by key, anything else is replaced.

    >>> merge_config({"trainer": {"devices": 1, "max_steps": 5}}, {"trainer": {"devices": 2}})
    {'trainer': {'devices': 2, 'max_steps': 5}}
    """
    merged = dict(base)
    for key, value in override.items():
        merged[key] = (
            merge_config(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
        )
    return merged


def process_count(trainer: dict) -> int:
    """How many processes a fit with these trainer settings launches (devices x nodes; ``auto`` is 1 on a CPU).

    >>> process_count({"devices": 2}), process_count({"devices": [0, 1], "num_nodes": 2}), process_count({})
    (2, 4, 1)
    """
    devices = trainer.get("devices", "auto")
    if isinstance(devices, list):
        per_node = len(devices)
    elif isinstance(devices, int) or (isinstance(devices, str) and devices.isdigit()):
        per_node = max(int(devices), 1)
    else:  # "auto" / -1: every visible GPU, or one CPU process
        import torch

        per_node = torch.cuda.device_count() if trainer.get("accelerator") != "cpu" and torch.cuda.is_available() else 1
    return per_node * int(trainer.get("num_nodes", 1) or 1)


def set_dotted(config: dict, key: str, value: Any) -> None:
    """``set_dotted(c, "model.init_args.model", "x")`` sets ``c["model"]["init_args"]["model"] = "x"``.

    >>> c = {"model": {"init_args": {}}}; set_dotted(c, "model.init_args.model", "x"); c
    {'model': {'init_args': {'model': 'x'}}}
    """
    *parents, last = key.split(".")
    node: Any = config
    for part in parents:
        if isinstance(node, list):  # "trainer.callbacks.0.init_args...": an index into a list
            if not part.isdigit() or int(part) >= len(node):
                raise ValueError(f"pipeline input key {key!r}: {part!r} is not an index of a {len(node)}-item list")
            node = node[int(part)]
        elif isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            raise ValueError(f"pipeline input key {key!r}: {part!r} is not a mapping or list in the stage config")
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def validate_stages(stages: list[dict[str, Any]]) -> None:
    """Names unique, kinds known, keys known, inputs refer to earlier stages: errors name the stage."""
    import difflib

    if not stages:
        raise ValueError("the pipeline has no `stages`")
    seen: list[str] = []
    for index, stage in enumerate(stages):
        name = stage.get("name")
        if not name:
            raise ValueError(f"stage #{index + 1} has no `name`")
        unknown = set(stage) - set(STAGE_KEYS)
        for key in unknown:
            close = difflib.get_close_matches(key, STAGE_KEYS, n=1)
            raise ValueError(
                f"stage {name!r}: unknown key {key!r}"
                + (f"; did you mean {close[0]!r}?" if close else "")
                + f" (keys: {STAGE_KEYS})"
            )
        if stage.get("kind", "fit") not in STAGE_KINDS:
            raise ValueError(f"stage {name!r}: `kind` must be one of {STAGE_KINDS}, got {stage.get('kind')!r}")
        if name in seen:
            raise ValueError(f"two stages are named {name!r}")
        for key, source in (stage.get("inputs") or {}).items():
            if source not in seen:
                raise ValueError(
                    f"stage {name!r}: input {key!r} refers to {source!r}, which is not an earlier stage "
                    f"(earlier stages: {seen})"
                )
        if stage.get("kind") == "evaluate" and not stage.get("model") and not stage.get("inputs"):
            raise ValueError(f"stage {name!r}: an `evaluate` stage needs `model` (or `inputs: {{model: stage}}`)")
        if stage.get("benchmark") is not None and stage.get("kind") != "evaluate":
            raise ValueError(f"stage {name!r}: `benchmark` belongs to `kind: evaluate` stages")
        if stage.get("overrides") is not None and not isinstance(stage["overrides"], dict):
            raise ValueError(f"stage {name!r}: `overrides` must be a mapping laid over `config`")
        if stage.get("kind", "fit") != "evaluate" and stage.get("config") is None:
            raise ValueError(f"stage {name!r}: needs a `config` (inline mapping or YAML path)")
        seen.append(name)


def validate_comparisons(pairs: Any, names: list[str]) -> list[tuple[str, str]]:
    """``compare``: a list of ``[stage, stage]`` pairs naming stages of this pipeline."""
    if not isinstance(pairs, list):
        raise ValueError(f"`compare` must be a list of [stage, stage] pairs, got {pairs!r}")
    checked = []
    for pair in pairs:
        if not (isinstance(pair, list | tuple) and len(pair) == 2):
            raise ValueError(f"`compare`: each entry is a pair [stage, stage], got {pair!r}")
        for name in pair:
            if name not in names:
                raise ValueError(f"`compare`: {name!r} is not a stage (stages: {names})")
        checked.append((str(pair[0]), str(pair[1])))
    return checked


class Pipeline:
    """Runs the stages of a parsed pipeline config (see the module docstring)."""

    def __init__(
        self,
        name: str,
        stages: list[dict[str, Any]],
        evaluation: Evaluator,
        output_dir: str | None = None,
        base_dir: str | None = None,
        seed: int | None = None,
        fit_overrides: list[dict] | None = None,
        compare: list[list[str]] | None = None,
    ) -> None:
        stages = copy.deepcopy(stages)
        self.seed, self.fit_overrides = seed, list(fit_overrides or [])
        validate_stages(stages)
        self.comparisons = validate_comparisons(compare or [], [stage["name"] for stage in stages])
        self.name, self.stages, self.evaluator = name, stages, evaluation
        self.output_dir = Path(output_dir or Path("runs") / "pipeline" / name)
        self.base_dir = Path(base_dir or ".")
        self.outputs: dict[str, str] = {}
        self.records: list[dict[str, Any]] = []
        self.started = time.perf_counter()

    def stage_dir(self, stage: dict) -> Path:
        return self.output_dir / stage["name"]

    def load_config(self, stage: dict) -> dict:
        config = stage.get("config") or {}
        if isinstance(config, str):
            path = Path(config) if Path(config).is_absolute() else self.base_dir / config
            if not path.exists():
                raise MissingPathError(f"stage {stage['name']!r}: config file {str(path)!r} does not exist")
            config = yaml.safe_load(path.read_text())
        config = merge_config(copy.deepcopy(config), stage.get("overrides") or {})
        for key, source in (stage.get("inputs") or {}).items():
            set_dotted(config, key, self.outputs[source])
        if self.seed is not None:
            config["seed_everything" if stage.get("kind", "fit") == "fit" else "seed"] = self.seed
        return config

    def run(self, from_stage: str | None = None) -> list[dict[str, Any]]:
        names = [s["name"] for s in self.stages]
        if from_stage is not None and from_stage not in names:
            raise ValueError(f"--from_stage {from_stage!r} is not a stage; stages: {names}")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with OutputDirLock(self.output_dir):
            return self._run_stages(from_stage)

    def _run_stages(self, from_stage: str | None) -> list[dict[str, Any]]:
        redo = False
        for stage in self.stages:
            redo = redo or stage["name"] == from_stage
            marker = self.stage_dir(stage) / "stage.json"
            if redo and self.stage_dir(stage).exists():
                shutil.rmtree(self.stage_dir(stage))
            if marker.exists():
                record = json.loads(marker.read_text())
                log.warning(
                    "pipeline %s: stage %r already finished, skipped (its output: %s)",
                    self.name,
                    stage["name"],
                    record["output"],
                )
            else:
                interrupted = self.stage_dir(stage) / "interrupted.json"
                try:
                    record = self.run_stage(stage)
                except Preempted as stop:
                    # Unfinished: no stage.json; the next `pipeline` call resumes this stage from its checkpoint.
                    interrupted.write_text(
                        json.dumps(
                            {"status": "interrupted", "step": stop.step, "checkpoint": stop.checkpoint}, indent=2
                        )
                    )
                    log.warning(
                        "pipeline %s: stage %r interrupted at step %d; run the same command to resume it",
                        self.name,
                        stage["name"],
                        stop.step,
                    )
                    raise
                interrupted.unlink(missing_ok=True)
                marker.write_text(json.dumps(record, indent=2))
            self.outputs[stage["name"]] = record["output"]
            self.records.append(record)
            write_report(self.output_dir, self.records, self.evaluator.k, self.comparisons)
        log.warning("pipeline %s finished; report: %s", self.name, self.output_dir / "report.md")
        return self.records

    def run_stage(self, stage: dict) -> dict[str, Any]:
        kind, directory = stage.get("kind", "fit"), self.stage_dir(stage)
        directory.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        position = next(i for i, s in enumerate(self.stages) if s["name"] == stage["name"]) + 1
        log.warning(
            "pipeline %s: stage %d/%d %r (%s) starting; %s elapsed since the pipeline started",
            self.name,
            position,
            len(self.stages),
            stage["name"],
            kind,
            format_seconds(time.perf_counter() - self.started),
        )
        summary = None
        evaluate = stage.get("evaluate", True)
        if kind == "fit":
            config = self.load_config(stage)
            output = self.run_fit(stage, config, directory)
            evaluate = evaluate and REWARD_MODEL_CLASS not in json.dumps(config.get("model", {}))
        elif kind == "rejection_sampling":
            output, summary = self.run_rejection_sampling(stage, directory)
            evaluate = False
        else:
            output = self.outputs[stage["inputs"]["model"]] if stage.get("inputs") else stage["model"]
        evaluator = self.benchmark_evaluator(stage) if stage.get("benchmark") is not None else self.evaluator
        metrics = evaluator(output, label=f"pipeline {self.name}: stage {stage['name']!r}") if evaluate else None
        return {
            "name": stage["name"],
            "kind": kind,
            "output": str(output),
            "metrics": metrics,
            "summary": summary,
            "seconds": time.perf_counter() - started,
        }

    def benchmark_evaluator(self, stage: dict) -> Evaluator:
        """The pipeline's evaluation protocol on every row of the stage's benchmark file (a relative
        path is looked up from the working directory, then beside the pipeline YAML)."""
        spec = stage["benchmark"]
        spec = {"path": spec} if isinstance(spec, str) else dict(spec)
        path = Path(str(spec.get("path", "")))
        if not path.is_absolute() and not path.exists() and (self.base_dir / path).exists():
            spec["path"] = str(self.base_dir / path)
        evaluator = copy.copy(self.evaluator)
        evaluator.source = benchmark_source(spec, where=f"stage {stage['name']!r} benchmark")
        return evaluator

    def run_fit(self, stage: dict, config: dict, directory: Path) -> str:
        for override in self.fit_overrides:
            config = merge_config(config, override)
        export = directory / "hf_model"
        set_dotted(config, "model.init_args.export_dir", str(export))
        trainer = config.setdefault("trainer", {})
        # One log folder per stage (version 0): a resumed stage continues its metrics.csv.
        csv_logger = {
            "class_path": "lightning.pytorch.loggers.CSVLogger",
            "init_args": {"save_dir": str(directory), "name": "logs", "version": 0},
        }
        user_logger = trainer.get("logger")
        trainer["logger"] = [csv_logger] + ([user_logger] if isinstance(user_logger, dict) else list(user_logger or []))
        trainer["default_root_dir"] = str(directory)
        trainer["enable_checkpointing"] = True
        checkpoints = [cb for cb in trainer.get("callbacks") or [] if "ModelCheckpoint" not in cb.get("class_path", "")]
        checkpoints.append(
            {
                "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                "init_args": {
                    "dirpath": str(directory / "checkpoints"),
                    "save_last": True,
                    "save_top_k": 0,
                    "every_n_train_steps": int(stage.get("checkpoint_every", 10)),
                },
            }
        )
        if not any("StepProgressCallback" in cb.get("class_path", "") for cb in checkpoints):
            checkpoints.append(
                {
                    "class_path": "r1_lightning.callbacks.StepProgressCallback",
                    "init_args": {"description": f"pipeline {self.name}: stage {stage['name']!r}"},
                }
            )
        trainer["callbacks"] = checkpoints
        config_path = directory / "fit_config.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        args = ["fit", "--config", str(config_path)]
        checkpoints = directory / "checkpoints"
        if checkpoints.is_dir() and any(checkpoints.glob("*.ckpt")):
            # `last`: the CLI picks the newest intact checkpoint and continues the stage's metrics.csv
            log.warning(
                "pipeline %s: stage %r resumes from its checkpoints in %s", self.name, stage["name"], checkpoints
            )
            args += ["--ckpt_path", "last"]
        processes = process_count(trainer)
        if processes == 1:
            run_lightning_cli(args)
        else:
            self.launch_fit(stage, args, processes)
        if not (export / "config.json").exists():
            raise RuntimeError(f"stage {stage['name']!r} finished without exporting a model to {export}")
        return str(export)

    def launch_fit(self, stage: dict, args: list[str], processes: int) -> None:
        """A fit stage on several processes runs as its own launched process group (``r1-lightning fit``,
        whose launcher starts the other ranks), so that only this one pipeline process walks the stages,
        holds the output folder's lock and writes the report. Its output goes to this console."""
        log.warning("pipeline %s: stage %r runs on %d processes", self.name, stage["name"], processes)
        result = subprocess.run([sys.executable, "-m", "r1_lightning.cli", *args], check=False)
        if result.returncode in (128 + signal.SIGTERM, 128 + signal.SIGINT, 128 + signal.SIGUSR1):
            raise Preempted(result.returncode - 128, None, -1)  # its checkpoint is in the stage folder
        if result.returncode != 0:
            raise ConfigError(
                f"stage {stage['name']!r}: `r1-lightning fit` on {processes} processes exited with "
                f"{result.returncode} (its output is above); fix that and run the same command to resume"
            )

    def run_rejection_sampling(self, stage: dict, directory: Path) -> tuple[str, str]:
        config = self.load_config(stage)
        config["output_dir"] = str(directory)
        config.setdefault("progress_label", f"pipeline {self.name}: stage {stage['name']!r}")
        parser = ArgumentParser()
        parser.add_class_arguments(RejectionSampler, "sampler")
        sampler = parser.instantiate_classes(parser.parse_object({"sampler": config})).sampler
        stats = sampler.run()
        dropped = ", ".join(f"{k} {v}" for k, v in stats["dropped"].items() if v)
        summary = (
            f"kept {stats['kept']} of {stats['samples']} samples ({stats['prompts_with_kept']} of "
            f"{stats['prompts']} prompts); dropped: {dropped or 'none'}; +{stats['non_reasoning']} non-reasoning"
        )
        return str(directory / "dataset"), summary


def pipeline_main(args: list[str]) -> list[dict[str, Any]]:
    """Entry point of ``r1-lightning pipeline``."""
    cfg = pipeline_parser().parse_args(args)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return load_pipeline(cfg.config, cfg.output_dir, cfg.seed, cfg.fit_config).run(cfg.from_stage)
