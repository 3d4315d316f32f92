"""Training on fixed batches through `LtgTrainer` and `training_arguments(fsdp=...)`, as `hf-ltg pretrain
--fsdp` trains, for tests/test_fsdp.py: `losses()` in one process, or this file under torchrun, which
prints the losses of both families as JSON on the main process. The masked LM's masks are fixed here
(`hf-ltg pretrain` draws them in each process), so one and two processes see the same batches."""

import json
import os
import sys

import torch

from hf_ltg.gpt import LtgGptConfig, LtgGptForCausalLM
from hf_ltg.ltg_bert import LtgBertConfig, LtgBertForMaskedLM
from hf_ltg.training import LtgTrainer, training_arguments

FAMILIES = ("gpt", "ltg_bert")
GLOBAL_BATCH, STEPS = 4, 3


def examples(family: str) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    result = []
    for index in range(16):
        ids = torch.randint(5, 64, (16,), generator=generator)  # ids 0-4 are LTG-BERT's special tokens
        if family == "gpt":
            result.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids})
        else:
            chosen = torch.arange(16) % 4 == index % 4  # a quarter of the tokens, replaced by [MASK] (4)
            result.append({"input_ids": ids.masked_fill(chosen, 4), "attention_mask": torch.ones_like(ids),
                           "labels": ids.masked_fill(~chosen, -100)})
    return result


def model(family: str):
    torch.manual_seed(0)
    if family == "gpt":
        return LtgGptForCausalLM(LtgGptConfig(
            vocab_size=64, max_position_embeddings=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            embedding_dropout=0.0, attention_dropout=0.0, hidden_dropout=0.0))
    return LtgBertForMaskedLM(LtgBertConfig(
        vocab_size=64, max_position_embeddings=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))


def losses(family: str, folder: str) -> tuple[list[float], int]:
    """(the logged training losses, the number of blocks FSDP wrapped as units of their own) of `STEPS`
    steps on `GLOBAL_BATCH` examples."""
    from torch.distributed.fsdp import FSDPModule

    processes = int(os.environ.get("WORLD_SIZE", "1"))
    args = training_arguments(folder, fsdp=processes > 1, per_device_train_batch_size=GLOBAL_BATCH // processes,
                              max_steps=STEPS, learning_rate=1e-2, logging_steps=1, eval_strategy="no",
                              save_strategy="no", seed=0, disable_tqdm=True)
    trainer = LtgTrainer(model=model(family), args=args, train_dataset=examples(family), plot=False)
    trainer.train()
    blocks = {f"FSDP{name}" for name in trainer.model._no_split_modules}  # FSDP2's name for a wrapped class
    units = sum(isinstance(m, FSDPModule) and type(m).__name__ in blocks for m in trainer.model.modules())
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry], units


if __name__ == "__main__":
    result = {family: losses(family, sys.argv[1]) for family in FAMILIES}
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result))
