"""`hf-ltg export`: a Hub-ready folder (weights, code, tokenizer, model card) from a checkpoint, or
(--onnx) an ONNX Runtime folder, or (--gguf) a llama.cpp GGUF file."""

from pathlib import Path

from ._output import add_overwrite_option, check_output


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "export",
        help="write a complete Hub-ready folder with a model card (or --native: stock GPT-2)",
        description="Write OUT, a self-contained Hub-ready folder: safetensors weights (sharded above "
        "--max-shard-size), config with the full auto_map, code, tokenizer, generation config and a model card. "
        "SRC is an hf_ltg checkpoint, a Trainer output folder (its final model, else its latest checkpoint-N) or "
        "a peft adapter folder (with --merge). With --native, OUT is a stock gpt2 checkpoint needing no remote code. "
        "With --onnx OUT_DIR or --gguf OUT.gguf (instead of OUT): an ONNX Runtime folder (causal LMs with the KV "
        "cache as inputs and outputs) or a llama.cpp file (GPT causal LMs, GPT-2 architecture).",
    )
    parser.add_argument("src", metavar="SRC", help="checkpoint, Trainer output or peft adapter folder")
    parser.add_argument("out", metavar="OUT", nargs="?", help="output folder, written atomically: new, empty or (with "
                                                              "--overwrite) a previous checkpoint")
    add_overwrite_option(parser)
    parser.add_argument("--native", action="store_true",
                        help="write stock GPT-2 classes (LTG GPT checkpoints only): no trust_remote_code needed")
    parser.add_argument("--onnx", metavar="OUT_DIR",
                        help="write an ONNX Runtime folder instead: model.onnx (causal LM: input_ids, attention_mask, "
                             "past_key_values.N.key/value -> logits, present.N.key/value), config, tokenizer, "
                             "genai_config.json")
    parser.add_argument("--task", choices=["causal-lm", "masked-lm", "sequence-classification", "token-classification"],
                        help="with --onnx: the head to export (default: the checkpoint's; an LTG-BERT masked LM can "
                             "be exported as causal-lm)")
    parser.add_argument("--gguf", metavar="OUT.gguf",
                        help="write a llama.cpp GGUF file instead (GPT causal LMs: GPT-2 architecture, BPE tokenizer)")
    parser.add_argument("--gguf-type",
                        help="with --gguf: the weight type, f32, f16 (default, as llama.cpp's converter), q8_0, q4_0 or "
                             "q4_1 (an hf-ltg quantize int4-weight-only checkpoint is q4_1 unchanged)")
    parser.add_argument("--merge", action="store_true", help="merge a peft adapter SRC into its base model")
    parser.add_argument("--max-shard-size", default="2GB",
                        help="largest safetensors file before the weights are sharded with an index (default 2GB)")
    parser.add_argument("--tokenizer", help="folder to take the tokenizer from when SRC has none")
    parser.add_argument("--training-dir",
                        help="Trainer output folder holding trainer_state.json when it is not beside SRC "
                        "(hf-ltg's training commands keep it in their --work-dir, runs/<name> by default)")
    parser.add_argument("--id2label", metavar="NAME,NAME,...",
                        help="with --merge of a classification adapter: the class names in id order (default: those "
                             "saved with the adapter by hf-ltg finetune-cls)")
    parser.add_argument("--name", help="model name in the card (default: the name of OUT)")
    parser.add_argument("--license", help="license id for the card metadata, e.g. apache-2.0")
    parser.add_argument("--base-model", help="Hub id of the model this one was fine-tuned from")
    parser.add_argument("--dataset", action="append", default=[], dest="datasets",
                        help="Hub id of a training dataset (repeatable)")
    parser.add_argument("--language", action="append", default=[], help="language code (repeatable)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..cli import CommandError

    formats = [flag for flag, value in (("OUT", args.out), ("--onnx", args.onnx), ("--gguf", args.gguf)) if value]
    if len(formats) != 1:
        raise CommandError(f"give exactly one output: OUT (a Hub folder), --onnx OUT_DIR or --gguf OUT.gguf "
                           f"(got {' and '.join(formats) if formats else 'none'}).")
    if args.native and not args.out:
        raise CommandError("--native writes a stock GPT-2 Hub folder: give OUT, not --onnx/--gguf.")
    if args.gguf_type and not args.gguf:
        raise CommandError("--gguf-type sets the weight type of a GGUF file: use it with --gguf OUT.gguf.")
    if args.task and not args.onnx:
        raise CommandError("--task chooses the head of an ONNX export: use it with --onnx OUT_DIR.")
    if args.gguf:
        return _run_gguf(args)
    if args.onnx:
        return _run_onnx(args)
    from ..hub import export_checkpoint, export_native

    check_output(args.out, args.overwrite, [args.src, args.training_dir])
    common = dict(tokenizer=args.tokenizer, license=args.license, base_model=args.base_model,
                  datasets=args.datasets, language=args.language, name=args.name, merge=args.merge,
                  training_dir=args.training_dir,
                  id2label=[n.strip() for n in args.id2label.split(",")] if args.id2label else None)
    if args.native:
        out = export_native(args.src, args.out, **common)
    else:
        out = export_checkpoint(args.src, args.out, max_shard_size=args.max_shard_size, **common)
    out = Path(out).resolve()
    print(f"wrote {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")
    print(f"check it with: hf-ltg doctor {out}")
    return 0


def _run_onnx(args) -> int:
    from ..hub.export_onnx import export_onnx

    check_output(args.onnx, args.overwrite, [args.src, args.training_dir])
    out = export_onnx(args.src, args.onnx, task=args.task, merge=args.merge, tokenizer=args.tokenizer,
                      id2label=[n.strip() for n in args.id2label.split(",")] if args.id2label else None)
    out = Path(out).resolve()
    print(f"wrote {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")
    return 0


def _run_gguf(args) -> int:
    from ..hub.export_gguf import check_gguf_output, export_gguf

    weight_type = args.gguf_type or "f16"
    check_gguf_output(args.gguf, args.overwrite, weight_type)
    out = export_gguf(args.src, args.gguf, weight_type=weight_type, merge=args.merge, tokenizer=args.tokenizer)
    print(f"wrote {Path(out).resolve()} ({Path(out).stat().st_size / 2**20:.1f} MiB, {weight_type})")
    return 0
