"""Resuming a run whose time limit fitted a shorter schedule continues that schedule."""

import pytest
import torch
from transformers import TrainerCallback

from hf_ltg import LtgGptConfig, LtgGptForCausalLM
from hf_ltg.data.core import LanguageModelingDataset, PaddingCollator
from hf_ltg.tokenization import train_tokenizer
from hf_ltg.training import LtgTrainer, TimeLimitCallback, training_arguments

TEXT = ["The for statement is used to iterate over the elements of a sequence.",
        "An exception is raised when an error is detected during execution."] * 8


class FakeClock:
    """Every training step "takes" 10 s."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Tick(TrainerCallback):
    def __init__(self, clock, interrupt_at=None):
        self.clock, self.interrupt_at = clock, interrupt_at

    def on_step_end(self, args, state, control, **kwargs):
        self.clock.now += 10.0
        if state.global_step == self.interrupt_at:
            raise KeyboardInterrupt  # the run is killed after its checkpoint at step 5


def test_resume_continues_the_learning_rates_of_the_fitted_schedule(tmp_path):
    tok = train_tokenizer(iterator=TEXT, vocab_size=300, model_max_length=32)
    data = LanguageModelingDataset(TEXT, tok, max_length=8)

    def run(folder, interrupt_at=None, resume=None):
        torch.manual_seed(0)
        model = LtgGptForCausalLM(LtgGptConfig(vocab_size=len(tok), max_position_embeddings=32, hidden_size=16,
                                               num_hidden_layers=1, num_attention_heads=2,
                                               pad_token_id=tok.pad_token_id))
        args = training_arguments(folder, max_steps=40, per_device_train_batch_size=2, eval_strategy="no",
                                  save_steps=5, logging_steps=1, lr_scheduler_type="cosine", learning_rate=1e-3,
                                  warmup_steps=2)
        clock = FakeClock()
        limit = TimeLimitCallback(seconds=100, probe_steps=2, clock=clock)
        trainer = LtgTrainer(model=model, args=args, data_collator=PaddingCollator(tok.pad_token_id),
                             train_dataset=data, processing_class=tok, callbacks=[Tick(clock, interrupt_at), limit],
                             plot=False)
        trainer.train(resume_from_checkpoint=resume)
        rates = {e["step"]: e["learning_rate"] for e in trainer.state.log_history if "learning_rate" in e}
        return rates, trainer.state.global_step

    reference, reference_steps = run(tmp_path / "full")
    assert reference_steps == 9  # 4 steps probed, then (100 s * 0.97 - 40 s) / 10 s per step
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "resumed", interrupt_at=7)
    resumed, resumed_steps = run(tmp_path / "resumed", resume=str(tmp_path / "resumed" / "checkpoint-5"))

    assert resumed_steps == 9
    assert sorted(resumed) == list(range(1, 10))  # the log history up to step 5 comes with the checkpoint
    assert [resumed[step] for step in range(6, 10)] == pytest.approx([reference[step] for step in range(6, 10)])
    assert resumed[9] < 0.05 * max(reference.values())  # annealed by the fitted end
