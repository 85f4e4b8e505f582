"""``qft train``: vanilla vs spectral vs Frobenius transformers on genomic and text tasks."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from qft_cli.cli.common import (
    BASELINE_OPTION,
    CLASS_FILE_OPTION,
    SPLIT_SIZES_OPTION,
    DEVICE_OPTION,
    FORMAT_OPTION,
    OUT_OPTION,
    QUIET_OPTION,
    THREADS_OPTION,
    TRUST_OPTION,
    ResumedRun,
    argv,
    check_format,
    cli_errors,
    print_estimate,
    print_notes,
    print_test_table,
    progress_bar,
)


@cli_errors
def train_command(
    dataset: str = typer.Option("genomic-bench", "--dataset", help="genomic-bench | gue | conll2003 (POS tagging) | synthetic-dna (qft demo's files, --data-dir)."),
    task: Optional[str] = typer.Option(None, "--task", help="GUE task (default: the task folder --data-dir holds or is, else prom_300_notata); gue only."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Offline data: CSV/TSV train/dev/test (sequence|seq,label) or CoNLL train/valid/test.txt; or FASTA (.fa/.fasta/.fna, .gz too): 0.fa, 1.fa per class, one file with label= headers, or train/dev/test FASTA."),
    num_labels: Optional[int] = typer.Option(None, "--num-labels", help="Classes of a DNA task (default: the task's own, e.g. 2 for promoters); labels outside 0..K-1 are refused."),
    tokenizer: str = typer.Option("auto", "--tokenizer", help="DNA: dnabert2 | bpe:V | kmer:K | char | PATH (a tokenizer.json or a directory) (auto = the embedding model's, else dnabert2). Text: a model alias."),
    max_length: int = typer.Option(512, "--max-length", help="Truncate inputs to this many tokens."),
    norm: str = typer.Option("all", "--norm", help="all (= vanilla,spectral,frobenius) | vanilla (none) | spectral | frobenius, or a list like vanilla,frobenius; every variant sees the same data order and initial weights."),
    subnormalised: bool = typer.Option(False, "--subnormalised", help="Also run each normalised variant with a learnable scale gamma <= --max-gamma (default 1): <method>_subnormalised."),
    targets: str = typer.Option("attention,ffn", "--targets", help="Matrices to normalise: attention, ffn, attention,ffn (or q,k,v,o,ffn_up,ffn_down)."),
    max_gamma: Optional[float] = typer.Option(None, "--max-gamma", help="Learnable scale gamma = G*sigmoid(g) (effective norm <= G; 1 = sub-normalised)."),
    d_model: int = typer.Option(768, "--d-model", help="Hidden width."),
    num_heads: int = typer.Option(12, "--num-heads", help="Attention heads."),
    d_ff: int = typer.Option(3072, "--d-ff", help="FFN inner width."),
    num_layers: int = typer.Option(1, "--num-layers", help="Transformer blocks."),
    dropout: float = typer.Option(0.1, "--dropout", help="Dropout (FFN, attention, classifier)."),
    embedding_from: Optional[str] = typer.Option(None, "--embedding-from", help="Initialise the token embedding from this model (dnabert = the research's; minilm offline). --d-model must match its width."),
    freeze_embedding: bool = typer.Option(False, "--freeze-embedding", help="Do not train the pretrained embedding."),
    max_train_samples: Optional[int] = typer.Option(None, "--max-train-samples", help="Train on a seeded random subset of this size."),
    max_eval_samples: Optional[int] = typer.Option(None, "--max-eval-samples", help="Seeded subsets of validation and test (quick runs)."),
    learning_rate: float = typer.Option(8e-4, "--learning-rate", help="Peak AdamW learning rate."),
    num_epochs: float = typer.Option(100, "--num-epochs", help="Epochs (upper bound with early stopping; fractions allowed)."),
    early_stopping: int = typer.Option(10, "--early-stopping", help="Patience in epochs without better validation F1 (0 = off)."),
    weight_decay: float = typer.Option(0.01, "--weight-decay", help="AdamW weight decay."),
    lr_scheduler_type: str = typer.Option("cosine", "--lr-scheduler-type", help="cosine | linear | constant | ... (transformers names)."),
    warmup_ratio: float = typer.Option(0.0, "--warmup-ratio", help="Fraction of steps of linear warmup."),
    batch_size: int = typer.Option(32, "--batch-size", help="Training batch per device."),
    eval_batch_size: Optional[int] = typer.Option(None, "--eval-batch-size", help="Evaluation batch (default: --batch-size)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of init, data order, dropout and splits (default 42)."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Several seeds, e.g. 0,1,2: every variant runs once per seed; the table shows mean and 95% t interval (not with --seed)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after this many optimiser steps."),
    eval_strategy: str = typer.Option("epoch", "--eval-strategy", help="epoch | no (no validation: needs --early-stopping 0)."),
    mixed_precision: str = typer.Option("auto", "--mixed-precision", help="auto (bf16/fp16 on CUDA only) | no | fp16 | bf16."),
    device: str = DEVICE_OPTION,
    class_file: Optional[List[str]] = CLASS_FILE_OPTION,
    split_sizes: Optional[str] = SPLIT_SIZES_OPTION,
    baseline: str = BASELINE_OPTION,
    out: Path = OUT_OPTION,
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue an interrupted run directory with the options in its run.json (other options are ignored)."),
    trust_remote_code: bool = TRUST_OPTION,
    threads: Optional[int] = THREADS_OPTION,
    fmt: str = FORMAT_OPTION,
    quiet: bool = QUIET_OPTION,
) -> None:
    """Train qft's transformer (--num-layers blocks, default 1) vanilla, spectral- and Frobenius-normalised; compare test accuracy and F1."""
    from qft_cli.runs.rundir import read_run_json
    from qft_cli.train.training import (
        ExperimentOptions,
        TrainingConfig,
        from_jsonable,
        open_run,
        parse_seeds,
        run_experiment,
    )

    check_format(fmt)
    if resume is not None:
        from qft_cli.system.errors import QftInputError

        if not (Path(resume) / "run.json").is_file():
            raise QftInputError(f"--resume {resume} is not a run directory (no run.json): pass the directory of the "
                                "interrupted qft train run")
        try:
            meta = read_run_json(resume)
        except ValueError as err:
            raise QftInputError(f"--resume {resume}: run.json is not valid JSON ({err}): pass the directory of an "
                                "interrupted qft train run") from None
        if not isinstance(meta, dict) or meta.get("command") != "train" or not isinstance(meta.get("options"), dict):
            raise QftInputError(f"--resume {resume} is not a qft train run (run.json of command "
                                f"{meta.get('command') if isinstance(meta, dict) else None!r}, or without options)")
        options = from_jsonable(meta["options"])
    else:
        seed, seed_list = parse_seeds(seeds, seed)
        training = TrainingConfig(
            learning_rate=learning_rate, num_epochs=num_epochs, early_stopping=early_stopping, weight_decay=weight_decay,
            lr_scheduler_type=lr_scheduler_type, warmup_ratio=warmup_ratio, batch_size=batch_size,
            eval_batch_size=eval_batch_size, seed=seed, max_steps=max_steps, eval_strategy=eval_strategy,
            mixed_precision=mixed_precision, device=device)
        options = ExperimentOptions(
            dataset=dataset, task=task, data_dir=str(data_dir) if data_dir else None, tokenizer=tokenizer,
            max_length=max_length, norm=norm, targets=targets, max_gamma=max_gamma, d_model=d_model,
            num_heads=num_heads, d_ff=d_ff, num_layers=num_layers, dropout=dropout, embedding_from=embedding_from,
            freeze_embedding=freeze_embedding, max_train_samples=max_train_samples,
            max_eval_samples=max_eval_samples,
            trust_remote_code=trust_remote_code, subnormalised=subnormalised, seeds=seed_list, num_labels=num_labels,
            class_files=list(class_file) if class_file else None, split_sizes=split_sizes,
            baseline=baseline, training=training)
    options.validate()
    from qft_cli.system.threads import configure_threads

    thread_choice = configure_threads(threads)
    run = open_run(options, out=out, argv=argv(), resume_dir=resume)
    with progress_bar(quiet or not run.is_main_process) as progress, (ResumedRun(run) if resume is not None else run):
        run.update(threads=thread_choice.count, threads_source=thread_choice.source)
        result = run_experiment(options, run, resume=resume is not None, progress=progress,
                                on_estimate=print_estimate if run.is_main_process else None,
                                on_notes=print_notes if run.is_main_process else None)
    if not run.is_main_process:
        return
    title = f"qft train: {options.dataset}{'/' + result.task if result.task else ''}, test split"
    print_test_table(title, result.test_summary, run.path, fmt, result.epochs())

