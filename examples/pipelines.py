"""Run the stock transformers pipelines on hf_ltg checkpoints, without importing hf_ltg.

    python examples/pipelines.py checkpoints/ltg-gpt-lm checkpoints/ltg-bert-mlm
    python examples/pipelines.py --tiny          # a random tiny GPT (the test suite runs this)

Each folder carries its model code and a complete `auto_map`, so every Auto class, and with it
every pipeline, loads it with `trust_remote_code=True` (read the folder's .py files first).
"""

import argparse
import json
import tempfile
from pathlib import Path

from transformers import pipeline

# The pipeline that fits each saved head; feature extraction works with every folder.
TASKS = {
    "ForCausalLM": "text-generation",
    "ForMaskedLM": "fill-mask",
    "ForSequenceClassification": "text-classification",
    "ForTokenClassification": "token-classification",
}
TEXT = "The quick brown fox jumps over the lazy dog."


def run_pipelines(folder: str) -> None:
    architecture = json.loads((Path(folder) / "config.json").read_text())["architectures"][0]
    task = next((t for suffix, t in TASKS.items() if architecture.endswith(suffix)), None)
    print(f"== {folder} ({architecture})")
    if task == "text-generation":
        generator = pipeline(task, model=folder, trust_remote_code=True)
        print("text-generation:", generator("The for statement", max_new_tokens=15, do_sample=False)[0]["generated_text"])
    elif task == "fill-mask":
        unmasker = pipeline(task, model=folder, trust_remote_code=True)
        guesses = unmasker(f"The for {unmasker.tokenizer.mask_token} is used to iterate.", top_k=3)
        print("fill-mask:", [g["token_str"] for g in guesses])
    elif task == "text-classification":
        classifier = pipeline(task, model=folder, trust_remote_code=True)
        print("text-classification:", classifier([TEXT, "Nothing to see here."]))
    elif task == "token-classification":
        tagger = pipeline(task, model=folder, trust_remote_code=True)
        print("token-classification:", [(e["word"], e["entity"]) for e in tagger(TEXT)][:5])
    extractor = pipeline("feature-extraction", model=folder, trust_remote_code=True)
    features = extractor(TEXT, return_tensors=True)
    print("feature-extraction: hidden states of shape", tuple(features.shape))


def tiny_random_checkpoint(folder: str) -> str:
    """Only for --tiny: the one place this example needs hf_ltg, to write a checkpoint."""
    from hf_ltg import LtgGptConfig, LtgGptForCausalLM
    from hf_ltg.checkpoint import save_checkpoint
    from hf_ltg.tokenization import train_tokenizer

    tokenizer = train_tokenizer(iterator=[TEXT] * 20, vocab_size=300)
    eos = tokenizer.eos_token_id
    config = LtgGptConfig(vocab_size=len(tokenizer), max_position_embeddings=64, hidden_size=32,
                          num_hidden_layers=2, num_attention_heads=4, bos_token_id=eos, eos_token_id=eos,
                          pad_token_id=eos)
    save_checkpoint(LtgGptForCausalLM(config), folder, tokenizer=tokenizer)
    return folder


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", help="checkpoint folders (local paths or Hub ids)")
    parser.add_argument("--tiny", action="store_true", help="use a random tiny GPT when no folder is given")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        folders = args.folders or ([tiny_random_checkpoint(f"{work}/tiny-gpt")] if args.tiny else [])
        if not folders:
            parser.error("give checkpoint folders, or --tiny")
        for folder in folders:
            run_pipelines(folder)


if __name__ == "__main__":
    main()
