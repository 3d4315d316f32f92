"""Converters between hf_ltg checkpoints and the checkpoint formats users bring."""

from .common import copy_tokenizer_files, load_into, read_json_config
from .from_scratch import convert_from_scratch
from .gpt2 import convert_from_hf_gpt2, convert_to_hf_gpt2
from .gpt_bert import convert_gpt_bert
from .ltg_bert import convert_ltg_bert
from .releases import convert_release

__all__ = [
    "convert_from_hf_gpt2",
    "convert_from_scratch",
    "convert_gpt_bert",
    "convert_ltg_bert",
    "convert_release",
    "convert_to_hf_gpt2",
    "copy_tokenizer_files",
    "load_into",
    "read_json_config",
]
