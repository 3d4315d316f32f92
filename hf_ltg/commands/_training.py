"""Options and steps shared by the training commands (pretrain, finetune-cls, finetune-instruct)."""

import json
import os
from pathlib import Path

from ._output import OVERWRITE_HELP, check_output
from ._precision import add_training_precision_options, note_if_emulated, training_dtype


def add_training_options(parser, *, output: str, max_length: int | None, epochs: float, batch_size: int,
                         learning_rate: float, eval_steps: int, logging_steps: int = 10, max_steps: int = -1,
                         time_limit: float | None = None, fsdp: bool = False, max_length_default: str = "%(default)s"):
    """The options every training command shares. `max_length_default` describes a default that
    the command works out itself (max_length None)."""
    group = parser.add_argument_group("training")
    group.add_argument("--output", default=output, help="final checkpoint folder, written atomically: new, empty or "
                                                         "(with --overwrite) a previous checkpoint (default: %(default)s)")
    group.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    group.add_argument("--work-dir", help="Trainer folder for intermediate checkpoints and curves "
                                          "(default: runs/<name of --output>)")
    group.add_argument("--max-length", type=int, default=max_length,
                       help=f"tokens per example (default: {max_length_default})")
    group.add_argument("--epochs", type=float, default=epochs, help="default: %(default)s")
    group.add_argument("--max-steps", type=int, default=max_steps,
                       help="optimizer steps; overrides --epochs when > 0 (default: %(default)s)")
    group.add_argument("--batch-size", type=int, default=batch_size, help="per process (default: %(default)s)")
    group.add_argument("--gradient-accumulation-steps", type=int, default=1)
    group.add_argument("--learning-rate", type=float, default=learning_rate, help="default: %(default)s")
    group.add_argument("--weight-decay", type=float, default=0.1)
    group.add_argument("--warmup", type=float, default=0.05, help="warmup steps, or a fraction of them if < 1")
    group.add_argument("--seed", type=int, default=42)
    group.add_argument("--logging-steps", type=int, default=logging_steps)
    group.add_argument("--eval-steps", type=int, default=eval_steps)
    group.add_argument("--save-steps", type=int, help="intermediate checkpoint interval (default: --eval-steps)")
    group.add_argument("--resume", action="store_true",
                       help="resume an interrupted run from the last checkpoint in --work-dir")
    group.add_argument("--time-limit", type=float, default=time_limit,
                       help="fit the run into this many seconds of training, shortening it and its schedule if the "
                            "machine is slow (single process only; 0 disables; default: %(default)s)")
    add_training_precision_options(group)
    if fsdp:
        group.add_argument("--fsdp", action="store_true",
                           help="shard weights, gradients and optimizer state across the processes (FSDP2, one "
                                "unit per block) instead of replicating them (DDP); needs a multi-process launch "
                                "(torchrun or accelerate launch)")


def check_no_freeze_with_adapter(args) -> None:
    if args.freeze not in ("all", "none"):
        raise ValueError(f"--freeze {args.freeze} and --adapter {args.adapter} both choose what trains; "
                         "an adapter trains only its own weights (and the task head): drop --freeze.")


def check_output_option(args, source=None) -> None:
    """Refuse --output before training: not the source checkpoint, not the work folder, and not a
    folder that holds anything but a previous checkpoint (that one only with --overwrite)."""
    check_output(args.output, args.overwrite, [source, work_dir(args)])


def work_dir(args) -> Path:
    return Path(args.work_dir) if args.work_dir else Path("runs") / Path(args.output).name


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_fsdp_launch(args) -> None:
    """Refuse --fsdp in a single process (the Trainer would, but only once the tokenizer and model are made)."""
    if getattr(args, "fsdp", False) and world_size() == 1:
        raise ValueError(f"--fsdp shards the model across processes, but this is a single process (WORLD_SIZE=1); "
                         f"launch it with `torchrun --nproc_per_node=N -m hf_ltg {args.command} --fsdp ...` (N >= 2) "
                         f"or drop --fsdp.")


