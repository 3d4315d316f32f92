"""Export a checkpoint as a Hub-ready folder, check it with the doctor, and push it.

    python examples/push_to_hub.py checkpoints/ltg-gpt-lm --repo-id you/ltg-gpt-lm            # dry run
    python examples/push_to_hub.py checkpoints/ltg-gpt-lm --repo-id you/ltg-gpt-lm --push     # uploads
    python examples/push_to_hub.py --tiny                  # a random tiny GPT, dry run (the test suite runs this)

The same on the command line:
    hf-ltg export checkpoints/ltg-gpt-lm exported --license apache-2.0
    hf-ltg doctor exported
    hf-ltg push exported --repo-id you/ltg-gpt-lm --dry-run

A real push needs a token (HF_TOKEN, or `hf auth login`) and network; offline it stops at once.
"""

import argparse
import tempfile

from hf_ltg.hub import diagnose, export_checkpoint, push_folder


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="?", help="checkpoint, Trainer output or adapter folder")
    parser.add_argument("--repo-id", default="your-name/ltg-gpt-example")
    parser.add_argument("--license", default="apache-2.0")
    parser.add_argument("--push", action="store_true", help="really upload (default: dry run)")
    parser.add_argument("--tiny", action="store_true", help="use a random tiny GPT")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as work:
        checkpoint = args.checkpoint or (make_tiny(f"{work}/tiny") if args.tiny else parser.error("give a folder"))
        folder = export_checkpoint(checkpoint, f"{work}/exported", license=args.license)
        print((folder / "README.md").read_text().split("## Architecture")[0])  # the card's metadata and summary

        report = diagnose(folder)  # push_folder runs it too; shown here on its own
        print(report.format())
        if not report.ok:
            raise SystemExit(1)
        push_folder(folder, args.repo_id, dry_run=not args.push, run_doctor=False)


def make_tiny(folder: str) -> str:
    from hf_ltg import LtgGptConfig, LtgGptForCausalLM
    from hf_ltg.checkpoint import save_checkpoint
    from hf_ltg.tokenization import train_tokenizer

    tokenizer = train_tokenizer(iterator=["The quick brown fox jumps over the lazy dog."] * 20, vocab_size=300)
    eos = tokenizer.eos_token_id
    config = LtgGptConfig(vocab_size=len(tokenizer), max_position_embeddings=64, hidden_size=32,
                          num_hidden_layers=2, num_attention_heads=4, bos_token_id=eos, eos_token_id=eos,
                          pad_token_id=eos)
    save_checkpoint(LtgGptForCausalLM(config), folder, tokenizer=tokenizer)
    return folder


if __name__ == "__main__":
    main()
