"""lm-eval backend `ltg-mlm`: score masked LMs (LTG-BERT) by pseudo-log-likelihood.

lm-eval 0.4.13 finds models only in its own registry (no entry points), so the model is registered
when this module is imported. Run lm-eval through it:

    python -m hf_ltg.lm_eval --model ltg-mlm --model_args pretrained=checkpoints/ltg-bert-mlm --tasks blimp
    hf-ltg lm-eval run --model ltg-mlm --model_args pretrained=checkpoints/ltg-bert-mlm --tasks blimp

(every lm-eval argument is passed on unchanged), or from Python, `import hf_ltg.lm_eval` before
`lm_eval.simple_evaluate(model="ltg-mlm", ...)`.

`loglikelihood(context, continuation)` is the PLL of the continuation's tokens in
`[CLS] context continuation [SEP]` (`hf_ltg.scoring.pseudo_log_likelihood_scores`: each
continuation token masked in its own copy, the context and the rest of the continuation visible);
`loglikelihood_rolling(text)` is the PLL of every token of the text, in windows of `max_length`
tokens when it is longer. Model arguments: `pretrained` (folder or Hub id), `dtype`, `max_length`,
`trust_remote_code` (default true), `revision`, and `next_token=true` for a masked LM whose logits at
position i predict token i + 1 (GPT-BERT's masked next-token convention, unshifted). hf_ltg's
GPT-BERT checkpoints (`masked_next_token` in config.json) shift inside their masked-LM head, so
their logits at a [MASK] are its prediction already: leave `next_token` false for them. Generation
tasks need a causal model: use `--model ltg-causal` (lm-eval's `hf` model, loading LTG-BERT's
causal-LM head, with every scored sequence `[CLS] context continuation` as in hybrid training; `hf`
itself encodes `[CLS] context [SEP]` and so scores shifted tokens).
"""

import sys

from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import model_registry

MODEL_NAME = "ltg-mlm"
DEFAULT_BATCH_SIZE = 64  # masked copies per forward
# Copies x padded length per forward: the logits hold that many vocabulary-sized rows (512 MiB of
# float32 for a 16k vocabulary), so 512-token windows go 16 copies to a forward, not 64.
MAX_TOKENS = 8192