def made_on_main_process(make):
    """`make()` on the main process only, its result (pickled) given to every process. For what all
    processes must agree on but would not make alike: WordPiece training breaks ties differently in
    each process, and processes whose vocabularies differ cannot train one model."""
    if world_size() == 1:
        return make()
    import torch
    import torch.distributed as dist
    from accelerate import PartialState

    # The process group the Trainer joins later (backend as in training.training_arguments).
    cuda = torch.cuda.is_available()
    state = PartialState(cpu=not cuda, backend="nccl" if cuda else "gloo")
    result = [make() if state.is_main_process else None]
    dist.broadcast_object_list(result, src=0, device=state.device)
    return result[0]


def trainer_arguments(args, **overrides):
    from ..training import training_arguments

    save_steps = args.save_steps or args.eval_steps
    check_fsdp_launch(args)
    if args.bf16 or args.fp16:
        note_if_emulated(training_dtype(args), f"drop --{'bf16' if args.bf16 else 'fp16'}")
    return training_arguments(
        work_dir(args),
        fsdp=getattr(args, "fsdp", False),
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup,
        lr_scheduler_type="cosine",
        seed=args.seed,
        data_seed=args.seed,
        logging_steps=args.logging_steps,
        eval_steps=args.eval_steps,
        save_steps=save_steps,
        bf16=args.bf16,
        fp16=args.fp16,
        **overrides,
    )


def callbacks(args) -> list:
    from ..training import TimeLimitCallback

    if args.time_limit and world_size() == 1:
        return [TimeLimitCallback(args.time_limit)]
    return []


def resume_checkpoint(args) -> Path | None:
    """With --resume, the work folder's last complete checkpoint (incomplete ones are named and
    skipped), looked up once, before any work; None without --resume."""
    if not getattr(args, "resume", False):
        return None
    if getattr(args, "resume_from", None) is None:
        from ..training import checkpoint_problem, checkpoints_by_step

        folder = work_dir(args)
        for checkpoint in reversed(checkpoints_by_step(folder) if folder.is_dir() else []):
            problem = checkpoint_problem(checkpoint)
            if problem is None:
                args.resume_from = Path(checkpoint)
                break
            if os.environ.get("RANK", "0") == "0":
                print(f"--resume: skipping the incomplete {checkpoint} ({problem})", flush=True)
        else:
            raise FileNotFoundError(f"--resume: no complete checkpoint-* folder in {folder} to resume from; "
                                    "run without --resume.")
    return args.resume_from


# Config sizes a resumed run must share with its checkpoint -> the option that sets them.
RESUMED_SIZES = {
    "vocab_size": "the tokenizer (--vocab-size, --tokenizer)",
    "hidden_size": "--hidden-size",
    "num_hidden_layers": "--num-layers",
    "num_attention_heads": "--num-heads",
    "intermediate_size": "--hidden-size",
    "max_position_embeddings": "--max-length",
}


def check_resumable(args, config, set_by: str | None = None) -> None:
    """Refuse --resume, before any work, when this run's model (`config`) is not the size of the
    checkpoint it would resume: the weights would not load. `set_by` names the option that sizes
    the model when it is not the pretraining options (`RESUMED_SIZES`), e.g. "--model"."""
    checkpoint = resume_checkpoint(args)
    if checkpoint is None or not (checkpoint / "config.json").is_file():  # an adapter: sized by its base
        return
    saved = json.loads((checkpoint / "config.json").read_text())
    differences = [f"{name} {saved[name]} there, {getattr(config, name)} here ({set_by or option})"
                   for name, option in RESUMED_SIZES.items()
                   if name in saved and getattr(config, name, saved[name]) != saved[name]]
    if differences:
        raise ValueError(f"--resume: {checkpoint} holds a model of other sizes than this run's options make: "
                         f"{'; '.join(differences)}. Resume with the options of the interrupted run, or start anew "
                         "without --resume (or with another --work-dir).")


