"""Datasets, collators and the embedded default data.

- `core`: shared datasets (causal language modelling, classification, instructions) and the
  padding collator;
- `masked`: masked language modelling (LTG-BERT's whole-word masking collator);
- `hybrid`: GPT-BERT's hybrid objective (span masking, masked and causal batches, next-token targets);
- `corpus`: the default data, built from the Python standard library.

`from hf_ltg.data import NAME` works for every public name of `core`, `masked` and `hybrid`; the corpus
functions are imported from `hf_ltg.data.corpus`.
"""

from .core import (
    ALPACA_CHAT_TEMPLATE,
    ALPACA_HEADER,
    ALPACA_HEADER_WITH_INPUT,
    COLUMN_NAMES,
    IGNORE_INDEX,
    ClassificationDataset,
    InstructionDataset,
    LanguageModelingDataset,
    PaddingCollator,
    TensorDictDataset,
    build_label_mapping,
    format_alpaca_prompt,
    from_hf_dataset,
    read_classification_file,
    read_instruction_file,
    read_text_files,
    to_hf_dataset,
    window_starts,
)
from .hybrid import HybridCollator, HybridDataset, span_mask
from .masked import BYTE_LEVEL_SPACE, MaskedLanguageModelingDataset, MaskingCollator, word_start_table

__all__ = [
    "ALPACA_CHAT_TEMPLATE",
    "ALPACA_HEADER",
    "ALPACA_HEADER_WITH_INPUT",
    "BYTE_LEVEL_SPACE",
    "COLUMN_NAMES",
    "HybridCollator",
    "HybridDataset",
    "IGNORE_INDEX",
    "ClassificationDataset",
    "InstructionDataset",
    "LanguageModelingDataset",
    "MaskedLanguageModelingDataset",
    "MaskingCollator",
    "PaddingCollator",
    "TensorDictDataset",
    "build_label_mapping",
    "format_alpaca_prompt",
    "from_hf_dataset",
    "read_classification_file",
    "read_instruction_file",
    "read_text_files",
    "span_mask",
    "to_hf_dataset",
    "window_starts",
    "word_start_table",
]
