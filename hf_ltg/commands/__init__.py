"""Sub-commands of `hf-ltg`; see `hf_ltg.cli`."""
