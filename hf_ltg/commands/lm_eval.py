"""`hf-ltg lm-eval`: lm-eval's own command line with hf_ltg's `ltg-mlm` model registered."""


def add_parser(subparsers):
    import argparse

    parser = subparsers.add_parser(
        "lm-eval",
        help="run lm-eval (pip install hf_ltg[eval]) with the ltg-mlm (masked PLL) and ltg-causal models",
        usage="hf-ltg lm-eval run --model ltg-mlm --model_args pretrained=FOLDER --tasks TASK [lm-eval options]",
        description="Everything after `lm-eval` goes to lm-eval's command line unchanged, starting with its "
                    "sub-command (run, ls, validate). lm-eval finds no models outside its own registry, so this "
                    "command (or `python -m hf_ltg.lm_eval ...`) registers ltg-mlm first: loglikelihood is the "
                    "pseudo-log-likelihood of the continuation in [CLS] context continuation [SEP] (each of its "
                    "tokens masked in turn), loglikelihood_rolling that of the whole text. It also registers "
                    "ltg-causal for LTG-BERT's causal-LM head (GPT-BERT, hybrid training): it scores "
                    "[CLS] context continuation, as training shaped it (lm-eval's stock hf model drops the first "
                    "continuation token and scores [SEP] there). GPT causal LMs need nothing from hf_ltg: "
                    "`lm-eval run --model hf --model_args pretrained=FOLDER,trust_remote_code=True`.",
    )
    parser.add_argument("lm_eval_arguments", nargs=argparse.REMAINDER, metavar="run|ls|validate ...",
                        help="lm-eval's arguments, its sub-command first")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..cli import CommandError

    if not args.lm_eval_arguments:
        raise CommandError("give lm-eval's arguments, its sub-command first: "
                           "hf-ltg lm-eval run --model ltg-mlm --model_args pretrained=FOLDER --tasks TASK")
    try:
        from ..lm_eval import main
    except ModuleNotFoundError as error:
        if error.name != "lm_eval":
            raise
        raise CommandError("lm-eval is not installed; pip install 'hf_ltg[eval]' (or lm-eval>=0.4.13).") from None
    main(args.lm_eval_arguments)
    return 0