def resumed_tokenizer(args):
    """The tokenizer of the checkpoint --resume continues (the run trained it or took it from
    --tokenizer; training one again may give another vocabulary), else None."""
    checkpoint = resume_checkpoint(args)
    if checkpoint is None:
        return None
    from ..tokenization import load_tokenizer

    return load_tokenizer(checkpoint)


def train(trainer, args):
    """Run `trainer.train`, resuming with --resume from the work folder's last complete checkpoint
    (incomplete ones are named and skipped)."""
    resume = resume_checkpoint(args)
    if resume is not None and trainer.is_world_process_zero():
        print(f"resuming from {resume}", flush=True)
    return trainer.train(resume_from_checkpoint=None if resume is None else str(resume))


def report_losses(trainer) -> Path:
    """One summary line per process (first and last logged training loss); every logged value goes to
    `training_losses.json` in the work folder (`training_losses.rank{i}.json` under DDP, where the
    ranks' values are equal). Returns that file."""
    logged = [(entry["step"], round(entry["loss"], 4)) for entry in trainer.state.log_history if "loss" in entry]
    world = trainer.args.world_size
    name = f"training_losses.rank{trainer.args.process_index}.json" if world > 1 else "training_losses.json"
    path = Path(trainer.args.output_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([loss for _, loss in logged]))
    prefix = f"[rank {trainer.args.process_index}/{world}] " if world > 1 else ""
    if logged:
        (first_step, first), (last_step, last) = logged[0], logged[-1]
        print(f"{prefix}training loss {first:.3f} (step {first_step}) -> {last:.3f} (step {last_step}); "
              f"{len(logged)} logged values in {path}", flush=True)
    return path


def save(trainer, out, tokenizer, generation_config=None, merge=False) -> None:
    """Write the final checkpoint (or adapter, or merged LoRA checkpoint) from the main process only
    (every process calls this: under FSDP they gather the weights together)."""
    from ..adapters import save_adapter_or_merged

    model = trainer.trained_model()
    if trainer.is_world_process_zero():
        if generation_config is not None:
            model.generation_config = generation_config
        save_adapter_or_merged(model, out, tokenizer=tokenizer, merge=merge, generation_config=generation_config)
        print(f"wrote {Path(out).resolve()}", flush=True)


def default_generation_config(tokenizer, max_new_tokens: int = 60):
    from transformers import GenerationConfig

    return GenerationConfig(
        bos_token_id=tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=True,
        temperature=0.8,
        top_k=40,
        max_new_tokens=max_new_tokens,
    )


def load_checkpoint_tokenizer(model_dir):
    from ..tokenization import load_tokenizer

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(
            f"No checkpoint folder at {model_dir}; train one with `hf-ltg pretrain` or pass --model FOLDER."
        )
    return load_tokenizer(model_dir)


# Head-class suffixes of the checkpoints that score and generate text (a language-model head).
LANGUAGE_MODEL_HEADS = ("ForCausalLM", "LMHeadModel", "ForMaskedLM")


def check_language_model(model_dir, command: str) -> None:
    """Refuse, in one line before any work, a folder that `hf-ltg command` cannot score or generate
    with: an ONNX export (no PyTorch weights) or a classifier (its language-model head never trained)."""
    from ..hub.sources import WEIGHT_FILES

    folder = Path(model_dir)
    if (folder / "model.onnx").is_file() and not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise ValueError(f"{folder} is an ONNX export (model.onnx, no PyTorch weights), which hf-ltg {command} "
                         "cannot load; give the checkpoint it was exported from, or run it with onnxruntime "
                         "(optimum's ORTModelForCausalLM).")
    config = folder / "config.json"
    if not config.is_file():
        return
    architectures = json.loads(config.read_text()).get("architectures") or []
    if architectures and not any(name.endswith(LANGUAGE_MODEL_HEADS) for name in architectures):
        raise ValueError(f"{folder} is a {architectures[0]} checkpoint, a classifier: its language-model head was "
                         f"never trained, so hf-ltg {command} would read nonsense from it; give a causal or masked "
                         "language-model checkpoint (e.g. the one it was fine-tuned from).")

