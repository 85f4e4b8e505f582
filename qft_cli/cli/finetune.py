"""``qft finetune MODEL``: fine-tune a pretrained model with normalised weight matrices."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer

from qft_cli.cli.common import (
    BASELINE_OPTION,
    CLASS_FILE_OPTION,
    SPLIT_SIZES_OPTION,
    DEVICE_OPTION,
    DTYPE_OPTION,
    FORMAT_OPTION,
    OUT_OPTION,
    QUIET_OPTION,
    THREADS_OPTION,
    TRUST_OPTION,
    ResumedRun,
    argv,
    check_format,
    cli_errors,
    err_console,
    print_estimate,
    print_notes,
    print_test_table,
    progress_bar,
    short_model_name,
)
from qft_cli.system.errors import QftInputError


@cli_errors
def finetune_command(
    model: str = typer.Argument(..., help="Alias (dnabert, minilm, tiny-bert, tiny-dnabert, ...), Hugging Face id, "
                                          "local model directory, or a `qft train` run directory (its best checkpoint)."),
    dataset: str = typer.Option("genomic-bench", "--dataset", help="genomic-bench | gue | conll2003 (POS tagging) | synthetic-dna (qft demo's files, --data-dir)."),
    task: Optional[str] = typer.Option(None, "--task", help="GUE task (default: the task folder --data-dir holds or is, else prom_300_notata)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Local files: train/dev/test CSV (sequence,label) or CoNLL text; or FASTA (.fa/.fasta/.fna, .gz too): 0.fa, 1.fa per class, one file with label= headers, or train/dev/test FASTA."),
    num_labels: Optional[int] = typer.Option(None, "--num-labels", help="Classes of a DNA task (default: the task's own, e.g. 2 for promoters); labels outside 0..K-1 are refused."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="Default: MODEL's own. A model name, a path "
                                                                      "(tokenizer.json or a directory), or a DNA tokenizer: dnabert2, bpe:V, kmer:K, char."),
    norm: str = typer.Option("all", "--norm", help="all (= vanilla,spectral,frobenius, as in qft train) | vanilla (none) | spectral | frobenius, or a list like vanilla,frobenius; every variant starts from the same weights and data order."),
    subnormalised: bool = typer.Option(False, "--subnormalised", help="Also run each normalised variant with a learnable scale gamma <= --max-gamma (default 1): <method>_subnormalised."),
    targets: str = typer.Option("attention,ffn", "--targets", help="attention | ffn | attention,ffn (or matrix names q,k,v,o,ffn_up,...)."),
    layers: str = typer.Option("all", "--layers", help="all | 1,3 | 1-4 (1-indexed transformer blocks)."),
    max_gamma: Optional[float] = typer.Option(None, "--max-gamma", help="Learnable scale, effective norm <= G (1 = sub-normalised)."),
    learning_rate: float = typer.Option(2e-4, "--learning-rate"),
    num_epochs: float = typer.Option(200, "--num-epochs", help="Epochs (upper bound with early stopping; fractions allowed)."),
    early_stopping: int = typer.Option(25, "--early-stopping", help="Patience in epochs on validation F1 (0 = off)."),
    weight_decay: float = typer.Option(0.01, "--weight-decay"),
    lr_scheduler_type: str = typer.Option("cosine", "--lr-scheduler-type"),
    warmup_ratio: float = typer.Option(0.1, "--warmup-ratio"),
    batch_size: int = typer.Option(128, "--batch-size"),
    eval_batch_size: int = typer.Option(256, "--eval-batch-size"),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the new head, data order and dropout (default 42)."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Several seeds, e.g. 0,1,2: every variant runs once per seed; the table shows mean and 95% t interval (not with --seed)."),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="Token limit (default: the tokenizer's, <= 512)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after this many optimiser steps."),
    max_train_samples: Optional[int] = typer.Option(None, "--max-train-samples", help="Seeded subset of the training split."),
    max_eval_samples: Optional[int] = typer.Option(None, "--max-eval-samples", help="Seeded subsets of validation and test."),
    mixed_precision: str = typer.Option("auto", "--mixed-precision", help="auto (bf16/fp16 on CUDA) | no | fp16 | bf16."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue an interrupted finetune run directory."),
    export: Optional[Path] = typer.Option(None, "--export", help="Write the fine-tuned model(s), normalisation folded, "
                                                                 "as safetensors for stock transformers."),
    class_file: Optional[List[str]] = CLASS_FILE_OPTION,
    split_sizes: Optional[str] = SPLIT_SIZES_OPTION,
    baseline: str = BASELINE_OPTION,
    out: Path = OUT_OPTION,
    device: str = DEVICE_OPTION,
    dtype: str = DTYPE_OPTION,
    trust_remote_code: bool = TRUST_OPTION,
    threads: Optional[int] = THREADS_OPTION,
    fmt: str = FORMAT_OPTION,
    quiet: bool = QUIET_OPTION,
) -> None:
    """Fine-tune MODEL on a classification dataset with spectral/Frobenius-normalised matrices."""
    from qft_cli.runs.rundir import RUN_JSON, Run
    from qft_cli.system.device import resolve_device, resolve_dtype
    from qft_cli.train.finetune import FinetuneSettings, finetune
    from qft_cli.train.training import parse_seeds

    check_format(fmt)
    seed, seed_list = parse_seeds(seeds, seed)
    settings = FinetuneSettings(norm=norm, targets=targets, layers=layers, max_gamma=max_gamma, subnormalised=subnormalised,
                                learning_rate=learning_rate, num_epochs=num_epochs, early_stopping=early_stopping,
                                weight_decay=weight_decay, lr_scheduler_type=lr_scheduler_type,
                                warmup_ratio=warmup_ratio, batch_size=batch_size, eval_batch_size=eval_batch_size,
                                seed=seed, max_length=max_length, max_steps=max_steps,
                                max_train_samples=max_train_samples, max_eval_samples=max_eval_samples,
                                mixed_precision=mixed_precision, seeds=seed_list, num_labels=num_labels,
                               class_files=list(class_file) if class_file else None,
                               split_sizes=split_sizes, baseline=baseline)
    torch_device, torch_dtype = resolve_device(device), resolve_dtype(dtype)
    from qft_cli.system.threads import configure_threads

    thread_choice = configure_threads(threads)
    if resume is not None and not (resume / RUN_JSON).is_file():
        raise QftInputError(f"--resume {resume} is not a run directory (no run.json): pass the directory of the "
                            "interrupted qft finetune run")
    if resume is not None:
        from qft_cli.runs.rundir import read_run_json

        try:
            command = read_run_json(resume).get("command")
        except (ValueError, AttributeError):
            command = None
        if command != "finetune":
            raise QftInputError(f"--resume {resume} is not a qft finetune run (run.json of command {command!r}): "
                                "pass the directory of the interrupted qft finetune run")
    options = {**settings.__dict__, "model": model, "dataset": dataset, "task": task,
               "data_dir": str(data_dir) if data_dir else None, "tokenizer": tokenizer,
               "export": str(export) if export else None, "device": device, "dtype": dtype,
               "trust_remote_code": trust_remote_code}
    main = int(os.environ.get("RANK", "0")) == 0
    run = Run("finetune", [model], options, out=out, argv=argv(), is_main_process=main)
    if resume is not None:
        from qft_cli.runs.provenance import resume_meta

        run.path, run.meta = resume, resume_meta(resume)
    elif main:
        run.create()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # every rank uses rank 0's directory
        from accelerate import PartialState
        from accelerate.utils import broadcast_object_list

        PartialState(cpu=torch_device.type == "cpu")
        box = [str(run.path) if main else None]
        broadcast_object_list(box, from_process=0)
        run.path = Path(box[0])
    with (ResumedRun(run) if resume is not None else run):
        run.update(device=str(torch_device), threads=thread_choice.count, threads_source=thread_choice.source)
        with progress_bar(quiet or not main) as progress:
            result = finetune(model, dataset=dataset, settings=settings, run=run, data_dir=data_dir, task=task,
                              tokenizer_name=tokenizer, device=torch_device.type, dtype=torch_dtype,
                              trust_remote_code=trust_remote_code, export_dir=export, resume=resume is not None,
                              progress=progress, on_estimate=print_estimate if main else None,
                              on_notes=print_notes if main else None)
        run.update(model_id=result.model_id, data_location=result.data_source, num_labels=result.num_labels,
                   task_kind=result.kind, max_length=result.max_length, sizes=result.sizes)
    if not main:
        return
    if result.new_parameters:
        shown = ", ".join(result.new_parameters[:6]) + (", ..." if len(result.new_parameters) > 6 else "")
        seed_text = ",".join(map(str, seed_list)) if seed_list else str(seed)
        err_console.print(f"new: {len(result.new_parameters)} parameters not in the checkpoint of {model}, "
                          f"initialised from seed {seed_text} (run.json new_parameters): {shown}", markup=False)
    what = f"{dataset}{'/' + result.task if result.task else ''}"
    print_test_table(f"qft finetune {short_model_name(model)} on {what}: test split", result.test_summary, run.path, fmt,
                     result.epochs())

