"""Convert a Hugging Face GPT-2 checkpoint into hf_ltg and back, checking the logits each way.

    hf download openai-community/gpt2 --local-dir gpt2      # once, on a machine with network
    python examples/convert_gpt2.py gpt2
    python examples/convert_gpt2.py --tiny                   # a random tiny GPT-2 (the test suite runs this)

The same conversions on the command line:
    hf-ltg convert --from hf-gpt2 gpt2 ltg-gpt2              # GPT-2 -> hf_ltg
    hf-ltg export --native ltg-gpt2 gpt2-again               # hf_ltg -> stock GPT-2 with a model card
"""

import argparse
import tempfile

import torch
from transformers import AutoTokenizer, GPT2LMHeadModel

from hf_ltg import LtgGptForCausalLM
from hf_ltg.conversion import convert_from_hf_gpt2
from hf_ltg.hub import export_native

PROMPT = "Hello, my dog is cute and"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gpt2", nargs="?", help="a local Hugging Face gpt2 folder")
    parser.add_argument("--out", default="runs/convert-example", help="output folder")
    parser.add_argument("--tiny", action="store_true", help="use a random tiny GPT-2")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as work:
        source = args.gpt2 or (make_tiny_gpt2(f"{work}/gpt2") if args.tiny else parser.error("give GPT2 or --tiny"))
        reference = GPT2LMHeadModel.from_pretrained(source).eval()
        tokenizer = AutoTokenizer.from_pretrained(source)
        ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]

        convert_from_hf_gpt2(source, f"{args.out}/ltg")
        ours = LtgGptForCausalLM.from_pretrained(f"{args.out}/ltg").eval()
        export_native(f"{args.out}/ltg", f"{args.out}/gpt2-again")
        again = GPT2LMHeadModel.from_pretrained(f"{args.out}/gpt2-again").eval()

        with torch.no_grad():
            expected = reference(ids).logits
            print(f"GPT-2 -> hf_ltg: max |logit difference| = {(ours(ids).logits - expected).abs().max():.2e}")
            print(f"hf_ltg -> GPT-2: max |logit difference| = {(again(ids).logits - expected).abs().max():.2e}")
            ours_text = ours.generate(ids, max_new_tokens=10, do_sample=False)
            reference_text = reference.generate(ids, max_new_tokens=10, do_sample=False)
        print(f"greedy continuations identical: {torch.equal(ours_text, reference_text)}")
        print(f"hf_ltg: {tokenizer.decode(ours_text[0])!r}")


def make_tiny_gpt2(folder: str) -> str:
    from transformers import GPT2Config

    from hf_ltg.tokenization import train_tokenizer

    tokenizer = train_tokenizer(iterator=[PROMPT, "The quick brown fox jumps over the lazy dog."] * 10,
                                vocab_size=300)
    eos = tokenizer.eos_token_id
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=4,
                        bos_token_id=eos, eos_token_id=eos)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


if __name__ == "__main__":
    main()
