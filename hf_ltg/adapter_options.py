"""The `--adapter` options of the fine-tuning commands (argparse only: `hf-ltg --help` stays fast).

`hf_ltg.adapters` applies them; it re-exports these names.
"""

import argparse

ADAPTER_METHODS = ("lora", "prompt", "ptuning", "prefix")


def add_adapter_arguments(parser: argparse.ArgumentParser) -> None:
    """The `--adapter` options of the fine-tuning commands."""
    group = parser.add_argument_group("parameter-efficient fine-tuning (peft)")
    group.add_argument("--adapter", choices=ADAPTER_METHODS,
                       help="train an adapter instead of every weight: lora, prompt (prompt tuning), ptuning "
                            "(p-tuning) or prefix (prefix tuning); default: full fine-tuning")
    group.add_argument("--lora-r", type=int, default=8, help="LoRA rank (default: %(default)s)")
    group.add_argument("--lora-alpha", type=int, default=16,
                       help="LoRA scaling numerator; updates are scaled by alpha/r (default: %(default)s)")
    group.add_argument("--lora-dropout", type=float, default=0.05, help="default: %(default)s")
    group.add_argument("--lora-targets", nargs="+", metavar="NAME",
                       help="layers to adapt, e.g. qkv_proj out_proj fc_in fc_out, or all-linear; a "
                            "classifier may add its input embedding (wte for GPT, word_embedding for LTG-BERT) "
                            "(default: the model family's default, qkv_proj for GPT)")
    group.add_argument("--num-virtual-tokens", type=int, default=16,
                       help="virtual tokens of prompt, ptuning and prefix (default: %(default)s)")
    group.add_argument("--prompt-init-text",
                       help="initialise prompt tuning from this text's token embeddings (default: random)")
    group.add_argument("--merge", action="store_true",
                       help="with --adapter lora: write the merged, self-contained full checkpoint instead of "
                            "the adapter")


def check_adapter_arguments(args) -> None:
    """Reject option combinations before any training starts."""
    method = getattr(args, "adapter", None)
    if getattr(args, "merge", False) and method != "lora":
        raise ValueError(
            f"--merge folds LoRA weights into the model, but --adapter is {method!r}; prompt, ptuning and prefix "
            "add virtual tokens that cannot be merged. Use --adapter lora or drop --merge."
        )
    if getattr(args, "prompt_init_text", None) and method != "prompt":
        raise ValueError(f"--prompt-init-text applies to --adapter prompt, not {method!r}; drop it.")
    if getattr(args, "lora_targets", None) and method != "lora":
        raise ValueError(f"--lora-targets applies to --adapter lora, not {method!r}; drop it.")
