"""Hub-ready checkpoints: export (with a model card), the checkpoint doctor, and push.

- `export_checkpoint(src, out)`: a complete, self-contained folder (weights, config with full
  auto_map, code, tokenizer, generation config, README.md) from any hf_ltg checkpoint,
  Trainer output or (merged) peft adapter; `export_native` writes stock GPT-2 instead.
- `diagnose(folder)`: the doctor; loads the folder in a process where hf_ltg cannot be imported.
- `push_folder(folder, repo_id)`: the doctor, then `create_repo` + `upload_folder`.
"""

from .doctor import DoctorReport, diagnose
from .export import export_checkpoint, export_native
from .model_card import render_model_card
from .push import files_to_upload, push_folder
from .sources import read_training_record, resolve_source

__all__ = [
    "DoctorReport",
    "diagnose",
    "export_checkpoint",
    "export_native",
    "files_to_upload",
    "push_folder",
    "read_training_record",
    "render_model_card",
    "resolve_source",
]