class LtgMaskedLM(TemplateLM):
    # TemplateLM._encode_pair encodes context + continuation together and splits, as for causal
    # models, so that a word cut by the context/continuation boundary is tokenized as in the text.
    backend = "causal"

    def __init__(self, pretrained: str, batch_size: int | str | None = None, max_batch_size: int | None = None,
                 device: str | None = None, dtype: str = "float32", next_token: bool = False,
                 max_length: int | None = None, trust_remote_code: bool = True, revision: str | None = None,
                 **unknown):
        super().__init__()
        if unknown:
            raise ValueError(
                f"{MODEL_NAME} does not take model_args {sorted(unknown)}; it takes pretrained, dtype, next_token, "
                "max_length, trust_remote_code and revision (and batch_size, device from the command line)."
            )
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        from .scoring import special_tokens_around

        self.batch_size = _batch_size(batch_size)
        self._device = _device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(pretrained, trust_remote_code=trust_remote_code,
                                                       revision=revision)
        self.model = AutoModelForMaskedLM.from_pretrained(
            pretrained, trust_remote_code=trust_remote_code, revision=revision, dtype=dtype,
        ).to(self._device).eval()
        if self.tokenizer.mask_token_id is None:
            raise ValueError(f"The tokenizer of {pretrained} has no mask token; {MODEL_NAME} needs one to score "
                             "with pseudo-log-likelihood (use --model hf for a causal LM).")
        self.prefix, self.suffix = special_tokens_around(self.tokenizer)
        self.next_token = bool(next_token)
        self.max_length = int(max_length or self.model.config.max_position_embeddings)
        if self.max_length <= len(self.prefix) + len(self.suffix):
            raise ValueError(f"max_length={self.max_length} leaves no room for text between the special tokens "
                             f"{self.prefix} and {self.suffix}; pass a larger max_length.")

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.sep_token_id if self.tokenizer.sep_token_id is not None else self.tokenizer.eos_token_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        # The special tokens are added around the whole scored sequence, never around a part of it.
        return self.tokenizer(string, add_special_tokens=False)["input_ids"]

    def get_model_info(self) -> dict:
        return {"model_num_parameters": sum(p.numel() for p in self.model.parameters()),
                "model_dtype": str(self.model.dtype), "pll_next_token": self.next_token}

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        encoded = []
        for context, continuation in (request.args for request in requests):
            if context:
                encoded.append(((context, continuation), *self._encode_pair(context, continuation)))
            else:
                encoded.append(((context, continuation), [], self.tok_encode(continuation)))
        return self._loglikelihood_tokens(encoded, disable_tqdm=disable_tqdm)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        scored = []
        for _, context, continuation in requests:
            # Like lm-eval's hf model, keep the continuation whole and cut the context on the left.
            room = max(0, self.max_length - len(self.prefix) - len(self.suffix) - len(continuation))
            scored.append((self.prefix + list(context)[len(context) - room:], list(continuation), self.suffix))
        scores = iter(self._score([s for s in scored if s[1]], disable_tqdm, "loglikelihood requests"))
        results = []
        for (args, _, _), (_, target, _) in zip(requests, scored):
            score = next(scores) if target else None
            # An empty continuation has probability 1.
            result = (score.log_likelihood, score.is_greedy) if score else (0.0, True)
            self.cache_hook.add_partial("loglikelihood", args, result)
            results.append(result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        window = self.max_length - len(self.prefix) - len(self.suffix)
        pieces, owners = [], []
        for index, request in enumerate(requests):
            tokens = self.tok_encode(request.args[0])
            # Disjoint windows: each token is scored once, seeing the other tokens of its window.
            for start in range(0, len(tokens), window):
                pieces.append((self.prefix, tokens[start:start + window], self.suffix))
                owners.append(index)
        totals = [0.0] * len(requests)
        for owner, score in zip(owners, self._score(pieces, disable_tqdm, "loglikelihood_rolling requests")):
            totals[owner] += score.log_likelihood
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        raise NotImplementedError(
            f"{MODEL_NAME} scores with masked pseudo-log-likelihood and cannot generate text; run generation tasks "
            "with --model ltg-causal (or --model hf) --model_args pretrained=FOLDER,trust_remote_code=True (LTG-BERT's "
            "causal-LM head)."
        )

    def _score(self, requests, disable_tqdm: bool, description: str):
        from tqdm.auto import tqdm

        from .scoring import pseudo_log_likelihood_scores

        with tqdm(total=len(requests), desc=f"Running {description} ({MODEL_NAME})", disable=disable_tqdm) as bar:
            return pseudo_log_likelihood_scores(
                self.model, requests, self.tokenizer.mask_token_id, batch_size=self.batch_size,
                next_token=self.next_token, progress=bar.update, max_tokens=MAX_TOKENS,
            )


def _device(name: str | None):
    import torch

    # lm-eval's command line asks for cuda:0 unless told otherwise; like its hf model, run where we can.
    if name is None or (name.startswith("cuda") and not torch.cuda.is_available()):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _batch_size(value) -> int:
    if value is None or str(value).startswith("auto"):
        return DEFAULT_BATCH_SIZE  # copies of short sequences: no search for the largest size that fits
    try:
        size = int(value)
    except ValueError:
        size = 0
    if size < 1:
        raise ValueError(f"{MODEL_NAME}: batch_size must be a positive integer or 'auto', got {value!r}.")
    return size


CAUSAL_MODEL_NAME = "ltg-causal"


def _causal_lm_class():
    """lm-eval's `hf` model with the prompts of LTG-BERT-family causal LMs shaped as in training.

    `hf` encodes every text with the tokenizer's special tokens, `[CLS] text [SEP]`, and splits a
    context from its continuation by encoding both, so the [SEP] after the context takes the first
    continuation token's place. Here texts are encoded without special tokens and every scored
    sequence starts with [CLS] (`hf_ltg.scoring.causal_prefix`): `[CLS] context continuation`, as
    in training. Generation goes through the model's `generate`, which drops a prompt's closing
    [SEP]. Tokenizers without a [CLS] token (GPT) are encoded as by `hf`.
    """
    from lm_eval.models.huggingface import HFLM

    from .scoring import causal_prefix

    class LtgCausalLM(HFLM):
        @property
        def _shapes_prompts(self) -> bool:
            return self.tokenizer.cls_token_id is not None

        @property
        def prefix_token_id(self) -> int:
            return causal_prefix(self.tokenizer)[0] if self._shapes_prompts else super().prefix_token_id

        def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len=None, **kwargs):
            if self._shapes_prompts and add_special_tokens is None:
                add_special_tokens = False  # [CLS] goes before the whole sequence only (_encode_pair)
            return super().tok_encode(string, add_special_tokens, left_truncate_len, **kwargs)

        def _encode_pair(self, context: str, continuation: str):
            context_enc, continuation_enc = super()._encode_pair(context, continuation)
            return ([self.prefix_token_id] + context_enc if self._shapes_prompts else context_enc), continuation_enc

    return LtgCausalLM


def __getattr__(name):
    # the causal class subclasses lm-eval's hf model, whose import takes seconds: made on first use
    if name == "LtgCausalLM":
        globals()[name] = cls = _causal_lm_class()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Lazy entries, so that lm-eval imports this module (again, when it runs as __main__) only to use it.
model_registry.register(MODEL_NAME, target=f"{__spec__.name if __spec__ else __name__}:LtgMaskedLM")
model_registry.register(CAUSAL_MODEL_NAME, target=f"{__spec__.name if __spec__ else __name__}:LtgCausalLM")


def main(argv: list[str] | None = None) -> None:
    """lm-eval's command line, with `ltg-mlm` registered; `argv` replaces sys.argv[1:]."""
    from lm_eval.__main__ import cli_evaluate

    if argv is None:
        return cli_evaluate()
    saved, sys.argv = sys.argv, ["lm-eval", *argv]  # lm-eval's parser reads sys.argv itself
    try:
        cli_evaluate()
    finally:
        sys.argv = saved


if __name__ == "__main__":
    main()
