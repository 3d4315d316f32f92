"""An LTG-BERT checkpoint folder works in a fresh process without hf_ltg: every Auto class, pipelines.

transformers 5 removed the question-answering pipeline; extractive QA is done here as that
pipeline did it (pair encoding with offsets, best span of the start/end logits in the context).
"""

import pytest
import torch

from hf_ltg.checkpoint import save_checkpoint
from hf_ltg.ltg_bert import LtgBertConfig, LtgBertForMaskedLM
from tests.helpers import run_without_hf_ltg

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ("the a an of to in is was and or but cat dog mat log sat on fox jumps over lazy quick brown who what "
         "where when why how model token language predicts next from before it paris capital france city").split()


def wordpiece_tokenizer():
    """A tiny fixed-vocabulary WordPiece tokenizer with BERT's templates (single and pair)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL + WORDS + ["##s", "##ed", "##ing", ".", ",", "?"])}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]",
        mask_token="[MASK]", model_max_length=128,
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tokenizer = wordpiece_tokenizer()
    config = LtgBertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
        max_position_embeddings=64, position_bucket_size=16, position_layout="bnc",
        pad_token_id=0, unk_token_id=1, cls_token_id=2, sep_token_id=3, mask_token_id=4, bos_token_id=2,
        eos_token_id=3, id2label={0: "NEG", 1: "POS", 2: "NEU"},
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ltg_bert") / "checkpoint"
    save_checkpoint(LtgBertForMaskedLM(config), folder, tokenizer=tokenizer)
    return folder


@pytest.mark.slow
def test_checkpoint_loads_through_every_auto_class_and_runs_the_pipelines_without_hf_ltg(checkpoint, tmp_path):
    out = run_without_hf_ltg(
        """
        import torch, transformers
        from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM,
            AutoModelForMultipleChoice, AutoModelForQuestionAnswering, AutoModelForSequenceClassification,
            AutoModelForTokenClassification, AutoTokenizer, pipeline)

        config = AutoConfig.from_pretrained(CKPT, trust_remote_code=True)
        assert type(config).__name__ == "LtgBertConfig" and config.position_layout == "bnc", config
        tok = AutoTokenizer.from_pretrained(CKPT, trust_remote_code=True)
        enc = tok(["the cat sat on the mat", "a dog"], padding=True, return_tensors="pt")
        autos = [AutoModel, AutoModelForMaskedLM, AutoModelForCausalLM, AutoModelForSequenceClassification,
                 AutoModelForTokenClassification, AutoModelForQuestionAnswering, AutoModelForMultipleChoice]
        reference = None
        for auto in autos:
            model = auto.from_pretrained(CKPT, trust_remote_code=True).eval()
            assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
            hidden = model.ltg_bert if hasattr(model, "ltg_bert") else model
            with torch.no_grad():
                state = hidden(enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
                if reference is None:
                    reference = state
                assert torch.allclose(state, reference, atol=1e-6), auto.__name__  # the same encoder weights
                if auto is AutoModelForMultipleChoice:
                    out = model(enc["input_ids"][None], attention_mask=enc["attention_mask"][None])
                    assert out.logits.shape == (1, 2)
            print("loaded", auto.__name__, type(model).__name__)

        fill = pipeline("fill-mask", model=CKPT, trust_remote_code=True)
        print("fill-mask", fill("the cat [MASK] on the mat")[0]["token_str"])
        classify = pipeline("text-classification", model=CKPT, trust_remote_code=True)
        result = classify(["the cat sat", "a lazy dog jumps over the fox"])
        assert result[0]["label"] in ("NEG", "POS", "NEU"), result
        print("text-classification", result)
        tag = pipeline("token-classification", model=CKPT, trust_remote_code=True)
        print("token-classification", len(tag("the quick brown fox")))
        # transformers 5 removed the question-answering pipeline: do what it did, span from the logits
        qa = AutoModelForQuestionAnswering.from_pretrained(CKPT, trust_remote_code=True).eval()
        context = "paris is the capital of france."
        pair = tok("what is the capital of france?", context, return_offsets_mapping=True, return_tensors="pt")
        offsets = pair.pop("offset_mapping")[0]
        with torch.no_grad():
            out = qa(**pair)
        in_context = torch.tensor([s == 1 for s in pair.sequence_ids(0)])
        start = out.start_logits[0].masked_fill(~in_context, -1e9).argmax().item()
        end = start + out.end_logits[0, start:].masked_fill(~in_context[start:], -1e9).argmax().item()
        answer = context[offsets[start][0]:offsets[end][1]]
        assert answer and answer in context, answer
        print("question-answering", repr(answer))
        features = pipeline("feature-extraction", model=CKPT, trust_remote_code=True)
        vectors = features("the cat sat on the mat")
        assert len(vectors[0]) == 8 and len(vectors[0][0]) == 32
        print("feature-extraction", len(vectors[0]))
        generate = pipeline("text-generation", model=CKPT, trust_remote_code=True)
        print("text-generation", generate("the cat", max_new_tokens=3, do_sample=False)[0]["generated_text"])
        """,
        checkpoint,
        tmp_path,
    )
    for name in ("AutoModel", "AutoModelForMaskedLM", "AutoModelForCausalLM", "AutoModelForSequenceClassification",
                 "AutoModelForTokenClassification", "AutoModelForQuestionAnswering", "AutoModelForMultipleChoice"):
        assert f"loaded {name} " in out
    for task in ("fill-mask", "text-classification", "token-classification", "question-answering",
                 "feature-extraction", "text-generation"):
        assert f"\n{task} " in "\n" + out, out
